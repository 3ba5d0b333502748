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
        var y = [Float](repeating: 0, count: n * c)
        for r in 0..<n {
            var mean: Double = 0
            for i in 0..<c { mean += Double(x[r * c + i]) }
            mean /= Double(c)
            var v: Double = 0
            for i in 0..<c { let d = Double(x[r * c + i]) - mean; v += d * d }
            v /= Double(c)
            let inv = Float(1 / (v + Double(eps)).squareRoot())
            let m = Float(mean)
            for i in 0..<c { y[r * c + i] = (x[r * c + i] - m) * inv * weight[i] + bias[i] }
        }
        return y
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
        for i in x.indices { let v = x[i]; x[i] = v / (1 + Foundation.exp(-v)) }
    }

    /// Multi-head scaled dot-product attention. `q[lq × heads·d]`, `k`, `v` `[lk × heads·d]`
    /// (row-major, heads interleaved as PyTorch's reshape gives them); returns `[lq × heads·d]`.
    /// Queries are processed in chunks so the score matrix stays small; `causal` masks keys after
    /// each query.
    public static func attention(q: [Float], k: [Float], v: [Float], queries lq: Int, keys lk: Int, heads: Int, headDim d: Int,
                                 causal: Bool = false, chunk: Int = 1024) -> [Float] {
        let width = heads * d
        var out = [Float](repeating: 0, count: lq * width)
        let scale = 1 / Float(d).squareRoot()
        // Per head: gather contiguous Q_h [lq × d], K_h [lk × d], V_h [lk × d].
        var qh = [Float](repeating: 0, count: lq * d), kh = [Float](repeating: 0, count: lk * d), vh = [Float](repeating: 0, count: lk * d)
        var scores = [Float](repeating: 0, count: min(chunk, lq) * lk)
        var oh = [Float](repeating: 0, count: min(chunk, lq) * d)
        for h in 0..<heads {
            for i in 0..<lq { for j in 0..<d { qh[i * d + j] = q[i * width + h * d + j] } }
            for i in 0..<lk { for j in 0..<d { kh[i * d + j] = k[i * width + h * d + j]; vh[i * d + j] = v[i * width + h * d + j] } }
            var start = 0
            while start < lq {
                let rows = min(chunk, lq - start)
                qh.withUnsafeBufferPointer { qp in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(lk), Int32(d), scale,
                                qp.baseAddress! + start * d, Int32(d), kh, Int32(d), 0, &scores, Int32(lk))
                }
                if !causal {
                    scores.withUnsafeMutableBufferPointer { lidb_softmax_rows($0.baseAddress!, rows, lk) }
                } else { for r in 0..<rows {
                    let limit = min(start + r + 1, lk)
                    var m = -Float.infinity
                    for c in 0..<limit { m = max(m, scores[r * lk + c]) }
                    var s: Float = 0
                    for c in 0..<limit { let e = Foundation.exp(scores[r * lk + c] - m); scores[r * lk + c] = e; s += e }
                    let inv = 1 / s
                    for c in 0..<limit { scores[r * lk + c] *= inv }
                    for c in limit..<lk { scores[r * lk + c] = 0 }
                } }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(d), Int32(lk), 1, scores, Int32(lk), vh, Int32(d), 0, &oh, Int32(d))
                for r in 0..<rows { for j in 0..<d { out[(start + r) * width + h * d + j] = oh[r * d + j] } }
                start += rows
            }
        }
        return out
    }
}
