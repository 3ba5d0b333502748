/// One layer of transformers' `CLIPEncoder` (pre-norm): `x + self_attn(layer_norm1(x))`, then
/// `+ fc2(act(fc1(layer_norm2(·))))`. The self-attention is causal for the text encoder.
public struct CLIPEncoderLayer: Sendable {
    public var layerNorm1: LayerNorm, selfAttention: Attention, layerNorm2: LayerNorm
    public var fc1: Linear, fc2: Linear
    public let activation: Activation

    public init(layerNorm1: LayerNorm, selfAttention: Attention, layerNorm2: LayerNorm, fc1: Linear, fc2: Linear,
                activation: Activation) throws(ComputeError) {
        let c = layerNorm1.channels
        guard selfAttention.toQ.inFeatures == c, selfAttention.toK.inFeatures == c, selfAttention.toOut.outFeatures == c,
              layerNorm2.channels == c, fc1.inFeatures == c, fc2.inFeatures == fc1.outFeatures, fc2.outFeatures == c else {
            throw ComputeError("CLIP encoder layer: sizes do not chain (hidden \(c))")
        }
        self.layerNorm1 = layerNorm1; self.selfAttention = selfAttention; self.layerNorm2 = layerNorm2
        self.fc1 = fc1; self.fc2 = fc2; self.activation = activation
    }

    public func forward(_ x: Matrix) throws(ComputeError) -> Matrix {
        var h = x
        try h.add(try selfAttention.forward(try layerNorm1.forward(x)))
        let m = try fc1.forward(try layerNorm2.forward(h))
        try h.add(try fc2.forward(activation.forward(m)))
        return h
    }

    /// `∂loss/∂x`, recomputing the layer's forward from `x`; the delta terms of the
    /// projections and of the MLP accumulate their gradients.
    public func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        let n1 = try layerNorm1.forward(x)
        var h = x
        try h.add(try selfAttention.forward(n1))
        let n2 = try layerNorm2.forward(h)
        let m = try fc1.forward(n2)
        // MLP branch.
        let gAct = try fc2.backward(gradOutput: gy, input: activation.forward(m))
        let gm = try activation.backward(gradOutput: gAct, input: m)
        var gh = gy
        try gh.add(try layerNorm2.backward(gradOutput: try fc1.backward(gradOutput: gm, input: n2), input: h))
        // Attention branch.
        let gn1 = try selfAttention.backward(gradOutput: gh, input: n1).input
        var gx = gh
        try gx.add(try layerNorm1.backward(gradOutput: gn1, input: x))
        return gx
    }
}
