import Testing
import TensorFile
@testable import Training

/// Validation of every training option: a typed error naming the option, before anything runs.
@Suite struct OptionTests {
    static func options(_ change: (inout TrainingOptions) -> Void = { _ in }) -> TrainingOptions {
        var o = TrainingOptions(steps: 40, optimizer: .adamw(AdamWSettings(lr: 1e-4)), resolution: 512)
        change(&o)
        return o
    }

    /// The option named by the error `o.validate` throws, or nil when it passes.
    static func refused(_ o: TrainingOptions, vaeFactor: Int = 8) -> String? {
        do {
            try o.validate(vaeFactor: vaeFactor)
            return nil
        } catch {
            guard case let .invalidOption(option, _, _) = error else { return "unexpected \(error)" }
            return option
        }
    }

    @Test func defaultsAreValid() throws {
        try Self.options().validate(vaeFactor: 8)
        try Self.options { $0.optimizer = .sgd(lr: 1e6); $0.maxGradNorm = 1e-8; $0.resolution = 64 }.validate(vaeFactor: 8)
        try Self.options { $0.resolution = 8 }.validate(vaeFactor: 8)
        #expect(TrainMode.default(hasInit: true) == .lora && TrainMode.default(hasInit: false) == .lidb)
        #expect(Self.options().effectiveRelaxAlpha == 4)
    }

    @Test func stepsAreBounded() {
        for s in [0, -1, TrainingLimits.maxSteps + 1, Int.max] {
            #expect(Self.refused(Self.options { $0.steps = s }) == "--steps")
        }
        #expect(Self.refused(Self.options { $0.steps = TrainingLimits.maxSteps }) == nil)
    }

    @Test func learningRate() {
        for lr in [0, -1e-4, .nan, .infinity, -.infinity, 1e-50, 1e39] {
            #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: lr, weightDecay: 0)) }) == "--lr", "adamw lr \(lr)")
            #expect(Self.refused(Self.options { $0.optimizer = .sgd(lr: lr) }) == "--lr", "sgd lr \(lr)")
        }
    }

    @Test func adamHyperparameters() {
        for b in [-0.1, 1.0, 1.5, .nan, .infinity] {
            #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 1e-4, beta1: b)) }) == "--adam-beta1")
            #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 1e-4, beta2: b)) }) == "--adam-beta2")
        }
        #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 1e-4, beta1: 0, beta2: 0)) }) == nil)
        for e in [0, -1e-8, 1e-50, .nan, .infinity, 1e39] {
            #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 1e-4, eps: e)) }) == "--adam-epsilon", "eps \(e)")
        }
        for wd in [-0.01, .nan, .infinity] {
            #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 1e-4, weightDecay: wd)) }) == "--adam-weight-decay")
        }
        // lr · weight_decay ≥ 1 would zero or flip the factors every step.
        #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 10, weightDecay: 0.1)) }) == "--adam-weight-decay")
        #expect(Self.refused(Self.options { $0.optimizer = .adamw(AdamWSettings(lr: 10, weightDecay: 0)) }) == nil)
    }

    @Test func maxGradNorm() {
        for x in [0, -1, .nan, .infinity, 1e-50, 1e39] {
            #expect(Self.refused(Self.options { $0.maxGradNorm = x }) == "--max-grad-norm", "\(x)")
        }
    }

    @Test func resolutionIsAMultipleOfTheVAEFactor() {
        for r in [0, -8, 4, 12, 513, TrainingLimits.maxResolution + 8] {
            #expect(Self.refused(Self.options { $0.resolution = r }) == "--resolution", "\(r)")
        }
        #expect(Self.refused(Self.options { $0.resolution = 12 }, vaeFactor: 4) == nil)
        #expect(Self.refused(Self.options { $0.resolution = 12 }, vaeFactor: 8) == "--resolution")
        for f in [0, 3, -8, 8192] { #expect(Self.refused(Self.options(), vaeFactor: f) == "--resolution", "factor \(f)") }
        let e = Self.message(Self.options { $0.resolution = 500 })
        #expect(e == "--resolution 500: must be a positive multiple of the VAE factor 8, at most 4096")
    }

    static func message(_ o: TrainingOptions) -> String? {
        do { try o.validate(vaeFactor: 8); return nil } catch { return error.description }
    }

    @Test func termShapes() {
        #expect(Self.refused(Self.options { $0.lidb.rank = 0 }) == "--rank")
        #expect(Self.refused(Self.options { $0.lidb.rank = 1025 }) == "--rank")
        #expect(Self.refused(Self.options { $0.lidb.a = 0 }) == "--down-dim")
        #expect(Self.refused(Self.options { $0.lidb.b = 5000 }) == "--up-dim")
        #expect(Self.refused(Self.options { $0.lidb.alpha = .nan }) == "--alpha")
        #expect(Self.refused(Self.options { $0.lidb.alpha = 1e300 }) == "--alpha")
        #expect(Self.refused(Self.options { $0.relaxRank = 0 }) == "--relax-rank")
        #expect(Self.refused(Self.options { $0.relaxAlpha = .infinity }) == "--relax-alpha")
    }

    @Test func optimizerByName() throws {
        #expect(try OptimizerSettings.named("sgd", lr: 0.5) == .sgd(lr: 0.5))
        #expect(try OptimizerSettings.named("adamw", lr: 1e-4) == .adamw(AdamWSettings(lr: 1e-4)))
        #expect(try OptimizerSettings.named("adamw", lr: 1e-4, beta1: 0.8, eps: 1e-6)
            == .adamw(AdamWSettings(lr: 1e-4, beta1: 0.8, beta2: 0.999, eps: 1e-6, weightDecay: 1e-2)))
        #expect(throws: TrainingError.invalidOption(option: "--optimizer", value: "'adam'", problem: "must be one of adamw, sgd")) {
            _ = try OptimizerSettings.named("adam", lr: 1e-4)
        }
        let e = #expect(throws: TrainingError.self) { _ = try OptimizerSettings.named("sgd", lr: 1e-4, weightDecay: 0.01) }
        #expect(e?.description.hasPrefix("--adam-weight-decay 0.01: applies to --optimizer adamw only") == true)
        func text(_ v: JSONValue) -> String { String(decoding: v.serialized(), as: UTF8.self) }
        #expect(text(OptimizerSettings.adamw(AdamWSettings(lr: 1e-4)).provenance)
            == #"{"name":"adamw","betas":[0.9,0.999],"eps":1e-08,"weight_decay":0.01}"#)
        #expect(text(OptimizerSettings.sgd(lr: 1).provenance) == #"{"name":"sgd"}"#)
    }

    @Test func seedsAndNumbers() throws {
        #expect(try TrainingOptions.parseSeed("0") == 0)
        #expect(try TrainingOptions.parseSeed("18446744073709551615") == .max)
        #expect(try TrainingOptions.parseSeed("1099511627781") == 1 << 40 + 5)
        for bad in ["", "-1", "+1", " 1", "1.0", "0x10", "18446744073709551616", "1e3", "seven"] {
            #expect(throws: TrainingError.self) { _ = try TrainingOptions.parseSeed(bad) }
        }
        let e = #expect(throws: TrainingError.self) { _ = try TrainingOptions.parseSeed("-3", option: "--basis-seed") }
        #expect(e?.description.hasPrefix("--basis-seed '-3': ") == true)
        #expect(try TrainingOptions.parseNumber("1e-4", option: "--lr") == 1e-4)
        for bad in ["nan", "inf", "-inf", "", "1e999", "abc"] {
            #expect(throws: TrainingError.self) { _ = try TrainingOptions.parseNumber(bad, option: "--lr") }
        }
    }
}
