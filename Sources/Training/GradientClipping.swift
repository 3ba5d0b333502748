/// `torch.nn.utils.clip_grad_norm_(trained, max_norm)` (spec/finetune.md §8).
///
/// The per-tensor norms and the total norm (the norm of the per-tensor norms) are binary32
/// values; the specification leaves the summation order free, and torch's own reduction order is
/// not a simple function of the size. Here each norm is the correctly rounded square root of a
/// binary64 sum of the (exact) binary64 squares, rounded to binary32: within an ulp or so of
/// torch's result, and it cannot overflow where torch's binary32 sum of squares does (elements
/// above about 1.8e19). The coefficient is `c = min(1, f32(f32(1 / f32(total + f32(1e-6))) ·
/// f32(max_norm)))` and every gradient is multiplied by it, also when it is 1.
public enum GradientClipping {
    /// The outcome of one clipping.
    public struct Result: Sendable, Equatable {
        /// The total norm before clipping (what `clip_grad_norm_` returns).
        public var totalNorm: Float
        /// The factor every gradient was multiplied by.
        public var coefficient: Float
    }

    /// The 2-norm of one tensor, rounded to binary32 (infinity when it exceeds the binary32
    /// range; NaN when an element is NaN).
    public static func norm(_ x: [Float]) -> Float {
        x.withUnsafeBufferPointer { norm($0) }
    }

    public static func norm(_ x: UnsafeBufferPointer<Float>) -> Float {
        var sum = 0.0
        for v in x {
            let d = Double(v)
            sum += d * d
        }
        return Float(sum.squareRoot())
    }

    /// The norm of the per-tensor norms.
    public static func totalNorm(_ gradients: [[Float]]) -> Float {
        norm(gradients.map { norm($0) })
    }

    /// The clipping factor for a total norm.
    public static func coefficient(totalNorm: Float, maxNorm: Double) -> Float {
        let denominator = totalNorm + Float(1e-6)
        let c = (1 / denominator) * Float(maxNorm)
        return c < 1 ? c : (c.isNaN ? c : 1)
    }

    /// Clips the gradients of step `step` in place. A gradient with a value that is not finite,
    /// or a total norm that is not finite (its binary32 sum of squares overflowed), stops the run
    /// with `TrainingError.nonFiniteGradient` naming the step and the tensor (`names[i]`, or its
    /// index when no name is given); the gradients are then left as they were.
    @discardableResult
    public static func clip(_ gradients: inout [[Float]], maxNorm: Double, step: Int, names: [String] = []) throws(TrainingError) -> Result {
        func name(_ i: Int) -> String { i < names.count ? names[i] : "trained tensor \(i)" }
        var norms = [Float](repeating: 0, count: gradients.count)
        for i in gradients.indices {
            let n = norm(gradients[i])
            guard n.isFinite, gradients[i].allSatisfy({ $0.isFinite }) else { throw .nonFiniteGradient(step: step, tensor: name(i)) }
            norms[i] = n
        }
        let total = norm(norms)
        guard total.isFinite else { throw .nonFiniteGradient(step: step, tensor: "all trained tensors (total norm)") }
        let c = coefficient(totalNorm: total, maxNorm: maxNorm)
        for i in gradients.indices {
            gradients[i].withUnsafeMutableBufferPointer { g in
                for j in 0..<g.count { g[j] = g[j] * c }
            }
        }
        return Result(totalNorm: total, coefficient: c)
    }
}
