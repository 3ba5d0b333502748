import CLidbSupport

/// Nearest-neighbour upsampling by 2 (`F.interpolate(scale_factor=2, mode="nearest")`).
public enum UpsampleNearest2x {
    public static func forward(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        try x.validate("nearest upsampling input")
        let h2 = try Size.product(x.h, 2, what: "nearest upsampling"), w2 = try Size.product(x.w, 2, what: "nearest upsampling")
        _ = try Size.product(x.c, h2, w2, what: "nearest upsampling")
        var y = FeatureMap(uninitializedC: x.c, h: h2, w: w2)
        let (h, w) = (x.h, x.w)
        x.data.withBase { xp in y.data.withMutableBase { yp in
            for r in 0..<(x.c * h) {
                let src = xp + r * w, dst = yp + r * 4 * w
                for j in 0..<w { dst[2 * j] = src[j]; dst[2 * j + 1] = src[j] }
                (dst + 2 * w).update(from: dst, count: 2 * w)
            }
        } }
        return y
    }

    /// Each input position receives the sum of the four output positions it was copied to.
    public static func backward(gradOutput gy: FeatureMap) throws(ComputeError) -> FeatureMap {
        try gy.validate("nearest upsampling gradient")
        guard gy.h % 2 == 0, gy.w % 2 == 0 else { throw ComputeError("nearest upsampling backward: gradient \(gy.h) × \(gy.w) is not 2× an input") }
        let (h, w) = (gy.h / 2, gy.w / 2)
        var gx = FeatureMap(uninitializedC: gy.c, h: h, w: w)
        gy.data.withBase { gb in gx.data.withMutableBase { lidb_upsample_nearest2x_backward(gb, $0, gy.c, h, w) } }
        return gx
    }
}
