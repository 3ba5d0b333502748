import CLidbSupport

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
