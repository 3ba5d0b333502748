import CLidbSupport

/// How `Conv2d` computes a convolution.
public enum ConvAlgorithm: Sendable {
    /// Winograd F(2×2, 3×3) for 3×3 stride-1 padding-1 kernels where it pays, im2col + GEMM otherwise.
    case automatic
    /// Always im2col + GEMM (a single GEMM for 1×1 stride-1 kernels).
    case direct
    /// Winograd for every 3×3 stride-1 padding-1 kernel whatever its size (others: direct).
    case winograd
}

/// A 2-D convolution with a square kernel and zero padding (PyTorch `nn.Conv2d`, groups 1,
/// dilation 1): `weight` `[out × in × k × k]`, optional `bias` `[out]`. Frozen: `backward`
/// returns the input gradient only.
public struct Conv2d: Sendable {
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
    /// The frozen weight `[out × in × k × k]` as held: binary32, or F16 converted at each call.
    public let values: WeightValues
    /// The weight as binary32 values (a conversion when it is held as F16).
    public var weight: [Float] { values.floats }
    public let bias: [Float]?
    /// The algorithm a call uses when it names none (`.automatic`; tests force one for a whole model).
    public var algorithm: ConvAlgorithm = .automatic

    public init(weight: [Float], bias: [Float]?, out: Int, in inDim: Int, kernel k: Int, stride: Int = 1, padding: Int) throws(ComputeError) {
        try self.init(values: .f32(weight), bias: bias, out: out, in: inDim, kernel: k, stride: stride, padding: padding)
    }

    /// A convolution whose weight may be held as F16 (`WeightValues.f16`), converted when it is used.
    public init(values: WeightValues, bias: [Float]?, out: Int, in inDim: Int, kernel k: Int, stride: Int = 1, padding: Int) throws(ComputeError) {
        let what = "conv2d \(inDim) → \(out), \(k)×\(k) stride \(stride) padding \(padding)"
        guard out > 0, inDim > 0, k > 0, stride > 0, padding >= 0, padding < k else { throw ComputeError("\(what): impossible configuration") }
        let n = try Size.product(out, inDim, k, k, what: what)
        guard values.count == n else { throw ComputeError("\(what): weight has \(values.count) values, expected \(n)") }
        if let bias, bias.count != out { throw ComputeError("\(what): bias has \(bias.count) values, expected \(out)") }
        _ = try Size.blas(try Size.product(inDim, k, k, what: what), what: what)
        _ = try Size.blas(out, what: what)
        outChannels = out; inChannels = inDim; kernel = k; self.stride = stride; self.padding = padding
        self.values = values; self.bias = bias
    }

    var what: String { "conv2d \(inChannels) → \(outChannels), \(kernel)×\(kernel) stride \(stride)" }

    /// The output size for an `h × w` input.
    public func outputSize(h: Int, w: Int) throws(ComputeError) -> (h: Int, w: Int) {
        let ph = try Size.sum(h, 2 * padding, what: what), pw = try Size.sum(w, 2 * padding, what: what)
        guard h > 0, w > 0, ph >= kernel, pw >= kernel else { throw ComputeError("\(what): input \(h) × \(w) is smaller than the kernel") }
        return ((ph - kernel) / stride + 1, (pw - kernel) / stride + 1)
    }

    var isWinogradShape: Bool { kernel == 3 && stride == 1 && padding == 1 }

    public func forward(_ x: FeatureMap, algorithm: ConvAlgorithm? = nil) throws(ComputeError) -> FeatureMap {
        try forward(x, algorithm: algorithm ?? self.algorithm, band: nil)
    }

    /// `band`: output positions per im2col band (tests), else from `budget`.
    func forward(_ x: FeatureMap, algorithm: ConvAlgorithm, band: Int?) throws(ComputeError) -> FeatureMap {
        try x.validate(what + " input", channels: inChannels)
        let (ho, wo) = try outputSize(h: x.h, w: x.w)
        _ = try Size.product(outChannels, ho, wo, what: what)
        _ = try Size.blas(ho * wo, what: what)
        if isWinogradShape && Conv2d.useWinograd(algorithm, in: inChannels, out: outChannels, h: x.h, w: x.w) {
            return Conv2d.winograd3x3(x, weight: values, bias: bias, out: outChannels)
        }
        return Conv2d.direct(x, weight: values, bias: bias, out: outChannels, kernel: kernel, stride: stride, padding: padding, ho: ho, wo: wo,
                             band: band)
    }

    /// `forward(norm.forward(x))`; for a 3×3 stride-1 padding-1 kernel computed with Winograd,
    /// the group norm (and its SiLU) is applied as the input transform reads `x`, so the
    /// normalised map is never stored. The input gradient is `norm.backward(backward(g), x)`.
    public func forward(normalizing x: FeatureMap, with norm: GroupNorm, algorithm: ConvAlgorithm? = nil) throws(ComputeError) -> FeatureMap {
        let algorithm = algorithm ?? self.algorithm
        try x.validate(what + " input", channels: inChannels)
        guard norm.channels == inChannels else { throw ComputeError("\(what): group norm over \(norm.channels) channels") }
        guard isWinogradShape, Conv2d.useWinograd(algorithm, in: inChannels, out: outChannels, h: x.h, w: x.w) else {
            return try forward(try norm.forward(x), algorithm: algorithm)
        }
        _ = try Size.product(outChannels, x.h, x.w, what: what)
        let (scale, shift) = norm.coefficients(x)
        return Conv2d.winograd3x3(x, weight: values, bias: bias, out: outChannels, normalized: (scale, shift, norm.silu))
    }

    /// `forward(UpsampleNearest2x.forward(x))`; with Winograd the input is read upsampled on the
    /// fly. The input gradient is `UpsampleNearest2x.backward(backward(g, 2h, 2w))`.
    public func forward(upsampling x: FeatureMap, algorithm: ConvAlgorithm? = nil) throws(ComputeError) -> FeatureMap {
        let algorithm = algorithm ?? self.algorithm
        try x.validate(what + " input", channels: inChannels)
        let h2 = try Size.product(x.h, 2, what: what), w2 = try Size.product(x.w, 2, what: what)
        guard isWinogradShape, Conv2d.useWinograd(algorithm, in: inChannels, out: outChannels, h: h2, w: w2) else {
            return try forward(try UpsampleNearest2x.forward(x), algorithm: algorithm)
        }
        _ = try Size.product(outChannels, h2, w2, what: what)
        _ = try Size.blas(h2 * w2, what: what)
        return Conv2d.winograd3x3(x, weight: values, bias: bias, out: outChannels, upsample: true)
    }

    /// `∂loss/∂x` for an input of `inputHeight × inputWidth` (the output size alone does not
    /// determine it for strides above 1). 3×3 stride-1 padding-1 where Winograd pays: the
    /// convolution of the gradient with the flipped, transposed kernel, by Winograd; 1×1 stride 1:
    /// one GEMM `Wᵀ · gy`; otherwise the GEMM `Wᵀ · gy` per band of output positions scattered back
    /// by col2im.
    public func backward(gradOutput gy: FeatureMap, inputHeight h: Int, inputWidth w: Int,
                         algorithm: ConvAlgorithm? = nil) throws(ComputeError) -> FeatureMap {
        try backward(gradOutput: gy, inputHeight: h, inputWidth: w, algorithm: algorithm ?? self.algorithm, band: nil)
    }

    func backward(gradOutput gy: FeatureMap, inputHeight h: Int, inputWidth w: Int, algorithm: ConvAlgorithm,
                  band bandSize: Int?) throws(ComputeError) -> FeatureMap {
        let (ho, wo) = try outputSize(h: h, w: w)
        try gy.validate(what + " gradient", channels: outChannels)
        guard gy.h == ho, gy.w == wo else { throw ComputeError("\(what): gradient \(gy.h) × \(gy.w), output is \(ho) × \(wo)") }
        _ = try Size.product(inChannels, h, w, what: what)
        _ = try Size.blas(h * w, what: what)
        let c = inChannels, out = outChannels
        // 3×3 stride 1 padding 1: Winograd on the flipped, transposed kernel, transformed straight
        // from the weight (no flipped copy); where Winograd does not pay, the GEMM + col2im below.
        if isWinogradShape && Conv2d.useWinograd(algorithm, in: out, out: c, h: h, w: w) {
            return Conv2d.winograd3x3(gy, weight: values, bias: nil, out: c, flipped: true)
        }
        var gx = FeatureMap(uninitializedC: c, h: h, w: w)
        let cols = ho * wo
        if kernel == 1 && stride == 1 && padding == 0 {
            gy.data.withBase { gb in gx.data.withMutableBase { xb in
                values.multiply(transposed: true, rows: out, cols: c, gb, ldb: cols, n: cols, beta: 0, xb, ldc: cols, budget: Conv2d.budget)
            } }
            return gx
        }
        let rows = c * kernel * kernel
        let band = min(cols, max(1, bandSize ?? max(64, Conv2d.budget / max(rows, 1))))
        var col = [Float](unsafeUninitializedCapacity: rows * band) { _, n in n = rows * band }
        gx.data.withMutableBase { xb in
            xb.update(repeating: 0, count: c * h * w)
            let xs = UnsafeSendable(xb)
            gy.data.withBase { gb in col.withMutableBase { cb in
                let cs = UnsafeSendable(cb)
                var start = 0
                while start < cols {
                    let n = min(band, cols - start), first = start
                    // gcol [rows × n] = Wᵀ [rows × out] · gy[:, start ..< start + n].
                    values.multiply(transposed: true, rows: out, cols: rows, gb + start, ldb: cols, n: n, beta: 0, cb, ldc: n,
                                    budget: Conv2d.budget)
                    let (k, s, p) = (kernel, stride, padding)
                    Parallel.ranges(c, work: rows * n) { r in
                        lidb_col2im(cs.p, c, h, w, k, s, p, first, n, r.lowerBound, r.upperBound, xs.p)
                    }
                    start += n
                }
            } }
        }
        return gx
    }

    // MARK: - Kernels

    /// The most floats an im2col band holds (16 MiB).
    public static let budget = 4 << 20
    /// The most floats each Winograd buffer (transformed weights, input tiles, products, a
    /// converted weight block) holds (8 MiB): four of them per call, and generation runs two
    /// calls at once (the CFG halves).
    public static let winogradBudget = 2 << 20

    static func useWinograd(_ algorithm: ConvAlgorithm, in c: Int, out: Int, h: Int, w: Int) -> Bool {
        switch algorithm {
        case .direct: return false
        case .winograd: return true
        case .automatic: return winogradPays(in: c, out: out, h: h, w: w)
        }
    }

    /// Winograd F(2×2, 3×3) beats one im2col GEMM (with 2.25× the multiplications) when both
    /// channel counts and the number of output tiles are large enough: below 64 tiles the
    /// per-call weight transform (16·out·in values) costs more than it saves.
    static func winogradPays(in c: Int, out: Int, h: Int, w: Int) -> Bool {
        c >= 16 && out >= 16 && ((h + 1) / 2) * ((w + 1) / 2) >= 64
    }

    /// im2col + GEMM, in bands of output positions of at most `budget` floats; a single GEMM
    /// for 1×1 stride-1 kernels. Shapes checked by the caller.
    static func direct(_ x: FeatureMap, weight: WeightValues, bias: [Float]?, out: Int, kernel k: Int, stride: Int, padding: Int,
                       ho: Int, wo: Int, band bandSize: Int? = nil) -> FeatureMap {
        let cols = ho * wo, rows = x.c * k * k
        var y = FeatureMap(uninitializedC: out, h: ho, w: wo)
        y.data.withMutableBase { yb in
            if let bias {
                bias.withBase { bb in for o in 0..<out { (yb + o * cols).update(repeating: bb[o], count: cols) } }
            }
            let beta: Float = bias == nil ? 0 : 1
            if k == 1 && stride == 1 && padding == 0 {
                x.data.withBase { xb in
                    weight.multiply(transposed: false, rows: out, cols: x.c, xb, ldb: cols, n: cols, beta: beta, yb, ldc: cols, budget: budget)
                }
                return
            }
            let band = min(cols, max(1, bandSize ?? max(64, budget / max(rows, 1))))
            var col = [Float](unsafeUninitializedCapacity: rows * band) { _, n in n = rows * band }
            x.data.withBase { src in col.withMutableBase { cb in
                var start = 0
                while start < cols {
                    let n = min(band, cols - start)
                    lidb_im2col(src, x.c, x.h, x.w, k, stride, padding, start, n, cb)
                    weight.multiply(transposed: false, rows: out, cols: rows, cb, ldb: n, n: n, beta: beta, yb + start, ldc: cols, budget: budget)
                    start += n
                }
            } }
        }
        return y
    }

    /// A stride-1 padding-1 3×3 convolution with Winograd F(2×2, 3×3): weights, input tiles and
    /// outputs transformed in C, the 16 products as GEMMs, tiles in bands and output channels in
    /// blocks so the transformed buffers stay within `budget` floats each. `normalized` applies a
    /// per-channel scale and shift (and SiLU) to the input as it is read; `upsample` reads the
    /// input upsampled 2× by nearest neighbour. `flipped`: `weight` is `[x.c × out × 3 × 3]` and
    /// the kernel used is its flipped transpose (the input gradient of that convolution). Shapes
    /// checked by the caller.
    /// A weight held in 16 bits is converted one block of output channels at a time (for
    /// `flipped`, the block's slice of every stored row), so the binary32 copy held is one
    /// block's, not the layer's.
    static func winograd3x3(_ x: FeatureMap, weight values: WeightValues, bias: [Float]?, out: Int,
                            normalized: (scale: [Float], shift: [Float], silu: Bool)? = nil, upsample: Bool = false,
                            flipped: Bool = false, budget: Int = Conv2d.winogradBudget) -> FeatureMap {
        let c = x.c, h = upsample ? 2 * x.h : x.h, w = upsample ? 2 * x.w : x.w
        let scale = normalized?.scale ?? [], shift = normalized?.shift ?? [], silu: Int32 = normalized?.silu == true ? 1 : 0
        let upFlag: Int32 = upsample ? 1 : 0
        let tiles = ((h + 1) / 2) * ((w + 1) / 2)
        let band = min(tiles, max(16, budget / (16 * max(c, out))))
        let block = min(out, max(16, budget / (16 * c)))
        var y = FeatureMap(uninitializedC: out, h: h, w: w)
        var u = [Float](unsafeUninitializedCapacity: 16 * block * c) { _, n in n = 16 * block * c }
        var v = [Float](unsafeUninitializedCapacity: 16 * c * band) { _, n in n = 16 * c * band }
        var m = [Float](unsafeUninitializedCapacity: 16 * block * band) { _, n in n = 16 * block * band }
        // Binary32 weights: used in place (f32, or the whole converted for `flipped`); otherwise
        // one block's slice converted per block into `slice`.
        let perBlock = values.isHalf
        let weight: [Float] = perBlock ? [] : values.floats
        var slice = [Float](unsafeUninitializedCapacity: perBlock ? block * c * 9 : 0) { _, n in n = perBlock ? block * c * 9 : 0 }
        let biasValues = bias ?? []
        x.data.withBase { xp in weight.withBase { wp in y.data.withMutableBase { yp in slice.withMutableBase { slp in
        u.withMutableBase { up in v.withMutableBase { vp in m.withMutableBase { mp in
        biasValues.withBase { bp in scale.withBase { sp in shift.withBase { tp in
            let ss = normalized == nil ? nil : UnsafeSendable(sp), ts = normalized == nil ? nil : UnsafeSendable(tp)
            let (xs, ys) = (UnsafeSendable(xp), UnsafeSendable(yp))
            let (us, vs, ms) = (UnsafeSendable(up), UnsafeSendable(vp), UnsafeSendable(mp))
            let bs = bias == nil ? nil : UnsafeSendable(bp)
            var o0 = 0
            while o0 < out {
                let ob = min(block, out - o0), base = o0
                if perBlock && flipped {
                    // Stored [c × out × 3 × 3]: outputs base ..< base + ob of every stored row, as [c × ob × 3 × 3].
                    for r in 0..<c { values.convert(((r * out + base) * 9)..<((r * out + base + ob) * 9), into: slp + r * ob * 9) }
                } else if perBlock {
                    values.convert((base * c * 9)..<((base + ob) * c * 9), into: slp)
                }
                let ws = UnsafeSendable(UnsafePointer(perBlock ? slp : UnsafeMutablePointer(mutating: wp + (flipped ? 0 : base * c * 9))))
                let (rowWidth, first) = perBlock ? (ob, 0) : (out, base)
                Parallel.ranges(ob, work: ob * c * 16) { r in
                    if flipped {
                        lidb_winograd_weights_flipped(ws.p, rowWidth, ob, c, first, r.lowerBound, r.upperBound, us.p)
                    } else {
                        lidb_winograd_weights(ws.p, ob, c, r.lowerBound, r.upperBound, us.p)
                    }
                }
                var t0 = 0
                while t0 < tiles {
                    let nt = min(band, tiles - t0), first = t0
                    Parallel.ranges(c, work: c * nt * 16) { r in
                        lidb_winograd_input(xs.p, c, h, w, first, nt, r.lowerBound, r.upperBound, ss?.p, ts?.p, silu, upFlag, vs.p)
                    }
                    // The 16 independent products on the cores, each with single-threaded BLAS
                    // (cheaper than splitting every product over the threads).
                    let jobs = min(16, max(1, Parallel.cores))
                    Parallel.forEach(jobs) { job in
                        for xi in Swift.stride(from: job, to: 16, by: jobs) {
                            sgemm(false, false, m: ob, n: nt, k: c, us.p + xi * ob * c, lda: c, vs.p + xi * c * nt, ldb: nt,
                                  ms.p + xi * ob * nt, ldc: nt)
                        }
                    }
                    Parallel.ranges(ob, work: ob * nt * 16) { r in
                        lidb_winograd_output(ms.p, ob, h, w, first, nt, r.lowerBound, r.upperBound, bs.map { $0.p + base }, ys.p + base * h * w)
                    }
                    t0 += nt
                }
                o0 += ob
            }
        } } } }
        } } }
        } } }
        return y
    }
}
