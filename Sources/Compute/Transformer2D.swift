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

    /// `x` `[tokens × channels]`, `context` `[text tokens × context channels]`.
    public func forward(_ x: Matrix, context: Matrix) throws(ComputeError) -> Matrix {
        var h = try attentions(x, context: context).h2
        try h.add(try ffOut.forward(try ff.forward(try norm3.forward(h))))
        return h
    }

    /// `∂loss/∂x` and, when `contextGradient`, `∂loss/∂context`; recomputes the block's forward.
    public func backward(gradOutput gy: Matrix, input x: Matrix, context: Matrix,
                         contextGradient: Bool = true) throws(ComputeError) -> (input: Matrix, context: Matrix?) {
        let (h1, h2) = try attentions(x, context: context)
        // Feed-forward branch.
        let n3 = try norm3.forward(h2)
        let gGated = try ffOut.backward(gradOutput: gy, input: try ff.forward(n3))
        var g2 = gy
        try g2.add(try norm3.backward(gradOutput: try ff.backward(gradOutput: gGated, input: n3), input: h2))
        // Cross-attention branch.
        let n2 = try norm2.forward(h1)
        let (gn2, gc) = try attn2.backward(gradOutput: g2, input: n2, context: context, contextGradient: contextGradient)
        var g1 = g2
        try g1.add(try norm2.backward(gradOutput: gn2, input: h1))
        // Self-attention branch.
        let gn1 = try attn1.backward(gradOutput: g1, input: try norm1.forward(x)).input
        var gx = g1
        try gx.add(try norm1.backward(gradOutput: gn1, input: x))
        return (gx, gc)
    }
}

/// diffusers' `Transformer2DModel` for SD: group norm (no SiLU), `proj_in`, the transformer
/// blocks over the `h·w` tokens, `proj_out`, plus the input. The projections are `Linear`s on
/// the tokens: a 1×1 convolution's weight `[out × in × 1 × 1]` is the same `[out × in]` matrix
/// (SD 1.x's convolution projections and SD 2.x's linear ones compute the same function).
public struct Transformer2D: Sendable {
    public var norm: GroupNorm, projIn: Linear, blocks: [BasicTransformerBlock], projOut: Linear

    public init(norm: GroupNorm, projIn: Linear, blocks: [BasicTransformerBlock], projOut: Linear) throws(ComputeError) {
        let c = norm.channels
        guard !norm.silu, projIn.inFeatures == c, projOut.outFeatures == c, !blocks.isEmpty,
              blocks.allSatisfy({ $0.norm1.channels == projIn.outFeatures }), projOut.inFeatures == projIn.outFeatures else {
            throw ComputeError("transformer: sizes do not chain (\(c) channels)")
        }
        self.norm = norm; self.projIn = projIn; self.blocks = blocks; self.projOut = projOut
    }

    /// `x` `[c, h, w]`, `context` `[text tokens × context channels]`.
    public func forward(_ x: FeatureMap, context: Matrix) throws(ComputeError) -> FeatureMap {
        var t = try projIn.forward(try norm.forward(x).tokens())
        for b in blocks { t = try b.forward(t, context: context) }
        var y = try FeatureMap(tokens: try projOut.forward(t), h: x.h, w: x.w)
        try y.add(x)
        return y
    }

    /// `∂loss/∂x` and, when `contextGradient`, `∂loss/∂context` (summed over the blocks).
    /// Recomputes the forward, keeping each block's input, then runs the blocks' backward passes
    /// (each recomputes its own intermediates).
    public func backward(gradOutput gy: FeatureMap, input x: FeatureMap, context: Matrix,
                         contextGradient: Bool = true) throws(ComputeError) -> (input: FeatureMap, context: Matrix?) {
        try gy.validate("transformer gradient", channels: norm.channels)
        guard gy.h == x.h, gy.w == x.w else { throw ComputeError("transformer: gradient \(gy.h) × \(gy.w) for input \(x.h) × \(x.w)") }
        let normed = try norm.forward(x).tokens()
        var inputs: [Matrix] = []
        var t = try projIn.forward(normed)
        for b in blocks { inputs.append(t); t = try b.forward(t, context: context) }
        var g = try projOut.backward(gradOutput: try gy.tokens(), input: t)
        var gc: Matrix?
        for (b, input) in zip(blocks, inputs).reversed() {
            let r = try b.backward(gradOutput: g, input: input, context: context, contextGradient: contextGradient)
            g = r.input
            if let c = r.context {
                if gc == nil { gc = c } else { try gc?.add(c) }
            }
        }
        let gn = try FeatureMap(tokens: try projIn.backward(gradOutput: g, input: normed), h: x.h, w: x.w)
        var gx = try norm.backward(gradOutput: gn, input: x)
        try gx.add(gy)
        return (gx, gc)
    }
}
