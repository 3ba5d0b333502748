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
