import Foundation
import TensorFile

/// A source of standard normal noise for the ancestral (stochastic) schedulers.
///
/// The runtime's torch-compatible generator conforms to this; tests feed noise recorded from
/// torch so a trajectory can be compared with diffusers step by step.
public protocol NoiseSource {
    mutating func randn(count: Int) -> [Float]
}

/// The noise source of deterministic sampling: a scheduler that asks for noise through it is a
/// programming error (pass a real source to the ancestral schedulers and DDIM with `eta > 0`).
public struct NoNoise: NoiseSource {
    public init() {}
    public mutating func randn(count: Int) -> [Float] {
        preconditionFailure("this scheduler draws noise: pass a NoiseSource to step")
    }
}

/// A diffusers sampling scheduler working on flat float32 latents.
///
/// Usage mirrors a diffusers pipeline:
///
///     try scheduler.setTimesteps(steps)
///     latents = noise.map { $0 * scheduler.initNoiseSigma }
///     for t in scheduler.timesteps {
///         let input = scheduler.scaleModelInput(latents, timestep: t)
///         let output = model(input, t)
///         latents = scheduler.step(modelOutput: output, timestep: t, sample: latents, noise: &rng)
///     }
///
/// Timesteps are `Double`: the integer timesteps of DDIM, PNDM and DPM-Solver and the float32
/// timesteps of the Euler schedulers are all exact in it.
///
/// Every step is computed in float32 in diffusers' order of operations, so results agree with
/// diffusers 0.42.1 to the last bit or two (see SchedulerMath for where they can differ).
public protocol Scheduler {
    /// The timesteps of the current schedule, in the order the model is evaluated.
    var timesteps: [Double] { get }
    /// The factor the initial Gaussian noise is multiplied by.
    var initNoiseSigma: Float { get }
    /// The value of the last `setTimesteps` call, or nil before it.
    var numInferenceSteps: Int? { get }
    /// Prepares a schedule of `numInferenceSteps` steps (diffusers' `set_timesteps`).
    mutating func setTimesteps(_ numInferenceSteps: Int) throws
    /// The model input for `sample` at `timestep` (diffusers' `scale_model_input`).
    mutating func scaleModelInput(_ sample: [Float], timestep: Double) -> [Float]
    /// One denoising step: the sample at the previous (less noisy) timestep.
    mutating func step<N: NoiseSource>(modelOutput: [Float], timestep: Double, sample: [Float], noise: inout N) -> [Float]
}

extension Scheduler {
    /// A step of a deterministic scheduler.
    public mutating func step(modelOutput: [Float], timestep: Double, sample: [Float]) -> [Float] {
        var none = NoNoise()
        return step(modelOutput: modelOutput, timestep: timestep, sample: sample, noise: &none)
    }
}

public struct SchedulerError: Error, CustomStringConvertible, Equatable {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The schedulers, named as diffusers names their classes (`_class_name` in scheduler_config.json).
public enum SchedulerKind: String, CaseIterable, Sendable {
    case ddim = "DDIMScheduler"
    case euler = "EulerDiscreteScheduler"
    case eulerAncestral = "EulerAncestralDiscreteScheduler"
    case dpmSolverMultistep = "DPMSolverMultistepScheduler"
    case pndm = "PNDMScheduler"
}

/// Builds the scheduler `kind` from a scheduler config, as diffusers' `Class.from_config(config)`
/// does: keys the class does not know are ignored, missing keys take the class's defaults.
/// Without `kind`, the config's `_class_name` chooses.
public func makeScheduler(_ kind: SchedulerKind? = nil, config: SchedulerConfig) throws -> any Scheduler {
    let k: SchedulerKind
    if let kind { k = kind } else {
        let name = try config.string("_class_name", default: "")
        guard let named = SchedulerKind(rawValue: name) else { throw SchedulerError("unsupported scheduler class '\(name)'") }
        k = named
    }
    switch k {
    case .ddim: return try DDIMScheduler(config: config)
    case .euler: return try EulerDiscreteScheduler(config: config)
    case .eulerAncestral: return try EulerAncestralDiscreteScheduler(config: config)
    case .dpmSolverMultistep: return try DPMSolverMultistepScheduler(config: config)
    case .pndm: return try PNDMScheduler(config: config)
    }
}

public enum PredictionType: String, Sendable {
    case epsilon
    case vPrediction = "v_prediction"
    case sample
}

public enum TimestepSpacing: String, Sendable {
    case linspace, leading, trailing
}

/// A diffusers scheduler config (scheduler_config.json), read with typed accessors.
/// A key holding `null` counts as absent, as diffusers then uses the default.
public struct SchedulerConfig: Sendable {
    public let json: JSONValue

    public init(json: JSONValue) throws {
        guard json.objectValue != nil else { throw SchedulerError("a scheduler config must be a JSON object") }
        self.json = json
    }

    /// Reads a scheduler_config.json file.
    public init(contentsOf path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try self.init(json: try JSONValue.parse([UInt8](data), file: path))
    }

    /// The config with `key` set to `value`.
    public func setting(_ key: String, _ value: JSONValue) -> SchedulerConfig {
        // Setting a key keeps an object an object.
        (try? SchedulerConfig(json: json.setting(key, value))) ?? self
    }

    func value(_ key: String) -> JSONValue? {
        guard let v = json[key], v != .null else { return nil }
        return v
    }

    func int(_ key: String, default d: Int) throws -> Int {
        guard let v = value(key) else { return d }
        if let i = v.int64Value, let r = Int(exactly: i) { return r }
        if let x = v.doubleValue, x.rounded() == x, let r = Int(exactly: x) { return r }
        throw SchedulerError("config '\(key)' must be an integer")
    }

    func double(_ key: String) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard let x = v.doubleValue else { throw SchedulerError("config '\(key)' must be a number") }
        return x
    }

    func double(_ key: String, default d: Double) throws -> Double { try double(key) ?? d }

    func string(_ key: String, default d: String) throws -> String {
        guard let v = value(key) else { return d }
        guard let s = v.stringValue else { throw SchedulerError("config '\(key)' must be a string") }
        return s
    }

    func bool(_ key: String, default d: Bool) throws -> Bool {
        guard let v = value(key) else { return d }
        guard let b = v.boolValue else { throw SchedulerError("config '\(key)' must be true or false") }
        return b
    }

    func doubles(_ key: String) throws -> [Double]? {
        guard let v = value(key) else { return nil }
        guard let a = v.arrayValue else { throw SchedulerError("config '\(key)' must be an array of numbers") }
        return try a.map {
            guard let x = $0.doubleValue else { throw SchedulerError("config '\(key)' must be an array of numbers") }
            return x
        }
    }

    func prediction(default d: PredictionType = .epsilon, allowed: Set<String> = ["epsilon", "v_prediction", "sample"]) throws -> PredictionType {
        let s = try string("prediction_type", default: d.rawValue)
        guard allowed.contains(s), let p = PredictionType(rawValue: s) else {
            throw SchedulerError("unsupported prediction_type '\(s)'")
        }
        return p
    }

    func spacing(default d: TimestepSpacing) throws -> TimestepSpacing {
        let s = try string("timestep_spacing", default: d.rawValue)
        guard let t = TimestepSpacing(rawValue: s) else { throw SchedulerError("unsupported timestep_spacing '\(s)'") }
        return t
    }

    /// Rejects a boolean option this implementation does not provide when it is switched on.
    func requireOff(_ keys: String...) throws {
        for k in keys where try bool(k, default: false) { throw SchedulerError("unsupported option '\(k)'") }
    }
}

/// The training noise schedule shared by every scheduler: betas and their cumulative alpha
/// products, computed as diffusers computes them (torch float32; see SchedulerMath).
public struct NoiseSchedule: Sendable {
    public let numTrainTimesteps: Int
    public let betas: [Float]
    public let alphasCumprod: [Float]

    public init(config: SchedulerConfig) throws {
        // Every number within its range (spec/base.md §2.1) before a schedule is allocated.
        do { try config.checkRanges() } catch { throw SchedulerError("config '\(error.field)' must be \(error.expected)") }
        let t = try config.int("num_train_timesteps", default: 1000)
        try config.requireOff("rescale_betas_zero_snr")
        let betas: [Float]
        if let trained = try config.doubles("trained_betas") {
            guard !trained.isEmpty else { throw SchedulerError("trained_betas is empty") }
            betas = trained.map { Float($0) }
        } else {
            let start = try config.double("beta_start", default: 0.0001)
            let end = try config.double("beta_end", default: 0.02)
            switch try config.string("beta_schedule", default: "linear") {
            case "linear":
                betas = SchedulerMath.torchLinspace(Float(start), Float(end), t)
            case "scaled_linear":
                betas = SchedulerMath.torchLinspace(Float(pow(start, 0.5)), Float(pow(end, 0.5)), t).map { $0 * $0 }
            case "squaredcos_cap_v2":
                betas = SchedulerMath.betasForAlphaBarCosine(t)
            case let other:
                throw SchedulerError("unsupported beta_schedule '\(other)'")
            }
        }
        let products = SchedulerMath.torchCumprod(betas.map { 1 - $0 })
        // Each training timestep must carry some noise and some signal in float32: a beta that
        // rounds away (1 − β = 1) or a product that underflows would make a sigma 0 or infinite,
        // and every scheduler divides by one of them.
        for (i, a) in products.enumerated() {
            let sigma = ((1 - a) / a).squareRoot()
            guard a > 0, a < 1, sigma.isFinite, sigma > 0 else {
                let source = try config.doubles("trained_betas") != nil ? "trained_betas" : "beta_start, beta_end and beta_schedule"
                throw SchedulerError("the training noise schedule is degenerate: alphas_cumprod[\(i)] is \(a) in float32 (sigma \(sigma)); check \(source)")
            }
        }
        numTrainTimesteps = t
        self.betas = betas
        alphasCumprod = products
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32, indexed by training timestep.
    var sigmas: [Float] { alphasCumprod.map { ((1 - $0) / $0).squareRoot() } }

    /// Refuses a schedule that would index outside the training timesteps (DDIM and PNDM read
    /// `alphas_cumprod[t]`; diffusers' numpy would wrap a −1 round to the noisiest timestep).
    func checkInRange(_ timesteps: [Double], _ check: ScheduleCheck) throws {
        if let (i, bad) = timesteps.enumerated().first(where: { !$0.element.isFinite || $0.element < 0 || $0.element >= Double(numTrainTimesteps) }) {
            throw check.error("timestep \(ScheduleCheck.show(bad)) (position \(i + 1) of \(timesteps.count)) is outside the training schedule 0…\(numTrainTimesteps - 1)")
        }
    }

    func alphaCumprod(at t: Int) -> Float {
        precondition(t >= 0 && t < alphasCumprod.count, "timestep \(t) is outside the training schedule")
        return alphasCumprod[t]
    }
}

extension SchedulerConfig {
    /// The config's `prediction_type` (`epsilon` when absent); other values than `epsilon`,
    /// `v_prediction` and `sample` throw.
    public func predictionType() throws -> PredictionType { try prediction() }
}

/// The checks a schedule passes in `setTimesteps`, before any step runs, so that stepping it can
/// neither trap nor divide by zero (spec/runtime.md, "Schedules"). diffusers 0.42.1 computes the
/// same schedules without these checks: where one fails, diffusers stops with an IndexError
/// partway through sampling or produces NaN latents.
///
/// Errors name the scheduler, the step count and the config fields that shaped the schedule.
struct ScheduleCheck {
    let scheduler: SchedulerKind
    let steps: Int
    /// `field value` pairs of the config that shaped the schedule, e.g. `num_train_timesteps 1000`.
    let fields: [String]

    func error(_ problem: String) -> SchedulerError {
        SchedulerError("\(steps) step\(steps == 1 ? "" : "s") of \(scheduler.rawValue) (\(fields.joined(separator: ", "))): \(problem); "
                       + "use fewer steps or fix the scheduler config")
    }

    /// At least one step, and no more than there are training timesteps (as diffusers' DDIM and
    /// PNDM require; for the others more steps than training timesteps repeat timesteps).
    static func stepCount(_ n: Int, train: Int) throws {
        guard n >= 1, n <= train else {
            throw SchedulerError("num_inference_steps \(n) must be between 1 and num_train_timesteps (\(train))")
        }
    }

    /// The sigma-indexed schedulers (Euler, Euler ancestral, DPM-Solver): the position in the
    /// schedule is found by looking the first timestep up, taking its second occurrence when it
    /// occurs twice (diffusers' `index_for_timestep`), so a repeated first timestep would start
    /// one step in and step past the end. `sigmas` has one entry per timestep, then the final one.
    ///
    /// - the schedule has at least one timestep; every timestep and sigma is finite; every sigma
    ///   of the schedule (not the final one) is positive;
    /// - the first timestep occurs once;
    /// - with `logSNR` (DPM-Solver, whose multistep update divides by the change in log-SNR
    ///   between steps): the log-SNR of every sigma of the schedule, computed as the step computes
    ///   it, is above the one before it.
    func sigmaSchedule(timesteps: [Double], sigmas: [Float], logSNR: ((Float) -> Float)? = nil) throws {
        guard let first = timesteps.first else { throw error("the schedule has no timesteps") }
        if let i = timesteps.firstIndex(where: { !$0.isFinite }) {
            throw error("timestep \(i + 1) of the schedule is \(timesteps[i])")
        }
        if let i = sigmas.firstIndex(where: { !$0.isFinite }) {
            throw error("sigma \(i + 1) of the schedule is \(sigmas[i]) (the training noise schedule overflows: check the betas)")
        }
        if let i = sigmas.prefix(timesteps.count).firstIndex(where: { !($0 > 0) }) {
            throw error("sigma \(i + 1) of the schedule (timestep \(Self.show(timesteps[i]))) is \(sigmas[i]): no noise to remove there (check the betas)")
        }
        if let again = timesteps.dropFirst().firstIndex(of: first) {
            throw error("the schedule repeats its first timestep \(Self.show(first)) (steps 1 and \(again + 1) of \(timesteps.count)), "
                        + "so the sampler would start at step \(again + 1) and step past the end of the schedule")
        }
        if let logSNR, timesteps.count > 1 {
            for i in 1..<timesteps.count where !(logSNR(sigmas[i]) > logSNR(sigmas[i - 1])) {
                throw error("the noise level does not decrease from step \(i) to step \(i + 1) (timesteps \(Self.show(timesteps[i - 1])) and "
                            + "\(Self.show(timesteps[i])), sigmas \(sigmas[i - 1]) and \(sigmas[i])): the solver's step would divide by zero")
            }
        }
    }

    static func show(_ t: Double) -> String { t == t.rounded() && abs(t) < 1e15 ? String(Int64(t)) : "\(t)" }

    /// The fields every scheduler's timesteps depend on.
    static func spacingFields(train: Int, spacing: TimestepSpacing, offset: Int) -> [String] {
        var f = ["num_train_timesteps \(train)", "timestep_spacing \(spacing.rawValue)"]
        if spacing == .leading && offset != 0 { f.append("steps_offset \(offset)") }
        return f
    }
}
