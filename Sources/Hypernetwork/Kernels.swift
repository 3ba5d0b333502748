import CBLAS
import CLidbSupport
import Diffusion
import Dispatch
import Foundation

/// Row-major f32 kernels for the ViT and the weight decoder: whole-sequence GEMMs, attention as
/// per-head GEMMs (heads spread over the cores), elementwise passes split over the cores.
enum Kernels {
    struct Pointer: @unchecked Sendable { let p: UnsafeMutablePointer<Float> }
    struct ConstPointer: @unchecked Sendable { let p: UnsafePointer<Float> }

    /// `y[n × out] = x[n × in] · Wᵀ + b` into an existing buffer.
    static func linear(_ x: UnsafePointer<Float>, rows n: Int, in inDim: Int, weight w: [Float], bias b: [Float]?, out: Int,
                       into y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        if !accumulate {
            if let b { for r in 0..<n { (y + r * out).update(from: b, count: out) } }
        } else if let b {
            for r in 0..<n { for j in 0..<out { y[r * out + j] += b[j] } }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(out), Int32(inDim), 1, x, Int32(inDim), w, Int32(inDim),
                    (b == nil && !accumulate) ? 0 : 1, y, Int32(out))
    }

    /// Layer norm over rows of `c` values (biased variance, as PyTorch), sums in f64.
    static func layerNorm(_ x: UnsafePointer<Float>, rows n: Int, channels c: Int, weight: [Float], bias: [Float], eps: Float,
                          into y: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
            for r in 0..<n {
                let xr = x + r * c, yr = y + r * c
                var mean: Double = 0
                for i in 0..<c { mean += Double(xr[i]) }
                mean /= Double(c)
                var v: Double = 0
                for i in 0..<c { let d = Double(xr[i]) - mean; v += d * d }
                v /= Double(c)
                let inv = Float(1 / (v + Double(eps)).squareRoot()), m = Float(mean)
                for i in 0..<c { yr[i] = (xr[i] - m) * inv * wp[i] + bp[i] }
            }
        } }
    }

    /// Runs `body(start, end)` over `0..<count` split into one part per core.
    static func split(_ count: Int, _ body: @Sendable (Int, Int) -> Void) {
        let parts = count >= 1 << 15 ? max(1, Parallel.cores) : 1
        if parts == 1 { body(0, count); return }
        DispatchQueue.concurrentPerform(iterations: parts) { i in
            body(count * i / parts, count * (i + 1) / parts)
        }
    }

    /// The activation named by a config (`gelu` exact, `quick_gelu`, `gelu_new`/`gelu_pytorch_tanh`), in place.
    static func activate(_ x: UnsafeMutablePointer<Float>, count: Int, _ name: String) {
        let p = Pointer(p: x)
        switch name {
        case "quick_gelu":
            split(count) { s, e in lidb_quick_gelu(p.p + s, e - s) }
        case "gelu_new", "gelu_pytorch_tanh":
            split(count) { s, e in
                for i in s..<e {
                    let v = Double(p.p[i])
                    p.p[i] = Float(0.5 * v * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (v + 0.044715 * v * v * v))))
                }
            }
        default:
            split(count) { s, e in geluErf(p.p + s, count: e - s) }
        }
    }

    /// GELU with the error function, `x · (1 + erf(x/√2)) / 2`, in place (vectorised C kernel).
    static func geluErf(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        lidb_gelu_erf(x, n)
    }

    /// Multi-head attention without a mask. Queries row `i`, head `h` at `q[i·qs + h·d ..< +d]`
    /// (likewise keys and values with their row strides); the result `[lq × heads·d]` goes to `out`.
    static func attention(q: UnsafePointer<Float>, qStride qs: Int, k: UnsafePointer<Float>, kStride ks: Int, v: UnsafePointer<Float>, vStride vs: Int,
                          queries lq: Int, keys lk: Int, heads: Int, headDim d: Int, into out: UnsafeMutablePointer<Float>) {
        let width = heads * d
        let scale = 1 / Float(d).squareRoot()
        let qp = ConstPointer(p: q), kp = ConstPointer(p: k), vp = ConstPointer(p: v), op = Pointer(p: out)
        let jobs = min(heads, max(1, Parallel.cores))
        Parallel.forEach(jobs) { job in
            var qh = [Float](repeating: 0, count: lq * d), kh = [Float](repeating: 0, count: lk * d), vh = [Float](repeating: 0, count: lk * d)
            var scores = [Float](repeating: 0, count: lq * lk), oh = [Float](repeating: 0, count: lq * d)
            for h in stride(from: job, to: heads, by: jobs) {
                for i in 0..<lq { for j in 0..<d { qh[i * d + j] = qp.p[i * qs + h * d + j] } }
                for i in 0..<lk { for j in 0..<d { kh[i * d + j] = kp.p[i * ks + h * d + j]; vh[i * d + j] = vp.p[i * vs + h * d + j] } }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(lq), Int32(lk), Int32(d), scale, qh, Int32(d), kh, Int32(d), 0, &scores, Int32(lk))
                scores.withUnsafeMutableBufferPointer { lidb_softmax_rows($0.baseAddress!, lq, lk) }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(lq), Int32(d), Int32(lk), 1, scores, Int32(lk), vh, Int32(d), 0, &oh, Int32(d))
                for i in 0..<lq { for j in 0..<d { op.p[i * width + h * d + j] = oh[i * d + j] } }
            }
        }
    }
}
