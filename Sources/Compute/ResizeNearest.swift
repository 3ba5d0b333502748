/// Nearest-neighbour resizing to a given size (`F.interpolate(size=(h, w), mode="nearest")`, what
/// diffusers' up path does when a latent side is not a multiple of `2^(blocks − 1)`): output row
/// `i` reads input row `min(⌊i · s⌋, in − 1)` with `s = f32(in) / f32(out)` (binary32 product,
/// PyTorch's rule), and the same for columns; exactly `i >> 1` when `out = 2 · in`.
public enum ResizeNearest {
    /// The source index of each output index along one axis.
    static func sourceIndices(input n: Int, output m: Int) -> [Int] {
        if m == 2 * n { return (0..<m).map { $0 >> 1 } }
        let scale = Float(n) / Float(m)
        return (0..<m).map { i in min(max(Int((Float(i) * scale).rounded(.down)), 0), n - 1) }
    }

    static func check(_ what: String, c: Int, h: Int, w: Int, outH: Int, outW: Int) throws(ComputeError) {
        guard h > 0, w > 0, outH > 0, outW > 0 else {
            throw ComputeError("\(what): \(h) × \(w) to \(outH) × \(outW) (sizes must be positive)")
        }
        // Every index is below 2^24, where binary32 represents integers exactly.
        guard max(h, w, outH, outW) <= 1 << 24 else { throw ComputeError("\(what): \(h) × \(w) to \(outH) × \(outW) exceeds 2^24 per side") }
        _ = try Size.product(c, outH, outW, what: what)
        _ = try Size.product(c, h, w, what: what)
    }

    public static func forward(_ x: FeatureMap, h outH: Int, w outW: Int) throws(ComputeError) -> FeatureMap {
        try x.validate("nearest resize input")
        try check("nearest resize", c: x.c, h: x.h, w: x.w, outH: outH, outW: outW)
        let rows = sourceIndices(input: x.h, output: outH), cols = sourceIndices(input: x.w, output: outW)
        var y = FeatureMap(uninitializedC: x.c, h: outH, w: outW)
        let (c, h, w) = (x.c, x.h, x.w)
        x.data.withBase { xp in y.data.withMutableBase { yp in
            for ch in 0..<c {
                for i in 0..<outH {
                    let src = xp + (ch * h + rows[i]) * w, dst = yp + (ch * outH + i) * outW
                    for j in 0..<outW { dst[j] = src[cols[j]] }
                }
            }
        } }
        return y
    }

    /// `∂loss/∂x` for an input of `inputHeight × inputWidth`: each input position receives the sum
    /// of the gradients of the output positions that read it.
    public static func backward(gradOutput gy: FeatureMap, inputHeight h: Int, inputWidth w: Int) throws(ComputeError) -> FeatureMap {
        try gy.validate("nearest resize gradient")
        try check("nearest resize backward", c: gy.c, h: h, w: w, outH: gy.h, outW: gy.w)
        let rows = sourceIndices(input: h, output: gy.h), cols = sourceIndices(input: w, output: gy.w)
        var gx = try FeatureMap(zerosC: gy.c, h: h, w: w)
        let (c, oh, ow) = (gy.c, gy.h, gy.w)
        gy.data.withBase { gp in gx.data.withMutableBase { xp in
            for ch in 0..<c {
                for i in 0..<oh {
                    let src = gp + (ch * oh + i) * ow, dst = xp + (ch * h + rows[i]) * w
                    for j in 0..<ow { dst[cols[j]] += src[j] }
                }
            }
        } }
        return gx
    }
}
