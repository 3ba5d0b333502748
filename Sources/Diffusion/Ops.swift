import CBLAS
import CLidbSupport
import Foundation

/// Dense f32 kernels over row-major buffers, with BLAS for the products. Shapes are passed
/// explicitly; callers own the buffers.
public enum Ops {
    /// `y[n × out] = x[n × in] · Wᵀ + b` (W in PyTorch `Linear` orientation, `[out, in]`).
    public static func linear(_ x: [Float], rows n: Int, in inDim: Int, weight w: [Float], bias b: [Float]?, out: Int) -> [Float] {
        var y = [Float](repeating: 0, count: n * out)
        if let b {
            y.withUnsafeMutableBufferPointer { yp in
                for r in 0..<n { (yp.baseAddress! + r * out).update(from: b, count: out) }
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(out), Int32(inDim), 1, x, Int32(inDim), w, Int32(inDim),
                    b == nil ? 0 : 1, &y, Int32(out))
        return y
    }

    /// Layer norm over the last dimension `c` of `x[n × c]` (PyTorch semantics: biased variance).
    public static func layerNorm(_ x: [Float], rows n: Int, channels c: Int, weight: [Float], bias: [Float], eps: Float) -> [Float] {
        precondition(x.count >= n * c && weight.count >= c && bias.count >= c)
        return [Float](unsafeUninitializedCapacity: n * c) { y, count in
            lidb_layer_norm(x, y.baseAddress!, n, c, weight, bias, eps)
            count = n * c
        }
    }

    public static func quickGELU(_ x: inout [Float]) {
        for i in x.indices { let v = x[i]; x[i] = v / (1 + Foundation.exp(-1.702 * v)) }
    }

    /// GELU with the exact error function (PyTorch's default).
    public static func gelu(_ x: inout [Float]) {
        for i in x.indices { let v = Double(x[i]); x[i] = Float(0.5 * v * (1 + Foundation.erf(v / 2.0.squareRoot()))) }
    }

    /// GELU, tanh approximation.
    public static func geluTanh(_ x: inout [Float]) {
        for i in x.indices {
            let v = Double(x[i])
            x[i] = Float(0.5 * v * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (v + 0.044715 * v * v * v))))
        }
    }

    public static func silu(_ x: inout [Float]) {
        let n = x.count
        x.withUnsafeMutableBufferPointer { lidb_silu($0.baseAddress!, n) }
    }

    /// Multi-head scaled dot-product attention. `q[lq × heads·d]`, `k`, `v` `[lk × heads·d]`
    /// (row-major, heads interleaved as PyTorch's reshape gives them); returns `[lq × heads·d]`.
    /// Queries are processed in chunks so the score matrix stays small; `causal` masks keys after
    /// each query.
    public static func attention(q: [Float], k: [Float], v: [Float], queries lq: Int, keys lk: Int, heads: Int, headDim d: Int,
                                 causal: Bool = false, chunk: Int = 1024) -> [Float] {
        let width = heads * d
        precondition(q.count >= lq * width && k.count >= lk * width && v.count >= lk * width)
        var out = [Float](repeating: 0, count: lq * width)
        let scale = 1 / Float(d).squareRoot()
        // Each head is read in place (leading dimension heads·d), and written in place.
        let rowsMax = min(chunk, lq)
        var scores = [Float](unsafeUninitializedCapacity: rowsMax * lk) { _, n in n = rowsMax * lk }
        q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
        out.withUnsafeMutableBufferPointer { op in scores.withUnsafeMutableBufferPointer { sp in
            let s = sp.baseAddress!
            for h in 0..<heads {
                var start = 0
                while start < lq {
                    let rows = min(chunk, lq - start)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(lk), Int32(d), scale,
                                qp.baseAddress! + start * width + h * d, Int32(width), kp.baseAddress! + h * d, Int32(width), 0, s, Int32(lk))
                    if !causal {
                        lidb_softmax_rows(s, rows, lk)
                    } else { for r in 0..<rows {
                        let limit = min(start + r + 1, lk), row = s + r * lk
                        var m = -Float.infinity
                        for c in 0..<limit { m = max(m, row[c]) }
                        var sum: Float = 0
                        for c in 0..<limit { let e = Foundation.exp(row[c] - m); row[c] = e; sum += e }
                        let inv = 1 / sum
                        for c in 0..<limit { row[c] *= inv }
                        for c in limit..<lk { row[c] = 0 }
                    } }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(d), Int32(lk), 1, s, Int32(lk),
                                vp.baseAddress! + h * d, Int32(width), 0, op.baseAddress! + start * width + h * d, Int32(width))
                    start += rows
                }
            }
        } }
        } } }
        return out
    }
}
