import CLidbSupport

/// diffusers' `GEGLU`: `h, g = proj(x).chunk(2, -1)`; `h · GELU(g)` (erf GELU). The projection
/// is a `Linear` (`[2·inner × in]`) and can carry delta terms.
public struct GEGLU: Sendable {
    public var proj: Linear
    public var inner: Int { proj.outFeatures / 2 }

    public init(proj: Linear) throws(ComputeError) {
        guard proj.outFeatures % 2 == 0 else { throw ComputeError("GEGLU: projection to \(proj.outFeatures) features, expected an even number") }
        self.proj = proj
    }

    /// Rows per band: the `2·inner`-wide projection stays near 2^20 values (`bandRows` for tests).
    var band: Int { max(1, bandRows ?? (1 << 20) / max(inner, 1)) }
    var bandRows: Int?

    public func forward(_ x: Matrix) throws(ComputeError) -> Matrix {
        try x.validate("GEGLU input", cols: proj.inFeatures)
        let n = x.rows, c = proj.inFeatures, inner = inner
        var y = Matrix(uninitializedRows: n, cols: inner)
        var start = 0
        while start < n {
            let rows = min(band, n - start)
            let xb = Matrix(checkedRows: rows, cols: c, data: Array(x.data[(start * c)..<((start + rows) * c)]))
            let p = try proj.forward(xb)
            p.data.withBase { pb in y.data.withMutableBase { yb in
                let (ps, ys) = (UnsafeSendable(pb), UnsafeSendable(yb + start * inner))
                Parallel.ranges(rows, work: 8 * rows * inner) { r in
                    lidb_geglu(ps.p + r.lowerBound * 2 * inner, ys.p + r.lowerBound * inner, r.count, inner)
                }
            } }
            start += rows
        }
        return y
    }

    /// `y += out.forward(forward(x))`, a band of rows at a time (`out` `[c × inner]`, any delta
    /// terms included): the gated band is projected while it is in cache, and the whole
    /// `[rows × inner]` activation is never stored (the feed-forward of an inference step). The
    /// same values as the two steps.
    public func forward(_ x: Matrix, through out: Linear, addingTo y: inout Matrix) throws(ComputeError) {
        try x.validate("GEGLU input", cols: proj.inFeatures)
        guard out.inFeatures == inner else { throw ComputeError("GEGLU: an output projection from \(out.inFeatures) features, expected \(inner)") }
        try y.validate("GEGLU output", cols: out.outFeatures)
        guard y.rows == x.rows else { throw ComputeError("GEGLU: \(y.rows) output rows for \(x.rows) input rows") }
        let n = x.rows, c = proj.inFeatures, inner = inner, width = out.outFeatures
        var start = 0
        while start < n {
            let rows = min(band, n - start)
            let xb = Matrix(checkedRows: rows, cols: c, data: Array(x.data[(start * c)..<((start + rows) * c)]))
            let p = try proj.forward(xb)
            var gated = Matrix(uninitializedRows: rows, cols: inner)
            p.data.withBase { pb in gated.data.withMutableBase { gb in
                let (ps, gs) = (UnsafeSendable(pb), UnsafeSendable(gb))
                Parallel.ranges(rows, work: 8 * rows * inner) { r in
                    lidb_geglu(ps.p + r.lowerBound * 2 * inner, gs.p + r.lowerBound * inner, r.count, inner)
                }
            } }
            let o = try out.forward(gated)
            y.data.withMutableBase { yb in o.data.withBase { lidb_add(yb + start * width, $0, rows * width) } }
            start += rows
        }
    }

    public func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        try x.validate("GEGLU input", cols: proj.inFeatures)
        try gy.validate("GEGLU gradient", cols: inner)
        guard gy.rows == x.rows else { throw ComputeError("GEGLU backward: \(gy.rows) gradient rows for \(x.rows) input rows") }
        let n = x.rows, c = proj.inFeatures, inner = inner
        var gx = Matrix(uninitializedRows: n, cols: c)
        var start = 0
        while start < n {
            let rows = min(band, n - start)
            let xb = Matrix(checkedRows: rows, cols: c, data: Array(x.data[(start * c)..<((start + rows) * c)]))
            let p = try proj.forward(xb)
            var gp = Matrix(uninitializedRows: rows, cols: 2 * inner)
            p.data.withBase { pb in gy.data.withBase { gb in gp.data.withMutableBase { ob in
                let (ps, gs, os) = (UnsafeSendable(pb), UnsafeSendable(gb + start * inner), UnsafeSendable(ob))
                Parallel.ranges(rows, work: 16 * rows * inner) { r in
                    let o = r.lowerBound
                    lidb_geglu_backward(ps.p + o * 2 * inner, gs.p + o * inner, os.p + o * 2 * inner, r.count, inner)
                }
            } } }
            let g = try proj.backward(gradOutput: gp, input: xb)
            gx.data.withMutableBase { ob in g.data.withBase { gb in (ob + start * c).update(from: gb, count: rows * c) } }
            start += rows
        }
        return gx
    }
}
