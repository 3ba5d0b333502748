/// diffusers' `EulerDiscreteScheduler` (k-diffusion's Euler sampler on the VE sigmas).
///
/// Provided: prediction types epsilon, v_prediction and sample; timestep_spacing linspace
/// (the default), leading and trailing; use_karras_sigmas with optional sigma_min / sigma_max;
/// final_sigmas_type zero or sigma_min; interpolation_type linear.
/// Not provided: s_churn (always 0, so the sampler stays deterministic), exponential and beta
/// sigmas, log_linear interpolation, continuous timesteps with v_prediction,
/// rescale_betas_zero_snr.
public struct EulerDiscreteScheduler: Scheduler, SigmaIndexed {
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing
    public let stepsOffset: Int
    public let useKarrasSigmas: Bool
    public let sigmaMin: Double?
    public let sigmaMax: Double?
    public let finalSigmaIsMin: Bool

    public private(set) var timesteps: [Double]
    /// One sigma per timestep, then the final sigma.
    public private(set) var sigmas: [Float]
    public private(set) var numInferenceSteps: Int?
    /// The position in the schedule, set on the first scaleModelInput/step from the timestep.
    public internal(set) var stepIndex: Int?
    /// Where to start instead of looking the first timestep up (diffusers' set_begin_index).
    public var beginIndex: Int?

    public init(config: SchedulerConfig) throws {
        schedule = try NoiseSchedule(config: config)
        let prediction = try config.string("prediction_type", default: "epsilon")
        predictionType = prediction == "original_sample" ? .sample : try config.prediction()
        timestepSpacing = try config.spacing(default: .linspace)
        stepsOffset = try config.int("steps_offset", default: 0)
        useKarrasSigmas = try config.bool("use_karras_sigmas", default: false)
        sigmaMin = try config.double("sigma_min")
        sigmaMax = try config.double("sigma_max")
        try config.requireOff("use_exponential_sigmas", "use_beta_sigmas")
        let interpolation = try config.string("interpolation_type", default: "linear")
        guard interpolation == "linear" else { throw SchedulerError("unsupported interpolation_type '\(interpolation)'") }
        let timestepType = try config.string("timestep_type", default: "discrete")
        guard timestepType == "discrete" || (timestepType == "continuous" && predictionType != .vPrediction) else {
            throw SchedulerError("unsupported timestep_type '\(timestepType)' with prediction_type v_prediction")
        }
        switch try config.string("final_sigmas_type", default: "zero") {
        case "zero": finalSigmaIsMin = false
        case "sigma_min": finalSigmaIsMin = true
        case let other: throw SchedulerError("unsupported final_sigmas_type '\(other)'")
        }
        let train = schedule.numTrainTimesteps
        timesteps = SchedulerMath.npLinspace(0, Double(train - 1), train).reversed().map { Double(Float($0)) }
        sigmas = schedule.sigmas.reversed() + [0]
    }

    public var initNoiseSigma: Float {
        let maxSigma = sigmas.max() ?? 0
        switch timestepSpacing {
        case .linspace, .trailing: return maxSigma
        case .leading: return (maxSigma * maxSigma + 1).squareRoot()
        }
    }

    public mutating func setTimesteps(_ n: Int) throws {
        let train = schedule.numTrainTimesteps
        try ScheduleCheck.stepCount(n, train: train)
        // float32 timesteps (linspace is not rounded here).
        var ts = SchedulerMath.spacedTimesteps(timestepSpacing, train: train, count: n, offset: timestepSpacing == .leading ? stepsOffset : 0, roundLinspace: false)
            .map { Double(Float($0)) }
        let trainSigmas = schedule.sigmas
        let logSigmas = trainSigmas.map(SchedulerMath.logf32)
        var s = ts.map { SchedulerMath.npInterp($0, trainSigmas) }
        if useKarrasSigmas {
            s = SchedulerMath.karrasSigmas(sigmaMin: sigmaMin ?? s[s.count - 1], sigmaMax: sigmaMax ?? s[0], count: n)
            ts = s.map { Double(Float(SchedulerMath.sigmaToT($0, logSigmas: logSigmas))) }
        }
        let a0 = schedule.alphasCumprod[0]
        let last: Float = finalSigmaIsMin ? ((1 - a0) / a0).squareRoot() : 0
        let newSigmas = s.map { Float($0) } + [last]
        var fields = ScheduleCheck.spacingFields(train: train, spacing: timestepSpacing, offset: stepsOffset)
        if useKarrasSigmas {
            fields.append("use_karras_sigmas true")
            if let sigmaMin { fields.append("sigma_min \(sigmaMin)") }
            if let sigmaMax { fields.append("sigma_max \(sigmaMax)") }
        }
        try ScheduleCheck(scheduler: .euler, steps: n, fields: fields).sigmaSchedule(timesteps: ts, sigmas: newSigmas)
        numInferenceSteps = n
        sigmas = newSigmas
        timesteps = ts
        stepIndex = nil
        beginIndex = nil
    }

    public mutating func scaleModelInput(_ sample: [Float], timestep: Double) -> [Float] {
        scaledBySigma(sample, timestep: timestep)
    }

    public mutating func step<N: NoiseSource>(modelOutput: [Float], timestep: Double, sample: [Float], noise: inout N) -> [Float] {
        if stepIndex == nil { initStepIndex(timestep) }
        let i = stepIndex!
        precondition(i + 1 < sigmas.count, "step past the end of the schedule")
        let sigma = sigmas[i]
        let sigmaHat = sigma * 1  // sigma * (gamma + 1) with s_churn 0
        let predOriginal: [Float]
        switch predictionType {
        case .epsilon:
            predOriginal = map2(sample, modelOutput) { s, m in s - sigmaHat * m }
        case .vPrediction:
            let cOut = -sigma / (sigma * sigma + 1).squareRoot(), cSkip = sigma * sigma + 1
            predOriginal = map2(sample, modelOutput) { s, m in m * cOut + s / cSkip }
        case .sample:
            predOriginal = modelOutput
        }
        let dt = sigmas[i + 1] - sigmaHat
        let derivative = map2(sample, predOriginal) { s, x0 in (s - x0) / sigmaHat }
        stepIndex = i + 1
        return map2(sample, derivative) { s, d in s + d * dt }
    }
}
