/// Separable antialiased resampling of 8-bit RGB, as torch's `interpolate(..., antialias=True)`
/// computes it for uint8 images on the CPU (the path transformers' default image processors
/// take through torchvision): per-axis filter weights stretched by the downscaling factor,
/// normalised, quantised to fixed point; a horizontal pass to 8 bits, then a vertical pass.
/// The exact rules are in spec/image.md.
enum Resampler {
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
    static func weights(inSize: Int, outSize: Int, filter kind: ImagePreprocessing.Resample) -> Weights {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1)
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
                let w = filter(kind, (Double(j + lo) - center + 0.5) / filterScale)
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
        while precision < 22 {
            let next = Int(0.5 + wMax * Double(1 << (precision + 1)))
            if next >= (1 << 15) { break }
            precision += 1
        }
        let unit = Double(1 << precision)
        let fixed = real.map { w in Int32((w * unit + (w < 0 ? -0.5 : 0.5)).rounded(.towardZero)) }
        return Weights(start: start, count: count, taps: taps, weights: fixed, precision: precision)
    }

    @inline(__always)
    static func clip8(_ acc: Int, _ precision: Int) -> UInt8 {
        let v = acc >> precision
        return v < 0 ? 0 : (v > 255 ? 255 : UInt8(v))
    }

    /// Resizes interleaved RGB; a pass whose size does not change is skipped.
    static func resize(_ src: [UInt8], width: Int, height: Int, toWidth ow: Int, toHeight oh: Int,
                       filter kind: ImagePreprocessing.Resample) -> [UInt8] {
        var image = src
        var w = width
        if ow != width {
            let wt = weights(inSize: width, outSize: ow, filter: kind)
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
            image = out
            w = ow
        }
        if oh != height {
            let wt = weights(inSize: height, outSize: oh, filter: kind)
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
            image = out
        }
        return image
    }
}
