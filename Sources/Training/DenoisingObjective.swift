import Diffusion

/// The denoising loss of one training step around the UNet (spec/finetune.md §4–§5), in
/// binary32 with every operation rounded as torch rounds it: the latent sample, diffusers'
/// `DDPMScheduler.add_noise` and `get_velocity`, `F.mse_loss` and its gradient.
public struct DenoisingObjective: Sendable {
    /// What the UNet predicts.
    public enum Target: String, Sendable {
        case epsilon
        case vPrediction = "v_prediction"
    }

    /// `alphas_cumprod` of the base's training schedule (`NoiseSchedule`, bit for bit as
    /// diffusers' `DDPMScheduler` computes it).
    public let alphasCumprod: [Float]
    public let target: Target
    /// The VAE's `scaling_factor`, as binary32.
    public let scalingFactor: Float

    /// From the base's scheduler configuration, prediction type and VAE scaling factor. A
    /// `sample` prediction type or a schedule of 0 or 2^32 or more timesteps is refused.
    public init(schedule: NoiseSchedule, predictionType: PredictionType, scalingFactor: Double) throws(TrainingError) {
        let kind: Target
        switch predictionType {
        case .epsilon: kind = .epsilon
        case .vPrediction: kind = .vPrediction
        case .sample:
            throw .invalidOption(option: "prediction_type", value: "sample",
                                 problem: "training supports the epsilon and v_prediction objectives only")
        }
        guard schedule.alphasCumprod.count >= 1, schedule.alphasCumprod.count < (1 << 32) else {
            throw .invalidOption(option: "num_train_timesteps", value: "\(schedule.alphasCumprod.count)", problem: "must be from 1 to 2^32 − 1")
        }
        guard schedule.alphasCumprod.allSatisfy({ $0.isFinite && $0 >= 0 && $0 <= 1 }) else {
            throw .invalidOption(option: "scheduler", value: "alphas_cumprod", problem: "values must be finite and within [0, 1]")
        }
        let sf = Float(scalingFactor)
        guard scalingFactor.isFinite, sf.isFinite, sf > 0 else {
            throw .invalidOption(option: "scaling_factor", value: "\(scalingFactor)", problem: "must be a finite number greater than 0")
        }
        alphasCumprod = schedule.alphasCumprod
        self.scalingFactor = sf
        target = kind
    }

    /// Number of training timesteps `T` (the draws' `randint` bound).
    public var timesteps: Int { alphasCumprod.count }

    /// `(sqrt(a), sqrt(f32(1 − a)))` for `a = alphas_cumprod[t]`, correctly rounded (torch's
    /// `** 0.5` is 1 ulp off at about a third of the timesteps; the specification uses the
    /// correctly rounded root).
    public func coefficients(timestep t: Int) throws(TrainingError) -> (s1: Float, s2: Float) {
        guard t >= 0, t < alphasCumprod.count else {
            throw .invalidOption(option: "timestep", value: "\(t)", problem: "outside the training schedule 0…\(alphasCumprod.count - 1)")
        }
        let a = alphasCumprod[t]
        return (a.squareRoot(), (1 - a).squareRoot())
    }

    static func check(_ n: Int, _ arrays: [(String, Int)]) throws(TrainingError) {
        for (what, count) in arrays where count != n { throw .shapeMismatch(what: what, expected: n, got: count) }
    }

    /// `x0 = (mean + std · z) · scaling_factor`, each operation rounded.
    public func latentSample(mean: [Float], std: [Float], z: [Float]) throws(TrainingError) -> [Float] {
        try Self.check(mean.count, [("posterior std", std.count), ("latent sample z", z.count)])
        var out = [Float](repeating: 0, count: mean.count)
        let sf = scalingFactor
        for i in 0..<out.count { out[i] = (mean[i] + std[i] * z[i]) * sf }
        return out
    }

    /// `DDPMScheduler.add_noise(x0, ε, t)`: `f32(s1 · x0) + f32(s2 · ε)`.
    public func addNoise(_ x0: [Float], noise: [Float], timestep t: Int) throws(TrainingError) -> [Float] {
        try Self.check(x0.count, [("noise", noise.count)])
        let (s1, s2) = try coefficients(timestep: t)
        var out = [Float](repeating: 0, count: x0.count)
        for i in 0..<out.count { out[i] = s1 * x0[i] + s2 * noise[i] }
        return out
    }

    /// `DDPMScheduler.get_velocity(x0, ε, t)`: `f32(s1 · ε) − f32(s2 · x0)`.
    public func velocity(_ x0: [Float], noise: [Float], timestep t: Int) throws(TrainingError) -> [Float] {
        try Self.check(x0.count, [("noise", noise.count)])
        let (s1, s2) = try coefficients(timestep: t)
        var out = [Float](repeating: 0, count: x0.count)
        for i in 0..<out.count { out[i] = s1 * noise[i] - s2 * x0[i] }
        return out
    }

    /// The regression target: `ε` (epsilon) or the velocity (v_prediction).
    public func target(_ x0: [Float], noise: [Float], timestep t: Int) throws(TrainingError) -> [Float] {
        switch target {
        case .epsilon:
            try Self.check(x0.count, [("noise", noise.count)])
            _ = try coefficients(timestep: t)
            return noise
        case .vPrediction:
            return try velocity(x0, noise: noise, timestep: t)
        }
    }

    /// The UNet input and the target of one step.
    public func prepare(mean: [Float], std: [Float], draws: TrainingRandom.StepDraws) throws(TrainingError) -> (noisy: [Float], target: [Float]) {
        let x0 = try latentSample(mean: mean, std: std, z: draws.z)
        return (try addNoise(x0, noise: draws.noise, timestep: draws.timestep),
                try target(x0, noise: draws.noise, timestep: draws.timestep))
    }

    /// `F.mse_loss(pred, target)` (mean over all elements), as binary32: the squared differences
    /// `f32(f32(pred − target)²)` summed in binary64, divided by N, rounded once. torch sums in
    /// binary32 in its own order; the two agree to a few ulp. A non-finite result throws
    /// `TrainingError.nonFiniteLoss` naming `step`.
    public static func meanSquaredError(_ pred: [Float], _ target: [Float], step: Int) throws(TrainingError) -> Float {
        try check(pred.count, [("target", target.count)])
        guard !pred.isEmpty else { throw .shapeMismatch(what: "prediction", expected: 1, got: 0) }
        var sum = 0.0
        for i in 0..<pred.count {
            let d = pred[i] - target[i]
            sum += Double(d * d)
        }
        let loss = Float(sum / Double(pred.count))
        guard loss.isFinite else { throw .nonFiniteLoss(step: step, value: loss) }
        return loss
    }

    /// `∂ mse / ∂ pred` for an upstream gradient of 1, as torch's `mse_loss_backward`:
    /// `f32(f32(pred − target) · f32(2 / N))`.
    public static func meanSquaredErrorGradient(_ pred: [Float], _ target: [Float]) throws(TrainingError) -> [Float] {
        try check(pred.count, [("target", target.count)])
        guard !pred.isEmpty else { return [] }
        let norm = Float(2.0 / Double(pred.count))
        var out = [Float](repeating: 0, count: pred.count)
        for i in 0..<out.count { out[i] = (pred[i] - target[i]) * norm }
        return out
    }
}
