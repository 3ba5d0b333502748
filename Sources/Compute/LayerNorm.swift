import CLidbSupport

/// Layer normalisation over the last dimension (PyTorch `nn.LayerNorm`: biased variance).
public struct LayerNorm: Sendable {
    public let channels: Int
    public let eps: Float
    public let weight: [Float], bias: [Float]

    public init(channels: Int, eps: Float, weight: [Float], bias: [Float]) throws(ComputeError) {
        let what = "layer norm (\(channels) channels)"
        guard channels > 0 else { throw ComputeError("\(what): no channels") }
        guard weight.count == channels, bias.count == channels else {
            throw ComputeError("\(what): weight and bias need \(channels) values, got \(weight.count) and \(bias.count)")
        }
        guard eps.isFinite, eps >= 0 else { throw ComputeError("\(what): eps \(eps)") }
        self.channels = channels; self.eps = eps; self.weight = weight; self.bias = bias
    }

    var what: String { "layer norm (\(channels) channels)" }

    public func forward(_ x: Matrix) throws(ComputeError) -> Matrix {
        try x.validate(what + " input", cols: channels)
        var y = Matrix(uninitializedRows: x.rows, cols: channels)
        let n = x.rows, c = channels, eps = eps
        x.data.withBase { xb in y.data.withMutableBase { yb in weight.withBase { wb in bias.withBase { bb in
            let (xs, ys, ws, bs) = (UnsafeSendable(xb), UnsafeSendable(yb), UnsafeSendable(wb), UnsafeSendable(bb))
            Parallel.ranges(n, work: n * c) { r in
                lidb_layer_norm(xs.p + r.lowerBound * c, ys.p + r.lowerBound * c, r.count, c, ws.p, bs.p, eps)
            }
        } } } }
        return y
    }

    public func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        try x.validate(what + " input", cols: channels)
        try gy.validate(what + " gradient", cols: channels)
        guard gy.rows == x.rows else { throw ComputeError("\(what): \(gy.rows) gradient rows for \(x.rows) input rows") }
        var gx = Matrix(uninitializedRows: x.rows, cols: channels)
        let n = x.rows, c = channels, eps = eps
        x.data.withBase { xb in gy.data.withBase { gb in gx.data.withMutableBase { ob in weight.withBase { wb in
            let (xs, gs, os, ws) = (UnsafeSendable(xb), UnsafeSendable(gb), UnsafeSendable(ob), UnsafeSendable(wb))
            Parallel.ranges(n, work: 2 * n * c) { r in
                let o = r.lowerBound * c
                lidb_layer_norm_backward(xs.p + o, gs.p + o, os.p + o, r.count, c, ws.p, eps)
            }
        } } } }
        return gx
    }
}
