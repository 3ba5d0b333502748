import CLidbSupport

/// Group normalisation over `[c, h, w]` (PyTorch `nn.GroupNorm`: biased variance, per-channel
/// affine), optionally followed by SiLU (the fused `norm → SiLU` of ResNet blocks).
public struct GroupNorm: Sendable {
    public let groups: Int, channels: Int
    public let eps: Float
    public let weight: [Float], bias: [Float]
    public let silu: Bool

    public init(groups: Int, channels: Int, eps: Float, weight: [Float], bias: [Float], silu: Bool = false) throws(ComputeError) {
        let what = "group norm (\(groups) groups, \(channels) channels)"
        guard groups > 0, channels > 0, channels % groups == 0 else { throw ComputeError("\(what): channels must be a positive multiple of groups") }
        guard weight.count == channels, bias.count == channels else {
            throw ComputeError("\(what): weight and bias need \(channels) values, got \(weight.count) and \(bias.count)")
        }
        guard eps.isFinite, eps >= 0 else { throw ComputeError("\(what): eps \(eps)") }
        self.groups = groups; self.channels = channels; self.eps = eps; self.weight = weight; self.bias = bias; self.silu = silu
    }

    var what: String { "group norm (\(groups) groups, \(channels) channels)" }

    public func forward(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        try x.validate(what + " input", channels: channels)
        var y = FeatureMap(uninitializedC: x.c, h: x.h, w: x.w)
        let hw = x.h * x.w, c = channels, g = groups, eps = eps, silu: Int32 = silu ? 1 : 0
        x.data.withBase { xb in y.data.withMutableBase { yb in weight.withBase { wb in bias.withBase { bb in
            let (xs, ys, ws, bs) = (UnsafeSendable(xb), UnsafeSendable(yb), UnsafeSendable(wb), UnsafeSendable(bb))
            Parallel.ranges(g, work: c * hw) { r in
                lidb_group_norm(xs.p, ys.p, c, hw, r.lowerBound, r.upperBound, g, ws.p, bs.p, eps, silu)
            }
        } } } }
        return y
    }

    /// `∂loss/∂x` from the gradient of the output (after the SiLU when fused), recomputing the
    /// statistics from `x`.
    public func backward(gradOutput gy: FeatureMap, input x: FeatureMap) throws(ComputeError) -> FeatureMap {
        try x.validate(what + " input", channels: channels)
        try gy.validate(what + " gradient", channels: channels)
        guard gy.h == x.h, gy.w == x.w else { throw ComputeError("\(what): gradient \(gy.h) × \(gy.w) for input \(x.h) × \(x.w)") }
        var gx = FeatureMap(uninitializedC: x.c, h: x.h, w: x.w)
        let hw = x.h * x.w, c = channels, g = groups, eps = eps, silu: Int32 = silu ? 1 : 0
        x.data.withBase { xb in gy.data.withBase { gb in gx.data.withMutableBase { ob in weight.withBase { wb in bias.withBase { bb in
            let (xs, gs, os, ws, bs) = (UnsafeSendable(xb), UnsafeSendable(gb), UnsafeSendable(ob), UnsafeSendable(wb), UnsafeSendable(bb))
            Parallel.ranges(g, work: 2 * c * hw) { r in
                lidb_group_norm_backward(xs.p, gs.p, os.p, c, hw, r.lowerBound, r.upperBound, g, ws.p, bs.p, eps, silu)
            }
        } } } } }
        return gx
    }

    /// The per-channel `scale`, `shift` with `GN(x) = x · scale + shift` (what a fused
    /// convolution applies as it reads its input).
    func coefficients(_ x: FeatureMap) -> (scale: [Float], shift: [Float]) {
        var scale = [Float](repeating: 0, count: channels), shift = [Float](repeating: 0, count: channels)
        let hw = x.h * x.w, c = channels, g = groups, eps = eps
        x.data.withBase { xb in weight.withBase { wb in bias.withBase { bb in
        scale.withMutableBase { sb in shift.withMutableBase { tb in
            let (xs, ws, bs, ss, ts) = (UnsafeSendable(xb), UnsafeSendable(wb), UnsafeSendable(bb), UnsafeSendable(sb), UnsafeSendable(tb))
            Parallel.ranges(g, work: c * hw) { r in
                lidb_group_norm_coefficients(xs.p, c, hw, r.lowerBound, r.upperBound, g, ws.p, bs.p, eps, ss.p, ts.p)
            }
        } } } } }
        return (scale, shift)
    }
}
