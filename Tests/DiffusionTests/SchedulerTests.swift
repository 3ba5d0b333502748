import Foundation
import Testing
@testable import Diffusion
@testable import TensorFile

/// The schedulers checked step by step against diffusers, with the fixtures of
/// converters/fixtures/make_scheduler_fixtures.py (see its docstring for the file layout).
///
/// Tolerances, and why:
/// - Training schedules (betas, alphas_cumprod): bit-exact. Swift reproduces torch.linspace's
///   fused multiply-adds and torch.cumprod's float64 accumulation.
/// - Timesteps: exact (integers, or numpy float64 values rounded to float32), except the Euler
///   Karras timesteps, which come from numpy's float32 log of the training sigmas (not correctly
///   rounded; Swift uses libm): relative 1e-6. (They currently agree bit for bit.)
/// - Sigmas and init_noise_sigma: relative 1e-6 per element. torch's CPU float32 sqrt, exp and
///   log (MKL's vector math in the pinned build) are not correctly rounded: about one training
///   sigma in five is 1 ulp away from the correctly rounded sqrt that Swift computes. Measured:
///   at most 1.2e-7.
/// - Trajectories (every scale_model_input output and prev_sample): relative 1e-5 per step,
///   max |difference| / max |reference|, with Swift carrying its own samples forward. The same
///   1-ulp differences in the per-step float32 coefficients (square roots everywhere, and
///   DPM-Solver++'s log/exp of its lambdas) are the only source of difference; measured: at
///   most 7.6e-7 over all cases. SCHEDULER_REPORT=1 prints the per-case numbers.
@Suite struct SchedulerTests {
    static let fixture: SchedulerFixture? = try? SchedulerFixture()

    @Test func fixtureLoads() throws {
        let f = try SchedulerFixture()
        #expect(f.cases.count >= 70)
        #expect(Set(f.cases.map(\.kind)).count == SchedulerKind.allCases.count)
    }

    /// betas and alphas_cumprod of every fixture config, bit for bit.
    @Test func trainingSchedules() throws {
        let f = try #require(Self.fixture)
        for name in f.configNames {
            let schedule = try NoiseSchedule(config: f.configs[name]!)
            let betas = try f.floats(name + ".betas"), alphasCumprod = try f.floats(name + ".alphas_cumprod")
            let sameBetas = schedule.betas == betas, sameProducts = schedule.alphasCumprod == alphasCumprod
            #expect(sameBetas, "\(name) betas")
            #expect(sameProducts, "\(name) alphas_cumprod")
        }
    }

    @Test(arguments: SchedulerTests.fixture?.cases ?? [])
    func trajectory(_ c: SchedulerFixture.Case) throws {
        let f = try #require(Self.fixture)
        let config = f.config(for: c)
        switch c.kind {
        case .ddim:
            var s = try DDIMScheduler(config: config)
            s.eta = c.eta ?? 0
            try run(&s, c, f)
        case .euler:
            var s = try EulerDiscreteScheduler(config: config)
            try run(&s, c, f)
        case .eulerAncestral:
            var s = try EulerAncestralDiscreteScheduler(config: config)
            try run(&s, c, f)
        case .dpmSolverMultistep:
            var s = try DPMSolverMultistepScheduler(config: config)
            try run(&s, c, f)
        case .pndm:
            var s = try PNDMScheduler(config: config)
            try run(&s, c, f)
        }
    }

    func run<S: Scheduler>(_ s: inout S, _ c: SchedulerFixture.Case, _ f: SchedulerFixture) throws {
        try s.setTimesteps(c.steps)
        let karras = c.overrides.contains { $0.0 == "use_karras_sigmas" && $0.1 == .bool(true) }

        let wantT = try f.doubles(c.name + ".timesteps")
        if c.kind == .euler && karras {
            #expect(maxRelative(s.timesteps, wantT) <= 1e-6, "\(c.name) timesteps \(s.timesteps) vs \(wantT)")
        } else {
            #expect(s.timesteps == wantT, "\(c.name) timesteps \(s.timesteps) vs \(wantT)")
        }
        let sigmas: [Float]? = switch s {
        case let e as EulerDiscreteScheduler: e.sigmas
        case let e as EulerAncestralDiscreteScheduler: e.sigmas
        case let d as DPMSolverMultistepScheduler: d.sigmas
        default: nil
        }
        var stats = Stats()
        if let sigmas {
            let want = try f.floats(c.name + ".sigmas")
            let rel = maxRelative(sigmas.map(Double.init), want.map(Double.init))
            stats.sigmaRel = rel
            stats.sigmaExact = sigmas == want
            #expect(rel <= 1e-6, "\(c.name) sigmas: relative difference \(rel)")
        }
        let wantInit = try f.floats(c.name + ".init_noise_sigma")[0]
        #expect(abs(Double(s.initNoiseSigma) - Double(wantInit)) <= 1e-6 * Double(wantInit), "\(c.name) init_noise_sigma")

        let n = wantT.count
        let xT = try f.floats("x_T." + c.latents)
        let size = xT.count
        let wantPrev = try f.floats(c.name + ".prev")
        let wantScaled = c.scalesInput ? try f.floats(c.name + ".scaled") : nil
        var noise = RecordedNoise(values: c.recordsNoise ? try f.floats(c.name + ".noise") : [])
        #expect(wantPrev.count == n * size)

        let sigma = s.initNoiseSigma
        var latents = xT.map { $0 * sigma }
        for (k, t) in s.timesteps.enumerated() where k < n {
            let input = s.scaleModelInput(latents, timestep: t)
            if let wantScaled {
                stats.add(try compare(input, Array(wantScaled[k * size..<(k + 1) * size]), "\(c.name) scaled \(k)"))
            } else {
                let identity = input == latents
                #expect(identity, "\(c.name) scale_model_input is the identity")
            }
            let output = Self.model(input, t)
            latents = s.step(modelOutput: output, timestep: t, sample: latents, noise: &noise)
            stats.add(try compare(latents, Array(wantPrev[k * size..<(k + 1) * size]), "\(c.name) prev \(k)"))
        }
        #expect(noise.next == noise.values.count, "\(c.name) used all recorded noise")
        if ProcessInfo.processInfo.environment["SCHEDULER_REPORT"] != nil { print("REPORT \(c.name) \(stats)") }
    }

    struct Stats: CustomStringConvertible {
        var worst = 0.0, exactTensors = 0, tensors = 0, sigmaRel = 0.0, sigmaExact = true
        mutating func add(_ r: (Double, Bool)) { worst = max(worst, r.0); tensors += 1; exactTensors += r.1 ? 1 : 0 }
        var description: String { "worst \(worst) exact \(exactTensors)/\(tensors) sigmas \(sigmaExact ? "exact" : "\(sigmaRel)")" }
    }

    /// The fixture's stand-in model: `x * float32(0.1) + float32(0.01 * t / 1000)`.
    static func model(_ x: [Float], _ t: Double) -> [Float] {
        let c = Float(0.01 * t / 1000)
        return x.map { $0 * Float(0.1) + c }
    }

    /// Checks max|got - want| / max|want| <= 1e-5; returns it and whether the tensors are bit-equal.
    func compare(_ got: [Float], _ want: [Float], _ what: String) throws -> (Double, Bool) {
        try #require(got.count == want.count, "\(what): \(got.count) values, want \(want.count)")
        var diff = 0.0, scale = 0.0
        for (g, w) in zip(got, want) {
            diff = max(diff, abs(Double(g) - Double(w)))
            scale = max(scale, abs(Double(w)))
        }
        let rel = scale > 0 ? diff / scale : diff
        #expect(rel <= 1e-5, "\(what): relative difference \(rel)")
        return (rel, got == want)
    }

    func maxRelative(_ got: [Double], _ want: [Double]) -> Double {
        guard got.count == want.count else { return .infinity }
        return zip(got, want).map { g, w in w == 0 ? abs(g) : abs(g - w) / abs(w) }.max() ?? 0
    }

    // MARK: - Configs

    @Test func classNameChoosesTheScheduler() throws {
        let f = try #require(Self.fixture)
        #expect(try makeScheduler(config: f.configs["sd1"]!) is PNDMScheduler)
        #expect(try makeScheduler(config: f.configs["sd2v"]!) is DDIMScheduler)
        #expect(try makeScheduler(.euler, config: f.configs["sd1"]!) is EulerDiscreteScheduler)
        #expect(throws: SchedulerError.self) { try makeScheduler(config: f.configs["defaults"]!) }
    }

    @Test func classDefaults() throws {
        let empty = try SchedulerConfig(json: .object([]))
        let ddim = try DDIMScheduler(config: empty)
        #expect(ddim.clipSample && ddim.finalAlphaCumprod == 1 && ddim.timestepSpacing == .leading)
        #expect(try EulerDiscreteScheduler(config: empty).timestepSpacing == .linspace)
        let dpm = try DPMSolverMultistepScheduler(config: empty)
        #expect(dpm.solverOrder == 2 && dpm.lowerOrderFinal && dpm.timestepSpacing == .linspace)
        // PNDM's own default runs the PRK warm-up, which is not provided.
        #expect(throws: SchedulerError.self) { try PNDMScheduler(config: empty) }
    }

    @Test func unsupportedOptionsAreRejected() throws {
        let sd1 = try #require(Self.fixture).configs["sd1"]!
        let rejected: [(SchedulerKind, String, JSONValue)] = [
            (.ddim, "thresholding", .bool(true)),
            (.ddim, "rescale_betas_zero_snr", .bool(true)),
            (.ddim, "beta_schedule", .string("sigmoid")),
            (.ddim, "prediction_type", .string("flow_prediction")),
            (.ddim, "timestep_spacing", .string("karras")),
            (.euler, "use_exponential_sigmas", .bool(true)),
            (.euler, "interpolation_type", .string("log_linear")),
            (.eulerAncestral, "prediction_type", .string("sample")),
            (.dpmSolverMultistep, "algorithm_type", .string("sde-dpmsolver++")),
            (.dpmSolverMultistep, "solver_order", .int(4)),
            (.dpmSolverMultistep, "use_lu_lambdas", .bool(true)),
            (.dpmSolverMultistep, "variance_type", .string("learned_range")),
            (.pndm, "skip_prk_steps", .bool(false)),
            (.pndm, "num_train_timesteps", .string("1000")),
        ]
        for (kind, key, value) in rejected {
            #expect(throws: SchedulerError.self, "\(kind) \(key)") { try makeScheduler(kind, config: sd1.setting(key, value)) }
        }
    }

    @Test func inferenceStepCountIsChecked() throws {
        let sd1 = try #require(Self.fixture).configs["sd1"]!
        var ddim = try DDIMScheduler(config: sd1)
        #expect(throws: SchedulerError.self) { try ddim.setTimesteps(0) }
        #expect(throws: SchedulerError.self) { try ddim.setTimesteps(1001) }
        var pndm = try PNDMScheduler(config: sd1)
        try pndm.setTimesteps(4)
        #expect(pndm.timesteps == [751, 501, 501, 251, 1])
    }

    @Test func configReadsFromFile() throws {
        let config = try SchedulerConfig(contentsOf: DiffusionFixtures.path("schedulers/sd2v.scheduler_config.json"))
        let ddim = try DDIMScheduler(config: config)
        #expect(ddim.predictionType == .vPrediction && !ddim.clipSample && ddim.stepsOffset == 1)
        #expect(ddim.finalAlphaCumprod == ddim.schedule.alphasCumprod[0])
    }
}

/// Noise recorded from torch, handed out step by step.
struct RecordedNoise: NoiseSource {
    let values: [Float]
    var next = 0
    mutating func randn(count: Int) -> [Float] {
        precondition(next + count <= values.count, "the fixture recorded less noise than the scheduler draws")
        defer { next += count }
        return Array(values[next..<next + count])
    }
}

/// Tests/DiffusionTests/Fixtures/schedulers: cases.json, the configs and trajectories.safetensors.
struct SchedulerFixture: Sendable {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var kind: SchedulerKind
        var config: String
        var overrides: [(String, JSONValue)]
        var steps: Int
        var latents: String
        var eta: Float?
        var scalesInput: Bool
        var recordsNoise: Bool
        var testDescription: String { name }
    }

    let cases: [Case]
    let configNames: [String]
    let configs: [String: SchedulerConfig]
    let tensors: SafetensorsFile

    init() throws {
        let path = DiffusionFixtures.path("schedulers/cases.json")
        let doc = try JSONValue.parse([UInt8](Data(contentsOf: URL(fileURLWithPath: path))), file: path)
        struct Bad: Error { var what: String }
        configNames = try (doc["configs"]?.arrayValue ?? []).map {
            guard let s = $0.stringValue else { throw Bad(what: "config name") }
            return s
        }
        var configs: [String: SchedulerConfig] = [:]
        for n in configNames {
            configs[n] = try SchedulerConfig(contentsOf: DiffusionFixtures.path("schedulers/\(n).scheduler_config.json"))
        }
        self.configs = configs
        cases = try (doc["cases"]?.arrayValue ?? []).map { c in
            guard let name = c["name"]?.stringValue, let cls = c["scheduler"]?.stringValue, let kind = SchedulerKind(rawValue: cls),
                  let config = c["config"]?.stringValue, let overrides = c["overrides"]?.objectValue,
                  let steps = c["steps"]?.int64Value, let latents = c["latents"]?.stringValue,
                  let scales = c["scales_input"]?.boolValue, let noise = c["records_noise"]?.boolValue
            else { throw Bad(what: "case \(c)") }
            return Case(name: name, kind: kind, config: config, overrides: overrides, steps: Int(steps), latents: latents,
                        eta: c["eta"]?.doubleValue.map { Float($0) }, scalesInput: scales, recordsNoise: noise)
        }
        tensors = try SafetensorsFile(path: DiffusionFixtures.path("schedulers/trajectories.safetensors"))
    }

    func config(for c: Case) -> SchedulerConfig {
        c.overrides.reduce(configs[c.config]!) { $0.setting($1.0, $1.1) }
    }

    func floats(_ name: String) throws -> [Float] {
        let info = try #require(tensors.tensors.first { $0.name == name }, "missing tensor \(name)")
        try #require(info.dtype == .F32)
        let b = try tensors.tensorBytes(name)
        return (0..<(b.bytes.count / 4)).map { Float(bitPattern: b.bytes.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
    }

    func doubles(_ name: String) throws -> [Double] {
        let info = try #require(tensors.tensors.first { $0.name == name }, "missing tensor \(name)")
        try #require(info.dtype == .F64)
        let b = try tensors.tensorBytes(name)
        return (0..<(b.bytes.count / 8)).map { Double(bitPattern: b.bytes.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)) }
    }
}
