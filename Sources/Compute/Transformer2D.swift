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
    /// Recomputes the forward, keeping each block's input (the last block's output only when
    /// `proj_out` has trained terms), then runs the blocks' backward passes (each recomputes its
    /// own intermediates).
    /// What a training forward keeps for the backward: each block's input and `Saved` states, and
    /// the last block's output when `proj_out` trains.
    struct Saved: Sendable {
        var inputs: [Matrix], blocks: [BasicTransformerBlock.Saved], projOutInput: Matrix?
    }

    /// The forward, keeping what the backward needs (`Saved`).
    func forwardKeeping(_ x: FeatureMap, context: Matrix) throws(ComputeError) -> (output: FeatureMap, saved: Saved) {
        var t = try projIn.forward(try norm.forward(x).tokens())
        var saved = Saved(inputs: [], blocks: [], projOutInput: nil)
        for b in blocks {
            saved.inputs.append(t)
            let r = try b.forwardKeeping(t, context: context)
            t = r.output
            saved.blocks.append(r.saved)
        }
        if projOut.hasTrainableTerms { saved.projOutInput = t }
        var y = try FeatureMap(tokens: try projOut.forward(t), h: x.h, w: x.w)
        try y.add(x)
        return (y, saved)
    }

    public func backward(gradOutput gy: FeatureMap, input x: FeatureMap, context: Matrix,
                         contextGradient: Bool = true) throws(ComputeError) -> (input: FeatureMap, context: Matrix?) {
        try backward(gradOutput: gy, input: x, context: context, contextGradient: contextGradient, saved: nil)
    }

    /// The same, from what the forward kept (`forwardKeeping`): no block forward is recomputed.
    func backward(gradOutput gy: FeatureMap, input x: FeatureMap, context: Matrix, contextGradient: Bool,
                  saved: Saved?) throws(ComputeError) -> (input: FeatureMap, context: Matrix?) {
        try gy.validate("transformer gradient", channels: norm.channels)
        guard gy.h == x.h, gy.w == x.w else { throw ComputeError("transformer: gradient \(gy.h) × \(gy.w) for input \(x.h) × \(x.w)") }
        let normed = try norm.forward(x).tokens()
        var inputs: [Matrix] = []
        var states: [BasicTransformerBlock.Saved?] = Array(repeating: nil, count: blocks.count)
        var projOutInput: Matrix?
        if let saved, saved.inputs.count == blocks.count, saved.blocks.count == blocks.count {
            inputs = saved.inputs
            for i in states.indices { states[i] = saved.blocks[i] }
            projOutInput = saved.projOutInput
            if projOut.hasTrainableTerms, projOutInput == nil, let last = blocks.last, let t = inputs.last {
                projOutInput = try last.forward(t, context: context)
            }
        } else {
            var t = try projIn.forward(normed)
            for b in blocks.dropLast() { inputs.append(t); t = try b.forward(t, context: context) }
            inputs.append(t)
            if projOut.hasTrainableTerms, let last = blocks.last { projOutInput = try last.forward(t, context: context) }
        }
        // The last block's output is proj_out's input: needed only for proj_out's factor gradients.
        var g: Matrix
        if projOut.hasTrainableTerms, let projOutInput {
            g = try projOut.backward(gradOutput: try gy.tokens(), input: projOutInput)
        } else {
            g = try projOut.inputGradient(gradOutput: try gy.tokens())
        }
        var gc: Matrix?
        for (i, (b, input)) in zip(blocks, inputs).enumerated().reversed() {
            let r = try b.backward(gradOutput: g, input: input, context: context, contextGradient: contextGradient, saved: states[i])
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
