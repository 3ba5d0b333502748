import CBLAS
import Foundation

/// An image-shaped activation: `[channels, height, width]` for one batch item, row-major.
public struct FeatureMap {
    public var c: Int, h: Int, w: Int
    public var data: [Float]
    public init(c: Int, h: Int, w: Int, data: [Float]) {
        precondition(data.count == c * h * w)
        self.c = c; self.h = h; self.w = w; self.data = data
    }
    public init(c: Int, h: Int, w: Int) { self.init(c: c, h: h, w: w, data: [Float](repeating: 0, count: c * h * w)) }
}

extension Ops {
    /// 2-D convolution (PyTorch semantics, square kernel, zero padding) as im2col + GEMM.
    /// `weight` is `[out, in, k, k]`.
    public static func conv2d(_ x: FeatureMap, weight: [Float], bias: [Float]?, out: Int, kernel k: Int, stride: Int = 1, padding: Int) -> FeatureMap {
        let ho = (x.h + 2 * padding - k) / stride + 1, wo = (x.w + 2 * padding - k) / stride + 1
        let cols = ho * wo, rows = x.c * k * k
        var y = FeatureMap(c: out, h: ho, w: wo)
        if let bias { for o in 0..<out { for i in 0..<cols { y.data[o * cols + i] = bias[o] } } }
        if k == 1 && stride == 1 && padding == 0 {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(out), Int32(cols), Int32(x.c), 1, weight, Int32(x.c), x.data, Int32(cols),
                        bias == nil ? 0 : 1, &y.data, Int32(cols))
            return y
        }
        var col = [Float](repeating: 0, count: rows * cols)
        x.data.withUnsafeBufferPointer { src in
            col.withUnsafeMutableBufferPointer { dst in
                for c in 0..<x.c { for ky in 0..<k { for kx in 0..<k {
                    let r = (c * k + ky) * k + kx
                    for oy in 0..<ho {
                        let iy = oy * stride + ky - padding
                        let rowBase = r * cols + oy * wo
                        if iy < 0 || iy >= x.h { continue }
                        for ox in 0..<wo {
                            let ix = ox * stride + kx - padding
                            if ix >= 0 && ix < x.w { dst[rowBase + ox] = src[(c * x.h + iy) * x.w + ix] }
                        }
                    }
                } } }
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(out), Int32(cols), Int32(rows), 1, weight, Int32(rows), col, Int32(cols),
                    bias == nil ? 0 : 1, &y.data, Int32(cols))
        return y
    }

    /// Group normalisation over `[c, h, w]` with `groups` groups (biased variance, as PyTorch).
    public static func groupNorm(_ x: FeatureMap, groups g: Int, weight: [Float], bias: [Float], eps: Float, silu: Bool = false) -> FeatureMap {
        var y = x
        let per = x.c / g, hw = x.h * x.w
        for grp in 0..<g {
            let lo = grp * per * hw, hi = (grp + 1) * per * hw
            var mean: Double = 0
            for i in lo..<hi { mean += Double(x.data[i]) }
            mean /= Double(hi - lo)
            var v: Double = 0
            for i in lo..<hi { let d = Double(x.data[i]) - mean; v += d * d }
            v /= Double(hi - lo)
            let inv = Float(1 / (v + Double(eps)).squareRoot()), m = Float(mean)
            for c in (grp * per)..<((grp + 1) * per) {
                let a = inv * weight[c], b = bias[c] - m * inv * weight[c]
                for i in 0..<hw {
                    var t = x.data[c * hw + i] * a + b
                    if silu { t = t / (1 + Foundation.exp(-t)) }
                    y.data[c * hw + i] = t
                }
            }
        }
        return y
    }

    /// Nearest-neighbour upsampling by 2.
    public static func upsampleNearest2x(_ x: FeatureMap) -> FeatureMap {
        var y = FeatureMap(c: x.c, h: x.h * 2, w: x.w * 2)
        for c in 0..<x.c { for i in 0..<y.h { for j in 0..<y.w { y.data[(c * y.h + i) * y.w + j] = x.data[(c * x.h + i / 2) * x.w + j / 2] } } }
        return y
    }

    /// `[c, h, w]` → `[h·w, c]` (tokens) and back.
    public static func toTokens(_ x: FeatureMap) -> [Float] {
        let hw = x.h * x.w
        var t = [Float](repeating: 0, count: hw * x.c)
        for c in 0..<x.c { for i in 0..<hw { t[i * x.c + c] = x.data[c * hw + i] } }
        return t
    }

    public static func fromTokens(_ t: [Float], c: Int, h: Int, w: Int) -> FeatureMap {
        let hw = h * w
        var x = FeatureMap(c: c, h: h, w: w)
        for i in 0..<hw { for ch in 0..<c { x.data[ch * hw + i] = t[i * c + ch] } }
        return x
    }
}
