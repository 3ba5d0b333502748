import Diffusion
import Foundation

/// The random draws of a training run (spec/finetune.md §3, §5, §7): one torch CPU generator
/// seeded with the run's seed, consumed by the initialisation of the new factors and then, per
/// step, by the latent sample, the flip, the timestep and the noise — in that order, and by
/// nothing else.
public struct TrainingRandom: Sendable {
    /// The run's generator (`torch.Generator().manual_seed(seed)`, `randn` with the `.avx2`
    /// float32 kernel as the specification states).
    public private(set) var generator: TorchGenerator

    public init(seed: UInt64) {
        generator = TorchGenerator(seed: seed, normalFill: .avx2)
    }

    /// The bound of `torch.nn.init.kaiming_uniform_(t, a=√5)` for `fan_in`, in binary64 operation
    /// by operation as torch computes it: `gain = sqrt(2 / (1 + sqrt(5)²))`,
    /// `bound = sqrt(3) · (gain / sqrt(fan_in))`. `fanIn` must be positive.
    public static func kaimingUniformBound(fanIn: Int) -> Double {
        let s5 = (5.0 as Double).squareRoot()
        let gain = (2.0 / (1.0 + s5 * s5)).squareRoot()
        let std = gain / Double(fanIn).squareRoot()
        return (3.0 as Double).squareRoot() * std
    }

    /// `kaiming_uniform_(t, a=√5, generator=g)` on a float32 tensor of `rows × fanIn` elements,
    /// row-major: `uniform_(f32(−b), f32(b))` in torch's fused form (§3). A shape with a zero or
    /// negative side, or more than `TrainingLimits.maxFactorElements` elements, is refused before
    /// anything is drawn.
    public mutating func kaimingUniform(rows: Int, fanIn: Int) throws(TrainingError) -> [Float] {
        let (count, overflow) = rows.multipliedReportingOverflow(by: fanIn)
        guard rows > 0, fanIn > 0, !overflow, count <= TrainingLimits.maxFactorElements else {
            throw .tooLarge(what: "a factor of \(rows) × \(fanIn) elements", limit: TrainingLimits.maxFactorElements)
        }
        let b = Self.kaimingUniformBound(fanIn: fanIn)
        return generator.uniform(count: count, low: Float(-b), high: Float(b))
    }

    /// The draws of one step (§5).
    public struct StepDraws: Sendable, Equatable {
        /// The latent sample `z` (`torch.randn(latent_shape)`).
        public var z: [Float]
        /// The flip draw `torch.rand(1)`; it is made whether or not flipping is on.
        public var flipDraw: Float
        /// The training timestep in `0 ..< T`.
        public var timestep: Int
        /// The noise `ε` (`torch.randn(latent_shape)`).
        public var noise: [Float]
        /// `flipDraw < 0.5`: the mirrored image is used when flipping is on.
        public var flip: Bool { flipDraw < 0.5 }
    }

    /// Largest latent element count of a step (`4 · (R_px / f)²` with `R_px ≤ 4096`, `f ≥ 1`).
    public static let maxLatentCount = 4 * TrainingLimits.maxResolution * TrainingLimits.maxResolution

    /// One step's draws for latents of `latentCount` elements and a schedule of `timesteps`
    /// training timesteps. `1 ≤ latentCount ≤ maxLatentCount` and `1 ≤ timesteps < 2^32` are
    /// checked before anything is drawn.
    public mutating func step(latentCount: Int, timesteps: Int) throws(TrainingError) -> StepDraws {
        guard latentCount >= 1, latentCount <= Self.maxLatentCount else {
            throw .tooLarge(what: "a latent of \(latentCount) elements", limit: Self.maxLatentCount)
        }
        guard let bound = UInt32(exactly: timesteps), bound >= 1 else {
            throw .invalidOption(option: "num_train_timesteps", value: "\(timesteps)", problem: "must be from 1 to 2^32 − 1")
        }
        let z = generator.randn(count: latentCount)
        let flipDraw = generator.nextUniform()
        let t = Int(generator.randint(upperBound: bound))
        let noise = generator.randn(count: latentCount)
        return StepDraws(z: z, flipDraw: flipDraw, timestep: t, noise: noise)
    }
}

/// What a layer of the layer table gets before step 1 (§7): a new LiDB term's `down_train`
/// `[rank, a']` and/or a new LoRA term's `down` `[rank, in]`. `up` factors start at zero and terms
/// taken from an init draw nothing, so they do not appear here.
public struct NewFactorRequest: Sendable, Equatable {
    /// `(rank, a')` of a new LiDB term's `down_train` (fan-in `a'`), or nil.
    public var lidbDownTrain: (rank: Int, fanIn: Int)?
    /// `(rank, in)` of a new LoRA term's `down` (fan-in `in`), or nil.
    public var loraDown: (rank: Int, fanIn: Int)?

    public init(lidbDownTrain: (rank: Int, fanIn: Int)? = nil, loraDown: (rank: Int, fanIn: Int)? = nil) {
        self.lidbDownTrain = lidbDownTrain
        self.loraDown = loraDown
    }

    public static func == (a: NewFactorRequest, b: NewFactorRequest) -> Bool {
        a.lidbDownTrain?.rank == b.lidbDownTrain?.rank && a.lidbDownTrain?.fanIn == b.lidbDownTrain?.fanIn
            && a.loraDown?.rank == b.loraDown?.rank && a.loraDown?.fanIn == b.loraDown?.fanIn
    }
}

/// The initial values drawn for one layer.
public struct NewFactors: Sendable, Equatable {
    /// The new LiDB `down_train`, row-major `[rank, a']`, or nil.
    public var lidbDownTrain: [Float]?
    /// The new LoRA `down`, row-major `[rank, in]`, or nil.
    public var loraDown: [Float]?
}

extension TrainingRandom {
    /// Draws the new factors of every layer in layer-table order (§7): per layer first the LiDB
    /// `down_train`, then the LoRA `down`. Call it once, before the first step.
    public mutating func initialFactors(_ layers: [NewFactorRequest]) throws(TrainingError) -> [NewFactors] {
        var all: [NewFactors] = []
        all.reserveCapacity(layers.count)
        for req in layers {
            var out = NewFactors(lidbDownTrain: nil, loraDown: nil)
            if let l = req.lidbDownTrain { out.lidbDownTrain = try kaimingUniform(rows: l.rank, fanIn: l.fanIn) }
            if let l = req.loraDown { out.loraDown = try kaimingUniform(rows: l.rank, fanIn: l.fanIn) }
            all.append(out)
        }
        return all
    }
}
