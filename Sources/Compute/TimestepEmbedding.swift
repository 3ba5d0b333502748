import Foundation

/// diffusers' timestep path: `Timesteps` (sinusoidal features, no parameters) then
/// `TimestepEmbedding`: `linear_2(SiLU(linear_1(features)))`.
public struct TimestepEmbedding: Sendable {
    public var linear1: Linear, linear2: Linear
    public let flipSinToCos: Bool
    public let freqShift: Float

    public init(linear1: Linear, linear2: Linear, flipSinToCos: Bool = true, freqShift: Float = 0) throws(ComputeError) {
        guard linear1.outFeatures == linear2.inFeatures else {
            throw ComputeError("timestep embedding: linear_1 gives \(linear1.outFeatures) features, linear_2 takes \(linear2.inFeatures)")
        }
        guard linear1.inFeatures % 2 == 0 else { throw ComputeError("timestep embedding: \(linear1.inFeatures) sinusoidal channels, expected an even number") }
        guard freqShift.isFinite, Float(linear1.inFeatures / 2) != freqShift else { throw ComputeError("timestep embedding: frequency shift \(freqShift)") }
        self.linear1 = linear1; self.linear2 = linear2; self.flipSinToCos = flipSinToCos; self.freqShift = freqShift
    }

    /// `get_timestep_embedding`: `e_i = exp(−ln(10000) · i / (half − shift))` for `i < half`,
    /// `[sin(t·e), cos(t·e)]` (`[cos, sin]` when flipped), in binary32 as diffusers computes it.
    public static func sinusoidal(_ timesteps: [Float], channels dim: Int, flipSinToCos: Bool, freqShift: Float) throws(ComputeError) -> Matrix {
        guard dim > 0, dim % 2 == 0 else { throw ComputeError("timestep features: \(dim) channels, expected a positive even number") }
        let half = dim / 2
        var out = try Matrix(zeros: timesteps.count, cols: dim)
        let logPeriod = Float(-Foundation.log(10000.0))
        let freqs = (0..<half).map { i in Foundation.exp(logPeriod * Float(i) / (Float(half) - freqShift)) }
        for (r, t) in timesteps.enumerated() {
            for i in 0..<half {
                let arg = t * freqs[i]
                let s = Foundation.sin(arg), c = Foundation.cos(arg)
                out.data[r * dim + i] = flipSinToCos ? c : s
                out.data[r * dim + half + i] = flipSinToCos ? s : c
            }
        }
        return out
    }

    public func features(_ timesteps: [Float]) throws(ComputeError) -> Matrix {
        try Self.sinusoidal(timesteps, channels: linear1.inFeatures, flipSinToCos: flipSinToCos, freqShift: freqShift)
    }

    /// `linear_2(SiLU(linear_1(x)))` for sinusoidal features `x`.
    public func forward(_ x: Matrix) throws(ComputeError) -> Matrix {
        try linear2.forward(Activation.silu.forward(try linear1.forward(x)))
    }

    /// `∂loss/∂x` (the gradient at the sinusoidal features), and the delta terms' gradients.
    public func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        let h = try linear1.forward(x)
        let g = try linear2.backward(gradOutput: gy, input: Activation.silu.forward(h))
        return try linear1.backward(gradOutput: try Activation.silu.backward(gradOutput: g, input: h), input: x)
    }
}
