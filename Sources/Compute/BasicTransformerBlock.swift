/// diffusers' `BasicTransformerBlock` as SD uses it (layer norms, self-attention, cross-attention
/// to the text, GEGLU feed-forward, each added to the residual stream).
public struct BasicTransformerBlock: Sendable {
    public var norm1: LayerNorm, attn1: Attention, norm2: LayerNorm, attn2: Attention, norm3: LayerNorm
    public var ff: GEGLU, ffOut: Linear

    public init(norm1: LayerNorm, attn1: Attention, norm2: LayerNorm, attn2: Attention, norm3: LayerNorm, ff: GEGLU, ffOut: Linear) throws(ComputeError) {
        let c = norm1.channels
        guard attn1.toQ.inFeatures == c, attn1.toK.inFeatures == c, attn1.toOut.outFeatures == c, norm2.channels == c,
              attn2.toQ.inFeatures == c, attn2.toOut.outFeatures == c, norm3.channels == c, ff.proj.inFeatures == c,
              ffOut.inFeatures == ff.inner, ffOut.outFeatures == c else {
            throw ComputeError("transformer block: sizes do not chain (\(c) channels)")
        }
        self.norm1 = norm1; self.attn1 = attn1; self.norm2 = norm2; self.attn2 = attn2; self.norm3 = norm3; self.ff = ff; self.ffOut = ffOut
    }

    /// The residual stream after the self- and the cross-attention (the inputs of norm2 and norm3).
    private func attentions(_ x: Matrix, context: Matrix) throws(ComputeError) -> (h1: Matrix, h2: Matrix) {
        var h1 = x
        try h1.add(try attn1.forward(try norm1.forward(x)))
        var h2 = h1
        try h2.add(try attn2.forward(try norm2.forward(h1), context: context))
        return (h1, h2)
    }

    /// What a training forward keeps of a block for its backward: the residual stream after each
    /// attention and each attention's result before `to_out` (nil when `to_out` does not train),
    /// so the backward recomputes neither attention's forward.
    struct Saved: Sendable {
        var h1: Matrix, h2: Matrix, attended1: Matrix?, attended2: Matrix?
    }

    /// The forward, keeping what the backward needs (`Saved`).
    func forwardKeeping(_ x: Matrix, context: Matrix) throws(ComputeError) -> (output: Matrix, saved: Saved) {
        var h = x
        let a1 = try attn1.forwardKeeping(try norm1.forward(x))
        try h.add(a1.output)
        let h1 = h
        let a2 = try attn2.forwardKeeping(try norm2.forward(h), context: context)
        try h.add(a2.output)
        let h2 = h
        try ff.forward(try norm3.forward(h), through: ffOut, addingTo: &h)
        return (h, Saved(h1: h1, h2: h2, attended1: a1.attended, attended2: a2.attended))
    }

    /// `x` `[tokens × channels]`, `context` `[text tokens × context channels]`.
    public func forward(_ x: Matrix, context: Matrix) throws(ComputeError) -> Matrix {
        // One residual stream updated in place (the backward keeps both intermediate states).
        var h = x
        try h.add(try attn1.forward(try norm1.forward(x)))
        try h.add(try attn2.forward(try norm2.forward(h), context: context))
        try ff.forward(try norm3.forward(h), through: ffOut, addingTo: &h)
        return h
    }

    /// `∂loss/∂x` and, when `contextGradient`, `∂loss/∂context`; recomputes the block's forward.
    public func backward(gradOutput gy: Matrix, input x: Matrix, context: Matrix,
                         contextGradient: Bool = true) throws(ComputeError) -> (input: Matrix, context: Matrix?) {
        try backward(gradOutput: gy, input: x, context: context, contextGradient: contextGradient, saved: nil)
    }

    /// The same, from what the forward kept (`forwardKeeping`) instead of recomputing it.
    func backward(gradOutput gy: Matrix, input x: Matrix, context: Matrix, contextGradient: Bool,
                  saved: Saved?) throws(ComputeError) -> (input: Matrix, context: Matrix?) {
        let h1: Matrix, h2: Matrix
        if let saved { (h1, h2) = (saved.h1, saved.h2) } else { (h1, h2) = try attentions(x, context: context) }
        // Feed-forward branch.
        let n3 = try norm3.forward(h2)
        let gGated = try ffOut.backward(gradOutput: gy, input: try ff.forward(n3))
        var g2 = gy
        try g2.add(try norm3.backward(gradOutput: try ff.backward(gradOutput: gGated, input: n3), input: h2))
        // Cross-attention branch.
        let n2 = try norm2.forward(h1)
        let (gn2, gc) = try attn2.backward(gradOutput: g2, input: n2, context: context, contextGradient: contextGradient,
                                           attended: saved?.attended2)
        var g1 = g2
        try g1.add(try norm2.backward(gradOutput: gn2, input: h1))
        // Self-attention branch.
        let gn1 = try attn1.backward(gradOutput: g1, input: try norm1.forward(x), context: nil, contextGradient: false,
                                     attended: saved?.attended1).input
        var gx = g1
        try gx.add(try norm1.backward(gradOutput: gn1, input: x))
        return (gx, gc)
    }
}
