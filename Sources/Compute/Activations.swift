import CLidbSupport
import Foundation

/// Elementwise activations, forward and backward (`∂loss/∂x = gradOutput · f'(x)`).
public enum Activation: String, Sendable, CaseIterable {
    /// `x · Φ(x)`, with the error function (PyTorch's default GELU).
    case gelu
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (`gelu_new`, `gelu_pytorch_tanh`).
    case geluTanh
    /// `x · σ(1.702 x)` (CLIP's `quick_gelu`).
    case quickGELU
    /// `x · σ(x)`.
    case silu

    /// The activation a transformers/diffusers config names (`hidden_act`, `act_fn`).
    public init?(configName name: String) {
        switch name {
        case "gelu": self = .gelu
        case "gelu_new", "gelu_pytorch_tanh": self = .geluTanh
        case "quick_gelu": self = .quickGELU
        case "silu", "swish": self = .silu
        default: return nil
        }
    }

    public func forward(_ x: [Float]) -> [Float] {
        var y = x
        apply(&y)
        return y
    }

    public func forward(_ x: Matrix) -> Matrix { Matrix(checkedRows: x.rows, cols: x.cols, data: forward(x.data)) }

    /// In place.
    public func apply(_ x: inout [Float]) {
        let n = x.count, kind = self
        x.withMutableBase { xb in
            let xs = UnsafeSendable(xb)
            Parallel.ranges(n, work: 8 * n) { r in
                let p = xs.p + r.lowerBound, m = r.count
                switch kind {
                case .gelu: lidb_gelu_erf(p, m)
                case .quickGELU: lidb_quick_gelu(p, m)
                case .silu: lidb_silu(p, m)
                case .geluTanh:
                    for i in 0..<m {
                        let v = Double(p[i])
                        p[i] = Float(0.5 * v * (1 + Foundation.tanh(Activation.tanhScale * (v + 0.044715 * v * v * v))))
                    }
                }
            }
        }
    }

    static let tanhScale = (2 / Double.pi).squareRoot()

    public func backward(gradOutput gy: [Float], input x: [Float]) throws(ComputeError) -> [Float] {
        guard gy.count == x.count else { throw ComputeError("\(rawValue) backward: \(gy.count) gradient values for \(x.count) inputs") }
        var gx = [Float](unsafeUninitializedCapacity: x.count) { _, n in n = x.count }
        let n = x.count, kind = self
        x.withBase { xb in gy.withBase { gb in gx.withMutableBase { ob in
            let (xs, gs, os) = (UnsafeSendable(xb), UnsafeSendable(gb), UnsafeSendable(ob))
            Parallel.ranges(n, work: 8 * n) { r in
                let o = r.lowerBound, m = r.count
                switch kind {
                case .gelu: lidb_gelu_erf_backward(xs.p + o, gs.p + o, os.p + o, m)
                case .quickGELU: lidb_quick_gelu_backward(xs.p + o, gs.p + o, os.p + o, m)
                case .silu: lidb_silu_backward(xs.p + o, gs.p + o, os.p + o, m)
                case .geluTanh:
                    for i in o..<(o + m) {
                        let v = Double(xs.p[i]), u = Activation.tanhScale * (v + 0.044715 * v * v * v)
                        let t = Foundation.tanh(u)
                        let d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * Activation.tanhScale * (1 + 3 * 0.044715 * v * v)
                        os.p[i] = Float(Double(gs.p[i]) * d)
                    }
                }
            }
        } } }
        return gx
    }

    public func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        guard gy.rows == x.rows, gy.cols == x.cols else {
            throw ComputeError("\(rawValue) backward: gradient \(gy.rows) × \(gy.cols) for input \(x.rows) × \(x.cols)")
        }
        return Matrix(checkedRows: x.rows, cols: x.cols, data: try backward(gradOutput: gy.data, input: x.data))
    }
}

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

/// Softmax over the last dimension of each row.
public enum Softmax {
    public static func forward(_ x: Matrix) throws(ComputeError) -> Matrix {
        try x.validate("softmax input")
        var y = x
        let (rows, cols) = (x.rows, x.cols)
        if cols > 0 { y.data.withMutableBase { lidb_softmax_rows($0, rows, cols) } }
        return y
    }

    /// `∂loss/∂x = y ⊙ (gy − rowsum(gy ⊙ y))`, `y` recomputed from `x`.
    public static func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        try gy.validate("softmax gradient")
        guard gy.rows == x.rows, gy.cols == x.cols else { throw ComputeError("softmax backward: gradient \(gy.rows) × \(gy.cols) for input \(x.rows) × \(x.cols)") }
        let y = try forward(x)
        var g = gy
        let (rows, cols) = (x.rows, x.cols)
        if cols > 0 { y.data.withBase { yb in g.data.withMutableBase { lidb_softmax_backward_rows(yb, $0, rows, cols) } } }
        return g
    }
}

/// Nearest-neighbour upsampling by 2 (`F.interpolate(scale_factor=2, mode="nearest")`).
public enum UpsampleNearest2x {
    public static func forward(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        try x.validate("nearest upsampling input")
        let h2 = try Size.product(x.h, 2, what: "nearest upsampling"), w2 = try Size.product(x.w, 2, what: "nearest upsampling")
        _ = try Size.product(x.c, h2, w2, what: "nearest upsampling")
        var y = FeatureMap(uninitializedC: x.c, h: h2, w: w2)
        let (h, w) = (x.h, x.w)
        x.data.withBase { xp in y.data.withMutableBase { yp in
            for r in 0..<(x.c * h) {
                let src = xp + r * w, dst = yp + r * 4 * w
                for j in 0..<w { dst[2 * j] = src[j]; dst[2 * j + 1] = src[j] }
                (dst + 2 * w).update(from: dst, count: 2 * w)
            }
        } }
        return y
    }

    /// Each input position receives the sum of the four output positions it was copied to.
    public static func backward(gradOutput gy: FeatureMap) throws(ComputeError) -> FeatureMap {
        try gy.validate("nearest upsampling gradient")
        guard gy.h % 2 == 0, gy.w % 2 == 0 else { throw ComputeError("nearest upsampling backward: gradient \(gy.h) × \(gy.w) is not 2× an input") }
        let (h, w) = (gy.h / 2, gy.w / 2)
        var gx = FeatureMap(uninitializedC: gy.c, h: h, w: w)
        gy.data.withBase { gb in gx.data.withMutableBase { lidb_upsample_nearest2x_backward(gb, $0, gy.c, h, w) } }
        return gx
    }
}
