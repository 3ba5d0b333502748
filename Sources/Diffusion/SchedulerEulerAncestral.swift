/// diffusers' `EulerAncestralDiscreteScheduler` ("Euler a"): an Euler step down to
/// `sigma_down` and fresh noise of size `sigma_up` drawn from the NoiseSource every step
/// (also on the last step, where `sigma_up` is 0, so the generator advances as torch's does).
///
/// Provided: prediction types epsilon and v_prediction (diffusers does not implement
/// "sample" here); timestep_spacing linspace (the default), leading and trailing.
/// Not provided: rescale_betas_zero_snr.
public struct EulerAncestralDiscreteScheduler: Scheduler, SigmaIndexed {
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing
    public let stepsOffset: Int

    public private(set) var timesteps: [Double]
    public private(set) var sigmas: [Float]
    public private(set) var numInferenceSteps: Int?
    public internal(set) var stepIndex: Int?
    public var beginIndex: Int?

    public init(config: SchedulerConfig) throws {
        schedule = try NoiseSchedule(config: config)
        predictionType = try config.prediction(allowed: ["epsilon", "v_prediction"])
        timestepSpacing = try config.spacing(default: .linspace)
        stepsOffset = try config.int("steps_offset", default: 0)
        let train = schedule.numTrainTimesteps
        timesteps = SchedulerMath.npLinspace(0, Double(train - 1), train).reversed()
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
        let ts = SchedulerMath.spacedTimesteps(timestepSpacing, train: train, count: n, offset: timestepSpacing == .leading ? stepsOffset : 0, roundLinspace: false)
            .map { Double(Float($0)) }
        let trainSigmas = schedule.sigmas
        let newSigmas = ts.map { Float(SchedulerMath.npInterp($0, trainSigmas)) } + [0]
        try ScheduleCheck(scheduler: .eulerAncestral, steps: n, fields: ScheduleCheck.spacingFields(train: train, spacing: timestepSpacing, offset: stepsOffset))
            .sigmaSchedule(timesteps: ts, sigmas: newSigmas)
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
        let predOriginal: [Float]
        switch predictionType {
        case .epsilon:
            predOriginal = map2(sample, modelOutput) { s, m in s - sigma * m }
        case .vPrediction:
            let cOut = -sigma / (sigma * sigma + 1).squareRoot(), cSkip = sigma * sigma + 1
            predOriginal = map2(sample, modelOutput) { s, m in m * cOut + s / cSkip }
        case .sample:
            preconditionFailure("prediction_type sample is not implemented for Euler ancestral")
        }
        let sigmaFrom = sigma, sigmaTo = sigmas[i + 1]
        let sigmaUp = (sigmaTo * sigmaTo * (sigmaFrom * sigmaFrom - sigmaTo * sigmaTo) / (sigmaFrom * sigmaFrom)).squareRoot()
        let sigmaDown = (sigmaTo * sigmaTo - sigmaUp * sigmaUp).squareRoot()
        let dt = sigmaDown - sigma
        let derivative = map2(sample, predOriginal) { s, x0 in (s - x0) / sigma }
        var prev = map2(sample, derivative) { s, d in s + d * dt }
        let z = noise.randn(count: prev.count)
        precondition(z.count == prev.count, "the noise source returned \(z.count) values for \(prev.count)")
        prev = map2(prev, z) { p, z in p + z * sigmaUp }
        stepIndex = i + 1
        return prev
    }
}
