import SubjectDelta

/// Bounds on a training run's settings, checked before anything is read or allocated.
public enum TrainingLimits {
    /// Largest `--resolution` (pixels per side; the latents are `4 × (R/f)²`).
    public static let maxResolution = 4096
    /// Largest number of optimiser steps (torch counts AdamW's steps in a float32 tensor, exact
    /// far beyond this).
    public static let maxSteps = 1_000_000
    /// Largest resized image (`W' · H'` pixels, shorter side = resolution) before the crop.
    public static let maxResizedPixels = 64_000_000
    /// Largest trained factor (elements); a subject's layer is at most 2^28 elements.
    public static let maxFactorElements = SubjectLimits.maxLayerElements
}

/// What trains (spec/finetune.md §6).
public enum TrainMode: String, Sendable, CaseIterable {
    case lidb, lora, both

    /// `lidb` from scratch, `lora` (the rank-relaxed fast finetune) with an init.
    public static func `default`(hasInit: Bool) -> TrainMode { hasInit ? .lora : .lidb }
}

/// The shape of a new LiDB term (from scratch): rank `r`, basis dimensions `a`, `b`, `alpha`.
public struct LiDBShape: Sendable, Equatable, Hashable {
    public var rank: Int
    public var a: Int
    public var b: Int
    public var alpha: Double

    /// The specification's defaults: rank 1, a = 100, b = 50, alpha 1.
    public init(rank: Int = 1, a: Int = 100, b: Int = 50, alpha: Double = 1.0) {
        self.rank = rank
        self.a = a
        self.b = b
        self.alpha = alpha
    }
}

/// The numeric settings of a run (spec/finetune.md §1), validated by `validate(vaeFactor:)`.
/// Option names in errors are the CLI's (`TrainingOptions.Option`).
public struct TrainingOptions: Sendable, Equatable {
    /// The CLI spelling of each option, used in error messages.
    public enum Option {
        public static let steps = "--steps"
        public static let lr = "--lr"
        public static let optimizer = "--optimizer"
        public static let beta1 = "--adam-beta1"
        public static let beta2 = "--adam-beta2"
        public static let eps = "--adam-epsilon"
        public static let weightDecay = "--adam-weight-decay"
        public static let maxGradNorm = "--max-grad-norm"
        public static let seed = "--seed"
        public static let basisSeed = "--basis-seed"
        public static let resolution = "--resolution"
        public static let rank = "--rank"
        public static let downDim = "--down-dim"
        public static let upDim = "--up-dim"
        public static let alpha = "--alpha"
        public static let relaxRank = "--relax-rank"
        public static let relaxAlpha = "--relax-alpha"
    }

    public var steps: Int
    public var optimizer: OptimizerSettings
    public var maxGradNorm: Double
    public var seed: UInt64
    /// The basis seed of a new LiDB term; nil: the training seed.
    public var basisSeed: UInt64?
    public var resolution: Int
    public var flip: Bool
    /// Nil: `TrainMode.default(hasInit:)`.
    public var train: TrainMode?
    /// The shape of a new LiDB term.
    public var lidb: LiDBShape
    /// Rank `R` of a new LoRA term.
    public var relaxRank: Int
    /// `alpha_R` of a new LoRA term; nil: `R` (scale 1).
    public var relaxAlpha: Double?

    public init(steps: Int, optimizer: OptimizerSettings, maxGradNorm: Double = 1.0, seed: UInt64 = 0,
                basisSeed: UInt64? = nil, resolution: Int = 512, flip: Bool = false, train: TrainMode? = nil,
                lidb: LiDBShape = LiDBShape(), relaxRank: Int = 4, relaxAlpha: Double? = nil) {
        self.steps = steps
        self.optimizer = optimizer
        self.maxGradNorm = maxGradNorm
        self.seed = seed
        self.basisSeed = basisSeed
        self.resolution = resolution
        self.flip = flip
        self.train = train
        self.lidb = lidb
        self.relaxRank = relaxRank
        self.relaxAlpha = relaxAlpha
    }

    /// The alpha of a new LoRA term.
    public var effectiveRelaxAlpha: Double { relaxAlpha ?? Double(relaxRank) }

    /// Checks every setting; the first problem found is thrown, naming its option. `vaeFactor` is
    /// the base's `2^(len(block_out_channels) − 1)` (8 for SD).
    public func validate(vaeFactor: Int) throws(TrainingError) {
        try Self.validateSteps(steps)
        try Self.validate(optimizer)
        try Self.validateMaxGradNorm(maxGradNorm)
        try Self.validateResolution(resolution, vaeFactor: vaeFactor)
        try Self.validateRank(lidb.rank, option: Option.rank)
        try Self.validateBasisDimension(lidb.a, option: Option.downDim)
        try Self.validateBasisDimension(lidb.b, option: Option.upDim)
        try Self.validateAlpha(lidb.alpha, rank: lidb.rank, option: Option.alpha)
        try Self.validateRank(relaxRank, option: Option.relaxRank)
        try Self.validateAlpha(effectiveRelaxAlpha, rank: relaxRank, option: Option.relaxAlpha)
    }

    // MARK: - The single checks

    static func bad(_ option: String, _ value: String, _ problem: String) -> TrainingError {
        .invalidOption(option: option, value: value, problem: problem)
    }

    /// Python's `repr` of a float is what a user would have typed; Swift's description is the
    /// same shortest round-trip form.
    static func text(_ x: Double) -> String { "\(x)" }

    public static func validateSteps(_ steps: Int) throws(TrainingError) {
        guard steps >= 1, steps <= TrainingLimits.maxSteps else {
            throw bad(Option.steps, "\(steps)", "must be an integer from 1 to \(TrainingLimits.maxSteps)")
        }
    }

    /// A learning rate: finite, positive, and not zero or infinite once rounded to binary32.
    public static func validateLearningRate(_ lr: Double) throws(TrainingError) {
        guard lr.isFinite, lr > 0 else { throw bad(Option.lr, text(lr), "must be a finite number greater than 0") }
        let f = Float(lr)
        guard f.isFinite, f > 0 else { throw bad(Option.lr, text(lr), "is zero or infinite as a binary32 number") }
    }

    public static func validate(_ settings: OptimizerSettings) throws(TrainingError) {
        switch settings {
        case let .sgd(lr):
            try validateLearningRate(lr)
        case let .adamw(s):
            try validateLearningRate(s.lr)
            for (option, beta) in [(Option.beta1, s.beta1), (Option.beta2, s.beta2)] {
                guard beta.isFinite, beta >= 0, beta < 1 else {
                    throw bad(option, text(beta), "must be a number from 0 (inclusive) to 1 (exclusive)")
                }
            }
            guard s.eps.isFinite, s.eps > 0, Float(s.eps) > 0, Float(s.eps).isFinite else {
                throw bad(Option.eps, text(s.eps), "must be a finite number greater than 0 (also as binary32): AdamW divides by sqrt(v) + eps, and v is 0 where a gradient is 0")
            }
            guard s.weightDecay.isFinite, s.weightDecay >= 0 else {
                throw bad(Option.weightDecay, text(s.weightDecay), "must be a finite number ≥ 0")
            }
            guard s.lr * s.weightDecay < 1 else {
                throw bad(Option.weightDecay, text(s.weightDecay),
                          "times the learning rate \(text(s.lr)) must be below 1 (each step multiplies the factors by 1 − lr·weight_decay)")
            }
        }
    }

    public static func validateMaxGradNorm(_ x: Double) throws(TrainingError) {
        guard x.isFinite, x > 0, Float(x) > 0, Float(x).isFinite else {
            throw bad(Option.maxGradNorm, text(x), "must be a finite number greater than 0 (also as binary32)")
        }
    }

    public static func validateResolution(_ r: Int, vaeFactor: Int) throws(TrainingError) {
        guard vaeFactor >= 1, vaeFactor <= TrainingLimits.maxResolution, vaeFactor & (vaeFactor - 1) == 0 else {
            throw bad(Option.resolution, "\(r)", "the base's VAE factor \(vaeFactor) is not a power of two from 1 to \(TrainingLimits.maxResolution)")
        }
        guard r >= vaeFactor, r <= TrainingLimits.maxResolution, r % vaeFactor == 0 else {
            throw bad(Option.resolution, "\(r)",
                      "must be a positive multiple of the VAE factor \(vaeFactor), at most \(TrainingLimits.maxResolution)")
        }
    }

    public static func validateRank(_ rank: Int, option: String) throws(TrainingError) {
        guard rank >= 1, rank <= SubjectLimits.maxRank else {
            throw bad(option, "\(rank)", "must be an integer from 1 to \(SubjectLimits.maxRank)")
        }
    }

    public static func validateBasisDimension(_ d: Int, option: String) throws(TrainingError) {
        guard d >= 1, d <= SubjectLimits.maxBasisDimension else {
            throw bad(option, "\(d)", "must be an integer from 1 to \(SubjectLimits.maxBasisDimension)")
        }
    }

    /// An alpha: finite as binary32, and so is `alpha / rank` (spec/subject.md §4).
    public static func validateAlpha(_ alpha: Double, rank: Int, option: String) throws(TrainingError) {
        let f = Float(alpha)
        guard alpha.isFinite, f.isFinite, rank >= 1, (f / Float(rank)).isFinite else {
            throw bad(option, text(alpha), "must be a finite number (as binary32, also divided by the rank)")
        }
    }

    /// Reads an unsigned 64-bit seed written in decimal digits (no sign, no spaces).
    public static func parseSeed(_ text: String, option: String = Option.seed) throws(TrainingError) -> UInt64 {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = UInt64(text) else {
            throw bad(option, "'\(text)'", "must be an unsigned 64-bit integer in decimal (0 to \(UInt64.max))")
        }
        return v
    }

    /// Reads a number option: a finite decimal number.
    public static func parseNumber(_ text: String, option: String) throws(TrainingError) -> Double {
        guard let v = Double(text), v.isFinite else {
            throw bad(option, "'\(text)'", "must be a finite number")
        }
        return v
    }
}
