import Compute
import CBLAS
import CLidbSupport
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
    /// A map whose values the caller writes before reading.
    init(uninitializedC c: Int, h: Int, w: Int) {
        self.c = c; self.h = h; self.w = w
        data = [Float](unsafeUninitializedCapacity: c * h * w) { _, n in n = c * h * w }
    }
}

extension Ops {
    /// 2-D convolution (PyTorch semantics, square kernel, zero padding) as im2col + GEMM.
    /// `weight` is `[out, in, k, k]`. 1×1 stride-1 convolutions are a single GEMM on the input;
    /// larger kernels build the im2col matrix for a band of output positions at a time (at most
    /// `im2colBudget` floats), so the buffer stays small and cache-warm at any image size.
    public static func conv2d(_ x: FeatureMap, weight: [Float], bias: [Float]?, out: Int, kernel k: Int, stride: Int = 1, padding: Int) -> FeatureMap {
        if k == 3 && stride == 1 && padding == 1 && useWinograd(in: x.c, out: out, h: x.h, w: x.w) {
            return conv3x3Winograd(x, weight: weight, bias: bias, out: out)
        }
        return conv2dDirect(x, weight: weight, bias: bias, out: out, kernel: k, stride: stride, padding: padding)
    }

    /// Whether `conv2d` computes a stride-1, padding-1 3×3 convolution with Winograd F(2×2, 3×3):
    /// when both channel counts and the number of output tiles are large enough for the 16 GEMMs
    /// to beat one im2col GEMM with 2.25× the multiplications. Below 64 tiles (16×16 outputs) the
    /// per-call weight transform (16·out·in values) costs more than it saves (measured on SD 1.5's
    /// 1,280-channel 8×8 level).
    static func useWinograd(in c: Int, out: Int, h: Int, w: Int) -> Bool {
        winogradEnabled && (winogradAlways || winogradPays(in: c, out: out, h: h, w: w))
    }

    static func winogradPays(in c: Int, out: Int, h: Int, w: Int) -> Bool {
        c >= 16 && out >= 16 && ((h + 1) / 2) * ((w + 1) / 2) >= 64
    }

    /// Set to false to compute every convolution directly (im2col + GEMM), e.g. to compare.
    nonisolated(unsafe) public static var winogradEnabled = true
    /// Set to true to use Winograd for every stride-1, padding-1 3×3 convolution whatever its
    /// size (the tests run the small reference models this way).
    nonisolated(unsafe) public static var winogradAlways = false

    /// A stride-1, padding-1 3×3 convolution with Winograd F(2×2, 3×3): weights, input tiles and
    /// outputs transformed in C, the 16 products as GEMMs. Tiles are processed in bands and output
    /// channels in blocks, so the transformed buffers stay within `im2colBudget` floats each.
    /// `normalized` applies a per-channel scale and shift (and SiLU) to the input as it is read;
    /// `upsample` reads the input upsampled 2× by nearest neighbour.
    static func conv3x3Winograd(_ x: FeatureMap, weight: [Float], bias: [Float]?, out: Int, budget: Int = im2colBudget,
                                normalized: (scale: [Float], shift: [Float], silu: Bool)? = nil, upsample: Bool = false) -> FeatureMap {
        let c = x.c, h = upsample ? 2 * x.h : x.h, w = upsample ? 2 * x.w : x.w
        precondition(normalized.map { $0.scale.count == c && $0.shift.count == c } ?? true)
        let scale = normalized?.scale ?? [], shift = normalized?.shift ?? [], silu: Int32 = normalized?.silu == true ? 1 : 0
        let upFlag: Int32 = upsample ? 1 : 0
        precondition(weight.count == out * c * 9 && bias.map { $0.count == out } ?? true)
        let tiles = ((h + 1) / 2) * ((w + 1) / 2)
        let band = min(tiles, max(16, budget / (16 * max(c, out))))
        let block = min(out, max(16, budget / (16 * c)))
        var y = FeatureMap(uninitializedC: out, h: h, w: w)
        var u = [Float](unsafeUninitializedCapacity: 16 * block * c) { _, n in n = 16 * block * c }
        var v = [Float](unsafeUninitializedCapacity: 16 * c * band) { _, n in n = 16 * c * band }
        var m = [Float](unsafeUninitializedCapacity: 16 * block * band) { _, n in n = 16 * block * band }
        let biasValues = bias ?? []
        x.data.withUnsafeBufferPointer { xp in weight.withUnsafeBufferPointer { wp in y.data.withUnsafeMutableBufferPointer { yp in
        u.withUnsafeMutableBufferPointer { up in v.withUnsafeMutableBufferPointer { vp in m.withUnsafeMutableBufferPointer { mp in
        biasValues.withUnsafeBufferPointer { bp in scale.withUnsafeBufferPointer { sp in shift.withUnsafeBufferPointer { tp in
            let ss = normalized == nil ? nil : sp.baseAddress.map { UnsafeSendable($0) }
            let ts = normalized == nil ? nil : tp.baseAddress.map { UnsafeSendable($0) }
            let (xs, ws, ys) = (UnsafeSendable(xp.baseAddress!), UnsafeSendable(wp.baseAddress!), UnsafeSendable(yp.baseAddress!))
            let (us, vs, ms) = (UnsafeSendable(up.baseAddress!), UnsafeSendable(vp.baseAddress!), UnsafeSendable(mp.baseAddress!))
            let bs = bias == nil ? nil : bp.baseAddress.map { UnsafeSendable($0) }
            var o0 = 0
            while o0 < out {
                let ob = min(block, out - o0), base = o0
                Parallel.ranges(ob, work: ob * c * 16) { r in
                    lidb_winograd_weights(ws.p + base * c * 9, ob, c, r.lowerBound, r.upperBound, us.p)
                }
                var t0 = 0
                while t0 < tiles {
                    let nt = min(band, tiles - t0), first = t0
                    Parallel.ranges(c, work: c * nt * 16) { r in
                        lidb_winograd_input(xs.p, c, h, w, first, nt, r.lowerBound, r.upperBound, ss?.p, ts?.p, silu, upFlag, vs.p)
                    }
                    for xi in 0..<16 {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(ob), Int32(nt), Int32(c), 1,
                                    up.baseAddress! + xi * ob * c, Int32(c), vp.baseAddress! + xi * c * nt, Int32(nt),
                                    0, mp.baseAddress! + xi * ob * nt, Int32(nt))
                    }
                    Parallel.ranges(ob, work: ob * nt * 16) { r in
                        lidb_winograd_output(ms.p, ob, h, w, first, nt, r.lowerBound, r.upperBound, bs.map { $0.p + base }, ys.p + base * h * w)
                    }
                    t0 += nt
                }
                o0 += ob
            }
        } } }
        } } }
        } } }
        return y
    }

    /// `conv2d(groupNorm(x, …, silu:), …)` for a 3×3, stride-1, padding-1 convolution, with the
    /// normalisation applied while the convolution reads its input when Winograd is used (the
    /// normalised map is never stored; same values as the two steps).
    public static func groupNormConv3x3(_ x: FeatureMap, groups g: Int, normWeight: [Float], normBias: [Float], eps: Float, silu: Bool,
                                        weight: [Float], bias: [Float]?, out: Int) -> FeatureMap {
        guard useWinograd(in: x.c, out: out, h: x.h, w: x.w) else {
            return conv2d(groupNorm(x, groups: g, weight: normWeight, bias: normBias, eps: eps, silu: silu), weight: weight, bias: bias, out: out,
                          kernel: 3, padding: 1)
        }
        let (scale, shift) = groupNormCoefficients(x, groups: g, weight: normWeight, bias: normBias, eps: eps)
        return conv3x3Winograd(x, weight: weight, bias: bias, out: out, normalized: (scale, shift, silu))
    }

    /// `conv2d(upsampleNearest2x(x), …)` for a 3×3, stride-1, padding-1 convolution, reading the
    /// input upsampled on the fly when Winograd is used.
    public static func upsampleConv3x3(_ x: FeatureMap, weight: [Float], bias: [Float]?, out: Int) -> FeatureMap {
        guard useWinograd(in: x.c, out: out, h: 2 * x.h, w: 2 * x.w) else {
            return conv2d(upsampleNearest2x(x), weight: weight, bias: bias, out: out, kernel: 3, padding: 1)
        }
        return conv3x3Winograd(x, weight: weight, bias: bias, out: out, upsample: true)
    }

    /// The per-channel scale and shift of a group norm over `x`.
    static func groupNormCoefficients(_ x: FeatureMap, groups g: Int, weight: [Float], bias: [Float], eps: Float) -> ([Float], [Float]) {
        precondition(weight.count == x.c && bias.count == x.c && x.c % g == 0)
        var scale = [Float](repeating: 0, count: x.c), shift = [Float](repeating: 0, count: x.c)
        let hw = x.h * x.w, c = x.c
        x.data.withUnsafeBufferPointer { xp in weight.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
        scale.withUnsafeMutableBufferPointer { sp in shift.withUnsafeMutableBufferPointer { tp in
            let (xs, ws, bs, ss, ts) = (UnsafeSendable(xp.baseAddress!), UnsafeSendable(wp.baseAddress!), UnsafeSendable(bp.baseAddress!),
                                        UnsafeSendable(sp.baseAddress!), UnsafeSendable(tp.baseAddress!))
            Parallel.ranges(g, work: c * hw) { r in
                lidb_group_norm_coefficients(xs.p, c, hw, r.lowerBound, r.upperBound, g, ws.p, bs.p, eps, ss.p, ts.p)
            }
        } } } } }
        return (scale, shift)
    }

    /// `conv2d` without Winograd: im2col + GEMM (a single GEMM for 1×1 stride-1 kernels).
    static func conv2dDirect(_ x: FeatureMap, weight: [Float], bias: [Float]?, out: Int, kernel k: Int, stride: Int = 1, padding: Int,
                             budget: Int = im2colBudget) -> FeatureMap {
        let ho = (x.h + 2 * padding - k) / stride + 1, wo = (x.w + 2 * padding - k) / stride + 1
        let cols = ho * wo, rows = x.c * k * k
        var y = FeatureMap(uninitializedC: out, h: ho, w: wo)
        y.data.withUnsafeMutableBufferPointer { yp in
            let yb = yp.baseAddress!
            if let bias {
                bias.withUnsafeBufferPointer { bp in for o in 0..<out { (yb + o * cols).update(repeating: bp[o], count: cols) } }
            }
            let beta: Float = bias == nil ? 0 : 1
            if k == 1 && stride == 1 && padding == 0 {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(out), Int32(cols), Int32(x.c), 1, weight, Int32(x.c), x.data, Int32(cols),
                            beta, yb, Int32(cols))
                return
            }
            let band = min(cols, max(64, budget / max(rows, 1)))
            var col = [Float](unsafeUninitializedCapacity: rows * band) { _, n in n = rows * band }
            x.data.withUnsafeBufferPointer { src in
                col.withUnsafeMutableBufferPointer { cp in
                    var start = 0
                    while start < cols {
                        let n = min(band, cols - start)
                        lidb_im2col(src.baseAddress!, x.c, x.h, x.w, k, stride, padding, start, n, cp.baseAddress!)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(out), Int32(n), Int32(rows), 1, weight, Int32(rows),
                                    cp.baseAddress!, Int32(n), beta, yb + start, Int32(cols))
                        start += n
                    }
                }
            }
        }
        return y
    }

    /// The most floats an im2col band (or a Winograd buffer) holds (16 MiB).
    static let im2colBudget = 4 << 20

    /// Group normalisation over `[c, h, w]` with `groups` groups (biased variance, as PyTorch),
    /// optionally followed by SiLU. Groups are split over the cores outside batch parallelism.
    public static func groupNorm(_ x: FeatureMap, groups g: Int, weight: [Float], bias: [Float], eps: Float, silu: Bool = false) -> FeatureMap {
        var y = FeatureMap(uninitializedC: x.c, h: x.h, w: x.w)
        let hw = x.h * x.w, c = x.c
        x.data.withUnsafeBufferPointer { xp in
            y.data.withUnsafeMutableBufferPointer { yp in
                let xs = UnsafeSendable(xp.baseAddress!), ys = UnsafeSendable(yp.baseAddress!)
                weight.withUnsafeBufferPointer { wp in
                    bias.withUnsafeBufferPointer { bp in
                        let ws = UnsafeSendable(wp.baseAddress!), bs = UnsafeSendable(bp.baseAddress!)
                        Parallel.ranges(g, work: c * hw) { r in
                            lidb_group_norm(xs.p, ys.p, c, hw, r.lowerBound, r.upperBound, g, ws.p, bs.p, eps, silu ? 1 : 0)
                        }
                    }
                }
            }
        }
        return y
    }

    /// `y += x` (same shapes).
    static func add(_ y: inout [Float], _ x: [Float]) {
        precondition(y.count == x.count)
        let n = y.count
        y.withUnsafeMutableBufferPointer { lidb_add($0.baseAddress!, x, n) }
    }

    /// Nearest-neighbour upsampling by 2.
    public static func upsampleNearest2x(_ x: FeatureMap) -> FeatureMap {
        var y = FeatureMap(uninitializedC: x.c, h: x.h * 2, w: x.w * 2)
        let (h, w) = (x.h, x.w)
        x.data.withUnsafeBufferPointer { xp in
            y.data.withUnsafeMutableBufferPointer { yp in
                for r in 0..<(x.c * h) {
                    let src = xp.baseAddress! + r * w, dst = yp.baseAddress! + r * 4 * w
                    for j in 0..<w { dst[2 * j] = src[j]; dst[2 * j + 1] = src[j] }
                    (dst + 2 * w).update(from: dst, count: 2 * w)
                }
            }
        }
        return y
    }

    /// Nearest-neighbour resize to `h × w`, as `torch.nn.functional.interpolate(x, size=(h, w),
    /// mode="nearest")`: source index `min(floor(i · (in/out)), in − 1)` with the ratio in f32
    /// (exactly `i / 2` when the size doubles).
    public static func resizeNearest(_ x: FeatureMap, h: Int, w: Int) -> FeatureMap {
        func index(_ i: Int, _ inSize: Int, _ outSize: Int) -> Int {
            if outSize == 2 * inSize { return i >> 1 }
            let scale = Float(inSize) / Float(outSize)
            return min(Int((Float(i) * scale).rounded(.down)), inSize - 1)
        }
        let rows = (0..<h).map { index($0, x.h, h) }, cols = (0..<w).map { index($0, x.w, w) }
        var y = FeatureMap(uninitializedC: x.c, h: h, w: w)
        x.data.withUnsafeBufferPointer { xp in
            y.data.withUnsafeMutableBufferPointer { yp in
                for c in 0..<x.c {
                    for i in 0..<h {
                        let src = xp.baseAddress! + (c * x.h + rows[i]) * x.w, dst = yp.baseAddress! + (c * h + i) * w
                        for j in 0..<w { dst[j] = src[cols[j]] }
                    }
                }
            }
        }
        return y
    }

    /// `[c, h, w]` → `[h·w, c]` (tokens) and back.
    public static func toTokens(_ x: FeatureMap) -> [Float] {
        let hw = x.h * x.w
        return [Float](unsafeUninitializedCapacity: hw * x.c) { t, n in
            x.data.withUnsafeBufferPointer { lidb_transpose($0.baseAddress!, t.baseAddress!, x.c, hw) }
            n = hw * x.c
        }
    }

    public static func fromTokens(_ t: [Float], c: Int, h: Int, w: Int) -> FeatureMap {
        let hw = h * w
        precondition(t.count == hw * c)
        var x = FeatureMap(uninitializedC: c, h: h, w: w)
        x.data.withUnsafeMutableBufferPointer { xp in t.withUnsafeBufferPointer { lidb_transpose($0.baseAddress!, xp.baseAddress!, hw, c) } }
        return x
    }
}
