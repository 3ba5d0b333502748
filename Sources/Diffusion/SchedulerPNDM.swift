/// diffusers' `PNDMScheduler` with skip_prk_steps (as Stable Diffusion's config sets it): the
/// linear multistep (PLMS) steps only.
///
/// The schedule has one more model evaluation than `numInferenceSteps`: the second timestep
/// is repeated, and the second step re-does the first one from the same sample with the
/// average of the two model outputs (a second-order start).
///
/// Provided: prediction types epsilon and v_prediction; timestep_spacing leading (default),
/// linspace, trailing. Not provided: the Runge-Kutta (PRK) warm-up (skip_prk_steps false).
public struct PNDMScheduler: Scheduler {
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let timestepSpacing: TimestepSpacing
    public let stepsOffset: Int
    public let finalAlphaCumprod: Float

    public private(set) var timesteps: [Double] = []
    public private(set) var numInferenceSteps: Int?
    public var initNoiseSigma: Float { 1 }

    private var ets: [[Float]] = []
    private var counter = 0
    private var curSample: [Float]?

    public init(config: SchedulerConfig) throws {
        schedule = try NoiseSchedule(config: config)
        guard try config.bool("skip_prk_steps", default: false) else {
            throw SchedulerError("PNDM without skip_prk_steps (the PRK warm-up) is not supported")
        }
        predictionType = try config.prediction(allowed: ["epsilon", "v_prediction"])
        timestepSpacing = try config.spacing(default: .leading)
        stepsOffset = try config.int("steps_offset", default: 0)
        finalAlphaCumprod = try config.bool("set_alpha_to_one", default: false) ? 1 : schedule.alphasCumprod[0]
    }

    public mutating func setTimesteps(_ n: Int) throws {
        let train = schedule.numTrainTimesteps
        try ScheduleCheck.stepCount(n, train: train)
        // Ascending, then plms = [t0 ... t(n-2), t(n-2), t(n-1)] reversed.
        let ascending = Array(SchedulerMath.spacedTimesteps(timestepSpacing, train: train, count: n, offset: timestepSpacing == .leading ? stepsOffset : 0).reversed())
        var plms = Array(ascending.dropLast())
        if ascending.count >= 2 { plms.append(ascending[ascending.count - 2]) }
        plms.append(ascending[ascending.count - 1])
        try schedule.checkInRange(plms, ScheduleCheck(scheduler: .pndm, steps: n, fields: ScheduleCheck.spacingFields(train: train, spacing: timestepSpacing, offset: stepsOffset)))
        numInferenceSteps = n
        timesteps = plms.reversed()
        ets = []
        counter = 0
        curSample = nil
    }

    public mutating func scaleModelInput(_ sample: [Float], timestep: Double) -> [Float] { sample }

    public mutating func step<N: NoiseSource>(modelOutput: [Float], timestep: Double, sample: [Float], noise: inout N) -> [Float] {
        guard let n = numInferenceSteps else { preconditionFailure("call setTimesteps before step") }
        let stride = schedule.numTrainTimesteps / n
        var t = Int(timestep)
        var prevT = t - stride
        if counter != 1 {
            ets = Array(ets.suffix(3))
            ets.append(modelOutput)
        } else {
            prevT = t
            t += stride
        }
        var output = modelOutput
        var x = sample
        if ets.count == 1 && counter == 0 {
            curSample = sample
        } else if ets.count == 1 && counter == 1 {
            output = map2(modelOutput, ets[0]) { m, e in (m + e) / 2 }
            x = curSample!
            curSample = nil
        } else if ets.count == 2 {
            output = map2(ets[1], ets[0]) { e1, e2 in (3 * e1 - e2) / 2 }
        } else if ets.count == 3 {
            let (e1, e2, e3) = (ets[2], ets[1], ets[0])
            output = (0..<e1.count).map { i in (23 * e1[i] - 16 * e2[i] + 5 * e3[i]) / 12 }
        } else {
            let (e1, e2, e3, e4) = (ets[3], ets[2], ets[1], ets[0])
            let c: Float = Float(1.0 / 24.0)
            output = (0..<e1.count).map { i in c * (55 * e1[i] - 59 * e2[i] + 37 * e3[i] - 9 * e4[i]) }
        }
        let prev = previousSample(x, t: t, prevT: prevT, modelOutput: output)
        counter += 1
        return prev
    }

    func previousSample(_ sample: [Float], t: Int, prevT: Int, modelOutput: [Float]) -> [Float] {
        let alphaProdT = schedule.alphaCumprod(at: t)
        let alphaProdTPrev = prevT >= 0 ? schedule.alphaCumprod(at: prevT) : finalAlphaCumprod
        let betaProdT = 1 - alphaProdT
        let betaProdTPrev = 1 - alphaProdTPrev
        var output = modelOutput
        if predictionType == .vPrediction {
            let sa = alphaProdT.squareRoot(), sb = betaProdT.squareRoot()
            output = map2(modelOutput, sample) { m, s in sa * m + sb * s }
        }
        let sampleCoeff = (alphaProdTPrev / alphaProdT).squareRoot()
        let denom = alphaProdT * betaProdTPrev.squareRoot() + (alphaProdT * betaProdT * alphaProdTPrev).squareRoot()
        let diff = alphaProdTPrev - alphaProdT
        return map2(sample, output) { s, m in sampleCoeff * s - diff * m / denom }
    }
}
