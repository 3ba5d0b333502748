import Foundation

/// diffusers' `DPMSolverMultistepScheduler` with algorithm_type "dpmsolver++": DPM-Solver++
/// multistep; with the default solver_order 2 this is "DPM++ 2M" (and "DPM++ 2M Karras" with
/// use_karras_sigmas).
///
/// Provided: solver_order 1, 2, 3; solver_type midpoint (default) and heun; prediction types
/// epsilon, v_prediction, sample; lower_order_final, euler_at_final, final_sigmas_type zero or
/// sigma_min; use_karras_sigmas; timestep_spacing linspace (default), leading, trailing;
/// lambda_min_clipped.
/// Not provided: the dpmsolver / SDE algorithm types, thresholding, learned variance,
/// exponential / beta / lu-lambda / flow sigmas, rescale_betas_zero_snr.
///
/// Like every scheduler here, it agrees with diffusers to float32 rounding rather than bit for bit
/// (see SchedulerMath on torch's sqrt, log and exp).
public struct DPMSolverMultistepScheduler: Scheduler {
    public enum SolverType: String, Sendable { case midpoint, heun }

    public let schedule: NoiseSchedule
    public let solverOrder: Int
    public let predictionType: PredictionType
    public let solverType: SolverType
    public let lowerOrderFinal: Bool
    public let eulerAtFinal: Bool
    public let useKarrasSigmas: Bool
    public let finalSigmaIsMin: Bool
    public let timestepSpacing: TimestepSpacing
    public let stepsOffset: Int
    public let lambdaMinClipped: Double
    let cosineSchedule: Bool

    public private(set) var timesteps: [Double]
    public private(set) var sigmas: [Float]
    public private(set) var numInferenceSteps: Int?
    public private(set) var stepIndex: Int?
    public var beginIndex: Int?
    /// The converted (x0) model outputs of the last `solverOrder` steps, oldest first.
    private var modelOutputs: [[Float]?]
    private var lowerOrderNums = 0

    public var initNoiseSigma: Float { 1 }

    public init(config: SchedulerConfig) throws {
        schedule = try NoiseSchedule(config: config)
        solverOrder = try config.int("solver_order", default: 2)
        guard (1...3).contains(solverOrder) else { throw SchedulerError("unsupported solver_order \(solverOrder)") }
        predictionType = try config.prediction()
        let algorithm = try config.string("algorithm_type", default: "dpmsolver++")
        // diffusers maps the legacy "deis" to dpmsolver++.
        guard algorithm == "dpmsolver++" || algorithm == "deis" else { throw SchedulerError("unsupported algorithm_type '\(algorithm)'") }
        switch try config.string("solver_type", default: "midpoint") {
        case "midpoint", "logrho", "bh1", "bh2": solverType = .midpoint  // diffusers maps the UniPC/DEIS names to midpoint
        case "heun": solverType = .heun
        case let other: throw SchedulerError("unsupported solver_type '\(other)'")
        }
        lowerOrderFinal = try config.bool("lower_order_final", default: true)
        eulerAtFinal = try config.bool("euler_at_final", default: false)
        useKarrasSigmas = try config.bool("use_karras_sigmas", default: false)
        try config.requireOff("thresholding", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting")
        if let v = try? config.string("variance_type", default: ""), !v.isEmpty { throw SchedulerError("unsupported variance_type '\(v)'") }
        switch try config.string("final_sigmas_type", default: "zero") {
        case "zero": finalSigmaIsMin = false
        case "sigma_min": finalSigmaIsMin = true
        case let other: throw SchedulerError("unsupported final_sigmas_type '\(other)'")
        }
        timestepSpacing = try config.spacing(default: .linspace)
        stepsOffset = try config.int("steps_offset", default: 0)
        lambdaMinClipped = try config.double("lambda_min_clipped") ?? -Double.infinity
        cosineSchedule = try config.string("beta_schedule", default: "linear") == "squaredcos_cap_v2" && config.value("trained_betas") == nil
        let train = schedule.numTrainTimesteps
        timesteps = SchedulerMath.npLinspace(0, Double(train - 1), train).reversed().map { Double(Float($0)) }
        sigmas = schedule.sigmas
        modelOutputs = Array(repeating: nil, count: solverOrder)
    }

    public mutating func setTimesteps(_ n: Int) throws {
        let train = schedule.numTrainTimesteps
        try ScheduleCheck.stepCount(n, train: train)
        // lambda_t = log(alpha_t) - log(sigma_t), float32; clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped).
        var clippedIdx = 0
        if lambdaMinClipped > -Double.infinity {
            let lambdas = schedule.alphasCumprod.map { a in
                SchedulerMath.logf32(a.squareRoot()) - SchedulerMath.logf32((1 - a).squareRoot())
            }
            clippedIdx = lambdas.reversed().prefix { Double($0) < lambdaMinClipped }.count
        }
        let lastTimestep = train - clippedIdx
        var ts: [Double]
        switch timestepSpacing {
        case .linspace:
            ts = Array(SchedulerMath.npLinspace(0, Double(lastTimestep - 1), n + 1).map(SchedulerMath.npRound).reversed().dropLast())
        case .leading:
            let ratio = lastTimestep / (n + 1)
            ts = (1...n).reversed().map { Double($0 * ratio + stepsOffset) }
        case .trailing:
            ts = SchedulerMath.npArange(Double(lastTimestep), 0, -(Double(train) / Double(n))).map { SchedulerMath.npRound($0) - 1 }
        }
        let trainSigmas = schedule.sigmas
        var s: [Double]
        if useKarrasSigmas {
            let logSigmas = trainSigmas.map(SchedulerMath.logf32)
            s = SchedulerMath.karrasSigmas(sigmaMin: Double(trainSigmas[0]), sigmaMax: Double(trainSigmas[trainSigmas.count - 1]), count: n)
            ts = s.map { sigma in
                let t = SchedulerMath.sigmaToT(sigma, logSigmas: logSigmas)
                return cosineSchedule ? t : SchedulerMath.npRound(t)
            }
        } else {
            s = ts.map { SchedulerMath.npInterp($0, trainSigmas) }
        }
        let a0 = schedule.alphasCumprod[0]
        let last: Float = finalSigmaIsMin ? ((1 - a0) / a0).squareRoot() : 0
        let newSigmas = s.map { Float($0) } + [last]
        let newTimesteps = ts.map { $0.rounded(.towardZero) }  // .to(int64)
        var fields = ScheduleCheck.spacingFields(train: train, spacing: timestepSpacing, offset: stepsOffset)
        if lambdaMinClipped > -Double.infinity {
            fields.append("lambda_min_clipped \(ScheduleCheck.show(lambdaMinClipped)), which leaves \(lastTimestep) of the \(train) training timesteps")
        }
        if useKarrasSigmas { fields.append("use_karras_sigmas true") }
        // A schedule shorter than `n` (trailing spacing with lambda_min_clipped) is diffusers' too.
        try ScheduleCheck(scheduler: .dpmSolverMultistep, steps: n, fields: fields)
            .sigmaSchedule(timesteps: newTimesteps, sigmas: newSigmas) { sigma in
                let (alpha, s) = Self.alphaSigma(sigma)
                return Self.lambda(alpha, s)
            }
        sigmas = newSigmas
        timesteps = newTimesteps
        numInferenceSteps = timesteps.count
        modelOutputs = Array(repeating: nil, count: solverOrder)
        lowerOrderNums = 0
        stepIndex = nil
        beginIndex = nil
    }

    public mutating func scaleModelInput(_ sample: [Float], timestep: Double) -> [Float] { sample }

    mutating func initStepIndex(_ timestep: Double) {
        if let b = beginIndex { stepIndex = b; return }
        stepIndex = indexForTimestep(timestep, in: timesteps) ?? timesteps.count - 1
    }

    /// (alpha_t, sigma_t) of the VP process at VE sigma `sigma`, float32.
    static func alphaSigma(_ sigma: Float) -> (Float, Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    static func lambda(_ alpha: Float, _ sigma: Float) -> Float {
        SchedulerMath.logf32(alpha) - SchedulerMath.logf32(sigma)
    }

    static func expf32(_ x: Float) -> Float { Float(exp(Double(x))) }

    public mutating func step<N: NoiseSource>(modelOutput: [Float], timestep: Double, sample: [Float], noise: inout N) -> [Float] {
        guard numInferenceSteps != nil else { preconditionFailure("call setTimesteps before step") }
        if stepIndex == nil { initStepIndex(timestep) }
        let i = stepIndex!
        precondition(i + 1 < sigmas.count, "step past the end of the schedule")
        let count = timesteps.count
        let lowerFinal = i == count - 1 && (eulerAtFinal || (lowerOrderFinal && count < 15) || !finalSigmaIsMin)
        let lowerSecond = i == count - 2 && lowerOrderFinal && count < 15

        let x0 = convert(modelOutput, sample: sample, sigma: sigmas[i])
        for k in 0..<(solverOrder - 1) { modelOutputs[k] = modelOutputs[k + 1] }
        modelOutputs[solverOrder - 1] = x0

        let prev: [Float]
        if solverOrder == 1 || lowerOrderNums < 1 || lowerFinal {
            prev = firstOrder(x0, sample: sample, i: i)
        } else if solverOrder == 2 || lowerOrderNums < 2 || lowerSecond {
            prev = secondOrder(sample: sample, i: i)
        } else {
            prev = thirdOrder(sample: sample, i: i)
        }
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
        stepIndex = i + 1
        return prev
    }

    /// The data (x0) prediction of the model output.
    func convert(_ modelOutput: [Float], sample: [Float], sigma: Float) -> [Float] {
        let (alphaT, sigmaT) = Self.alphaSigma(sigma)
        switch predictionType {
        case .epsilon: return map2(sample, modelOutput) { s, m in (s - sigmaT * m) / alphaT }
        case .sample: return modelOutput
        case .vPrediction: return map2(sample, modelOutput) { s, m in alphaT * s - sigmaT * m }
        }
    }

    func firstOrder(_ x0: [Float], sample: [Float], i: Int) -> [Float] {
        let (alphaT, sigmaT) = Self.alphaSigma(sigmas[i + 1])
        let (alphaS, sigmaS) = Self.alphaSigma(sigmas[i])
        let h = Self.lambda(alphaT, sigmaT) - Self.lambda(alphaS, sigmaS)
        let a = sigmaT / sigmaS, b = alphaT * (Self.expf32(-h) - 1)
        return map2(sample, x0) { s, m in a * s - b * m }
    }

    func secondOrder(sample: [Float], i: Int) -> [Float] {
        let (alphaT, sigmaT) = Self.alphaSigma(sigmas[i + 1])
        let (alphaS0, sigmaS0) = Self.alphaSigma(sigmas[i])
        let (alphaS1, sigmaS1) = Self.alphaSigma(sigmas[i - 1])
        let lambdaT = Self.lambda(alphaT, sigmaT), lambdaS0 = Self.lambda(alphaS0, sigmaS0), lambdaS1 = Self.lambda(alphaS1, sigmaS1)
        let m0 = modelOutputs[solverOrder - 1]!, m1 = modelOutputs[solverOrder - 2]!
        let h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1
        let r0 = h0 / h
        let invR0 = 1 / r0
        let d1 = map2(m0, m1) { a, b in invR0 * (a - b) }
        let a = sigmaT / sigmaS0, e = Self.expf32(-h) - 1
        let b = alphaT * e
        let base = map2(sample, m0) { s, d0 in a * s - b * d0 }
        switch solverType {
        case .midpoint:
            let c = 0.5 * (alphaT * e)
            return map2(base, d1) { x, d in x - c * d }
        case .heun:
            let c = alphaT * (e / h + 1)
            return map2(base, d1) { x, d in x + c * d }
        }
    }

    func thirdOrder(sample: [Float], i: Int) -> [Float] {
        let (alphaT, sigmaT) = Self.alphaSigma(sigmas[i + 1])
        let (alphaS0, sigmaS0) = Self.alphaSigma(sigmas[i])
        let (alphaS1, sigmaS1) = Self.alphaSigma(sigmas[i - 1])
        let (alphaS2, sigmaS2) = Self.alphaSigma(sigmas[i - 2])
        let lambdaT = Self.lambda(alphaT, sigmaT), lambdaS0 = Self.lambda(alphaS0, sigmaS0)
        let lambdaS1 = Self.lambda(alphaS1, sigmaS1), lambdaS2 = Self.lambda(alphaS2, sigmaS2)
        let m0 = modelOutputs[solverOrder - 1]!, m1 = modelOutputs[solverOrder - 2]!, m2 = modelOutputs[solverOrder - 3]!
        let h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1, h1 = lambdaS1 - lambdaS2
        let r0 = h0 / h, r1 = h1 / h
        let invR0 = 1 / r0, invR1 = 1 / r1
        let d10 = map2(m0, m1) { a, b in invR0 * (a - b) }
        let d11 = map2(m1, m2) { a, b in invR1 * (a - b) }
        let k1 = r0 / (r0 + r1), k2 = 1 / (r0 + r1)
        let d1 = map2(d10, d11) { a, b in a + k1 * (a - b) }
        let d2 = map2(d10, d11) { a, b in k2 * (a - b) }
        let a = sigmaT / sigmaS0, e = Self.expf32(-h) - 1
        let b = alphaT * e
        let c1 = alphaT * (e / h + 1)
        let c2 = alphaT * ((e + h) / (h * h) - 0.5)
        let base = map2(sample, m0) { s, d0 in a * s - b * d0 }
        let withD1 = map2(base, d1) { x, d in x + c1 * d }
        return map2(withD1, d2) { x, d in x - c2 * d }
    }
}
