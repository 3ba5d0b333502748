/// diffusers' `Attention` (and CLIP's self-attention): `to_out(attention(to_q(x), to_k(c),
/// to_v(c)))` with `c` the context (cross-attention) or `x` itself (self-attention), `heads`
/// heads of `to_q.out / heads` features, optionally causal. The four projections are `Linear`s
/// and can carry delta terms.
public struct Attention: Sendable {
    public var toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    public let heads: Int
    public let causal: Bool

    public init(toQ: Linear, toK: Linear, toV: Linear, toOut: Linear, heads: Int, causal: Bool = false) throws(ComputeError) {
        let inner = toQ.outFeatures
        guard toK.outFeatures == inner, toV.outFeatures == inner, toOut.inFeatures == inner else {
            throw ComputeError("attention: projections to \(toQ.outFeatures), \(toK.outFeatures), \(toV.outFeatures) features and an output from \(toOut.inFeatures)")
        }
        guard toK.inFeatures == toV.inFeatures else { throw ComputeError("attention: keys from \(toK.inFeatures) and values from \(toV.inFeatures) features") }
        guard heads > 0, inner % heads == 0 else { throw ComputeError("attention: \(inner) features are not divisible into \(heads) heads") }
        self.toQ = toQ; self.toK = toK; self.toV = toV; self.toOut = toOut; self.heads = heads; self.causal = causal
    }

    public var headDim: Int { toQ.outFeatures / heads }

    /// `x` `[lq × query features]`; `context` `[lk × context features]` or nil for self-attention.
    public func forward(_ x: Matrix, context: Matrix? = nil) throws(ComputeError) -> Matrix {
        try forwardKeeping(x, context: context).output
    }

    /// The forward and the attention's result before `to_out` (what `to_out`'s factor gradients
    /// need in the backward; nil when `to_out` has no trainable term).
    func forwardKeeping(_ x: Matrix, context: Matrix? = nil) throws(ComputeError) -> (output: Matrix, attended: Matrix?) {
        let c = context ?? x
        let o = try ScaledDotProductAttention.forward(q: try toQ.forward(x), k: try toK.forward(c), v: try toV.forward(c), heads: heads, causal: causal)
        return (try toOut.forward(o), toOut.hasTrainableTerms ? o : nil)
    }

    /// `∂loss/∂x` and (for cross-attention, when `contextGradient`) `∂loss/∂context`; the
    /// projections' delta terms accumulate their gradients. Recomputes the forward from `x` and
    /// `context`.
    public func backward(gradOutput gy: Matrix, input x: Matrix, context: Matrix? = nil,
                         contextGradient: Bool = true) throws(ComputeError) -> (input: Matrix, context: Matrix?) {
        try backward(gradOutput: gy, input: x, context: context, contextGradient: contextGradient, attended: nil)
    }

    /// The same, with `attended` the forward's result before `to_out` when the forward kept it
    /// (`forwardKeeping`): then the backward does not recompute it from the probabilities.
    func backward(gradOutput gy: Matrix, input x: Matrix, context: Matrix?, contextGradient: Bool,
                  attended: Matrix?) throws(ComputeError) -> (input: Matrix, context: Matrix?) {
        let c = context ?? x
        let q = try toQ.forward(x), k = try toK.forward(c), v = try toV.forward(c)
        // to_out's input gradient does not need its input; its terms' factor gradients do, and
        // the attention output comes out of the backward's recomputed probabilities.
        let go = try toOut.inputGradient(gradOutput: gy)
        let kept = toOut.hasTrainableTerms ? attended : nil
        let (dq, dk, dv, o) = try ScaledDotProductAttention.backward(gradOutput: go, q: q, k: k, v: v, heads: heads, causal: causal,
                                                                     output: toOut.hasTrainableTerms && kept == nil)
        if let o = kept ?? o { try toOut.accumulateGradients(gradOutput: gy, input: o) }
        var gx = try toQ.backward(gradOutput: dq, input: x)
        if context == nil {
            try gx.add(try toK.backward(gradOutput: dk, input: x))
            try gx.add(try toV.backward(gradOutput: dv, input: x))
            return (gx, nil)
        }
        guard contextGradient else {
            try toK.accumulateGradients(gradOutput: dk, input: c)
            try toV.accumulateGradients(gradOutput: dv, input: c)
            return (gx, nil)
        }
        var gc = try toK.backward(gradOutput: dk, input: c)
        try gc.add(try toV.backward(gradOutput: dv, input: c))
        return (gx, gc)
    }
}
