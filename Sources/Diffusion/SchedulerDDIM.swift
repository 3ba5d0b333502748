/// diffusers' `DDIMScheduler`.
///
/// Defaults are DDIM's own (clip_sample true, set_alpha_to_one true, timestep_spacing
/// "leading"); Stable Diffusion configs turn clipping off. `eta` (0 by default, deterministic
/// DDIM) is the step argument of the same name; with `eta > 0` each step draws noise.
/// Not provided: thresholding, rescale_betas_zero_snr, use_clipped_model_output.
public struct DDIMScheduler: Scheduler {
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing
    public let stepsOffset: Int
    public let clipSample: Bool
    public let clipSampleRange: Float
    /// The alpha product used past the end of the schedule (1, or alphas_cumprod[0]).
    public let finalAlphaCumprod: Float
    public var eta: Float = 0

    public private(set) var timesteps: [Double]
    public private(set) var numInferenceSteps: Int?
    public var initNoiseSigma: Float { 1 }

    public init(config: SchedulerConfig) throws {
        schedule = try NoiseSchedule(config: config)
        predictionType = try config.prediction()
        timestepSpacing = try config.spacing(default: .leading)
        stepsOffset = try config.int("steps_offset", default: 0)
        clipSample = try config.bool("clip_sample", default: true)
        clipSampleRange = Float(try config.double("clip_sample_range", default: 1))
        finalAlphaCumprod = try config.bool("set_alpha_to_one", default: true) ? 1 : schedule.alphasCumprod[0]
        try config.requireOff("thresholding")
        timesteps = (0..<schedule.numTrainTimesteps).reversed().map(Double.init)
    }

    public mutating func setTimesteps(_ n: Int) throws {
        let train = schedule.numTrainTimesteps
        try ScheduleCheck.stepCount(n, train: train)
        let ts = SchedulerMath.spacedTimesteps(timestepSpacing, train: train, count: n, offset: timestepSpacing == .leading ? stepsOffset : 0)
        try schedule.checkInRange(ts, ScheduleCheck(scheduler: .ddim, steps: n, fields: ScheduleCheck.spacingFields(train: train, spacing: timestepSpacing, offset: stepsOffset)))
        numInferenceSteps = n
        timesteps = ts
    }

    public mutating func scaleModelInput(_ sample: [Float], timestep: Double) -> [Float] { sample }

    public mutating func step<N: NoiseSource>(modelOutput: [Float], timestep: Double, sample: [Float], noise: inout N) -> [Float] {
        guard let n = numInferenceSteps else { preconditionFailure("call setTimesteps before step") }
        // The previous timestep is always `timestep - train // n`, whatever the spacing.
        let t = Int(timestep)
        let prevT = t - schedule.numTrainTimesteps / n
        let alphaProdT = schedule.alphaCumprod(at: t)
        let alphaProdTPrev = prevT >= 0 ? schedule.alphaCumprod(at: prevT) : finalAlphaCumprod
        let betaProdT = 1 - alphaProdT
        let sqrtAlpha = alphaProdT.squareRoot(), sqrtBeta = betaProdT.squareRoot()

        var predOriginal: [Float], predEpsilon: [Float]
        switch predictionType {
        case .epsilon:
            predOriginal = map2(sample, modelOutput) { s, m in (s - sqrtBeta * m) / sqrtAlpha }
            predEpsilon = modelOutput
        case .sample:
            predOriginal = modelOutput
            predEpsilon = map2(sample, modelOutput) { s, m in (s - sqrtAlpha * m) / sqrtBeta }
        case .vPrediction:
            predOriginal = map2(sample, modelOutput) { s, m in sqrtAlpha * s - sqrtBeta * m }
            predEpsilon = map2(sample, modelOutput) { s, m in sqrtAlpha * m + sqrtBeta * s }
        }
        if clipSample {
            let r = clipSampleRange
            predOriginal = map1(predOriginal) { Swift.min(Swift.max($0, -r), r) }
        }

        let betaProdTPrev = 1 - alphaProdTPrev
        let variance = (betaProdTPrev / betaProdT) * (1 - alphaProdT / alphaProdTPrev)
        let stdDev = eta * variance.squareRoot()
        let directionCoeff = (1 - alphaProdTPrev - stdDev * stdDev).squareRoot()
        let sqrtAlphaPrev = alphaProdTPrev.squareRoot()
        var prev = map2(predOriginal, predEpsilon) { x0, e in sqrtAlphaPrev * x0 + directionCoeff * e }
        if eta > 0 {
            let z = noise.randn(count: prev.count)
            prev = map2(prev, z) { p, z in p + stdDev * z }
        }
        return prev
    }
}
