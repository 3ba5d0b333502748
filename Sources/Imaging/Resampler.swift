/// Separable antialiased resampling of 8-bit RGB, as torch's `interpolate(..., antialias=True)`
/// computes it for uint8 images on the CPU (the path transformers' default image processors
/// take through torchvision): per-axis filter weights stretched by the downscaling factor,
/// normalised, quantised to fixed point; a horizontal pass to 8 bits, then a vertical pass.
/// The exact rules are in spec/image.md.
///
/// The same machinery with `Convention.pillow` is Pillow's `Image.resize` (PillowResize.swift,
/// spec/finetune.md §2): 22-bit weights always, the kernel argument multiplied by `1 / fs`, and a
/// pass order that depends on the sizes.
enum Resampler {
    /// Whose arithmetic the weights follow.
    enum Convention {
        /// torch / torchvision tensors (spec/image.md): the kernel argument divided by the filter
        /// scale; the largest precision ≤ 22 bits at which the largest weight fits 16 bits.
        case torch
        /// Pillow's Resample.c (spec/finetune.md §2): the argument multiplied by `1 / fs`; always
        /// 22 bits.
        case pillow
    }

    struct Weights {
        var start: [Int]
        var count: [Int]
        var taps: Int
        var weights: [Int32]  // start.count × taps, zero-padded
        var precision: Int
    }

    static func filter(_ kind: ImagePreprocessing.Resample, _ x: Double) -> Double {
        let x = abs(x)
        switch kind {
        case .bilinear:
            return x < 1 ? 1 - x : 0
        case .bicubic:
            let a = -0.5
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        }
    }

    static func support(_ kind: ImagePreprocessing.Resample) -> Double { kind == .bilinear ? 1 : 2 }

    /// Weights mapping `inSize` samples to `outSize`.
    static func weights(inSize: Int, outSize: Int, filter kind: ImagePreprocessing.Resample,
                        convention: Convention = .torch) -> Weights {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1)
        let inverseScale = 1 / filterScale
        let support = support(kind) * filterScale
        let taps = Int(support.rounded(.up)) * 2 + 1
        var start = [Int](repeating: 0, count: outSize), count = [Int](repeating: 0, count: outSize)
        var real = [Double](repeating: 0, count: outSize * taps)
        var wMax = 0.0
        for i in 0..<outSize {
            let center = (Double(i) + 0.5) * scale
            let lo = max(Int(center - support + 0.5), 0)
            let n = min(min(Int(center + support + 0.5), inSize) - lo, taps)
            var total = 0.0
            for j in 0..<max(n, 0) {
                let arg = Double(j + lo) - center + 0.5
                let w = filter(kind, convention == .torch ? arg / filterScale : arg * inverseScale)
                real[i * taps + j] = w
                total += w
            }
            for j in 0..<max(n, 0) {
                if total != 0 { real[i * taps + j] /= total }
                wMax = max(wMax, real[i * taps + j])
            }
            start[i] = lo
            count[i] = max(n, 0)
        }
        // Fixed point: the largest precision (at most 22 bits) at which the largest weight
        // still fits in a signed 16-bit integer.
        var precision = 0
        while convention == .torch, precision < 22 {
            let next = Int(0.5 + wMax * Double(1 << (precision + 1)))
            if next >= (1 << 15) { break }
            precision += 1
        }
        if convention == .pillow { precision = 22 }
        let unit = Double(1 << precision)
        let fixed = real.map { w in Int32((w * unit + (w < 0 ? -0.5 : 0.5)).rounded(.towardZero)) }
        return Weights(start: start, count: count, taps: taps, weights: fixed, precision: precision)
    }

    @inline(__always)
    static func clip8(_ acc: Int, _ precision: Int) -> UInt8 {
        let v = acc >> precision
        return v < 0 ? 0 : (v > 255 ? 255 : UInt8(v))
    }

    /// Resizes interleaved RGB with torch's rule: the horizontal pass first; a pass whose size
    /// does not change is skipped.
    static func resize(_ src: [UInt8], width: Int, height: Int, toWidth ow: Int, toHeight oh: Int,
                       filter kind: ImagePreprocessing.Resample) -> [UInt8] {
        var image = src
        if ow != width {
            image = horizontalPass(image, width: width, height: height, to: ow,
                                   weights: weights(inSize: width, outSize: ow, filter: kind))
        }
        if oh != height {
            image = verticalPass(image, width: ow, height: height, to: oh,
                                 weights: weights(inSize: height, outSize: oh, filter: kind))
        }
        return image
    }

    /// One horizontal pass: `width → ow` columns, every row, rounded to 8 bits.
    static func horizontalPass(_ image: [UInt8], width: Int, height: Int, to ow: Int, weights wt: Weights) -> [UInt8] {
        let half = 1 << (wt.precision - 1)
        var out = [UInt8](repeating: 0, count: ow * height * 3)
        for y in 0..<height {
            let row = y * width * 3
            for x in 0..<ow {
                var r = half, g = half, b = half
                let s = wt.start[x], base = x * wt.taps
                for j in 0..<wt.count[x] {
                    let k = Int(wt.weights[base + j]), p = row + (s + j) * 3
                    r += Int(image[p]) * k
                    g += Int(image[p + 1]) * k
                    b += Int(image[p + 2]) * k
                }
                let d = (y * ow + x) * 3
                out[d] = clip8(r, wt.precision)
                out[d + 1] = clip8(g, wt.precision)
                out[d + 2] = clip8(b, wt.precision)
            }
        }
        return out
    }

    /// One vertical pass: `height → oh` rows of `width` columns, rounded to 8 bits.
    static func verticalPass(_ image: [UInt8], width w: Int, height: Int, to oh: Int, weights wt: Weights) -> [UInt8] {
        let half = 1 << (wt.precision - 1)
        var out = [UInt8](repeating: 0, count: w * oh * 3)
        for y in 0..<oh {
            let s = wt.start[y], base = y * wt.taps
            for x in 0..<w {
                var r = half, g = half, b = half
                for j in 0..<wt.count[y] {
                    let k = Int(wt.weights[base + j]), p = ((s + j) * w + x) * 3
                    r += Int(image[p]) * k
                    g += Int(image[p + 1]) * k
                    b += Int(image[p + 2]) * k
                }
                let d = (y * w + x) * 3
                out[d] = clip8(r, wt.precision)
                out[d + 1] = clip8(g, wt.precision)
                out[d + 2] = clip8(b, wt.precision)
            }
        }
        return out
    }
}
