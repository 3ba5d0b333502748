/// The portable LiDB basis generator `lidb-basis-1` (spec/basis.md): the same seed gives the same
/// bits on every machine, using only correctly rounded binary64 operations in a fixed order.
public enum Basis {
    public static let generatorName = "lidb-basis-1"

    @inline(__always) static func mix64(_ z0: UInt64) -> UInt64 {
        var z = (z0 ^ (z0 >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for c in bytes { h = (h ^ UInt64(c)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    /// The stream key of a layer's `down` or `up` basis.
    public static func key(seed: UInt64, layer: String, role: String) -> UInt64 {
        mix64(mix64(seed) ^ fnv1a64(Array(layer.utf8) + [0] + Array(role.utf8)))
    }

    /// Value `i` of the stream with key `k`, exactly in [−1, 1).
    @inline(__always) static func value(_ k: UInt64, _ i: UInt64) -> Double {
        let w = mix64(k &+ (i &+ 1) &* 0x9E37_79B9_7F4A_7C15)
        return 2 * (Double(w >> 11) * 0x1p-53) - 1
    }

    /// Dot product with four partial sums (lane = index mod 4), combined as (s0+s1)+(s2+s3).
    @inline(__always)
    static func dot(_ x: UnsafePointer<Double>, _ y: UnsafePointer<Double>, _ n: Int) -> Double {
        var acc = SIMD4<Double>(repeating: 0)
        var c = 0
        while c + 4 <= n {
            let xv = UnsafeRawPointer(x + c).loadUnaligned(as: SIMD4<Double>.self)
            let yv = UnsafeRawPointer(y + c).loadUnaligned(as: SIMD4<Double>.self)
            let p = xv * yv
            acc = acc + p
            c += 4
        }
        var tail = acc
        var lane = 0
        while c < n {
            tail[lane] = tail[lane] + x[c] * y[c]
            c += 1
            lane += 1
        }
        return (tail[0] + tail[1]) + (tail[2] + tail[3])
    }

    /// `count` orthonormal vectors of length `n`, row-major, in binary64.
    public static func orthonormal(key k: UInt64, count: Int, n: Int) throws(BasisError) -> [Double] {
        guard count >= 1, n >= 1, count <= n else { throw .invalidSize("needs 1 ≤ count ≤ n, got count \(count), n \(n)") }
        guard n <= SubjectLimits.maxDimension, count <= SubjectLimits.maxBasisDimension else {
            throw .invalidSize("count \(count), n \(n) exceed the limits (n ≤ \(SubjectLimits.maxDimension), count ≤ \(SubjectLimits.maxBasisDimension))")
        }
        var q = [Double](repeating: 0, count: count * n)
        var v = [Double](repeating: 0, count: n)
        try q.withUnsafeMutableBufferPointer { (qb) throws(BasisError) in
            try v.withUnsafeMutableBufferPointer { (vb) throws(BasisError) in
                let qp = qb.baseAddress!, vp = vb.baseAddress!
                for r in 0..<count {
                    let base = UInt64(r) * UInt64(n)
                    for c in 0..<n { vp[c] = value(k, base + UInt64(c)) }
                    let n0 = dot(vp, vp, n).squareRoot()
                    for _ in 0..<2 {
                        for j in 0..<r {
                            let qj = qp + j * n
                            let d = dot(qj, vp, n)
                            let dv = SIMD4<Double>(repeating: d)
                            var c = 0
                            while c + 4 <= n {
                                let qv = UnsafeRawPointer(qj + c).loadUnaligned(as: SIMD4<Double>.self)
                                let vv = UnsafeRawPointer(vp + c).loadUnaligned(as: SIMD4<Double>.self)
                                let prod = dv * qv
                                UnsafeMutableRawPointer(vp + c).storeBytes(of: vv - prod, as: SIMD4<Double>.self)
                                c += 4
                            }
                            while c < n {
                                let prod = d * qj[c]
                                vp[c] = vp[c] - prod
                                c += 1
                            }
                        }
                    }
                    let nr = dot(vp, vp, n).squareRoot()
                    guard nr > n0 * 0x1p-20 else { throw .degenerate(row: r) }
                    let qr = qp + r * n
                    for c in 0..<n { qr[c] = vp[c] / nr }
                }
            }
        }
        return q
    }

    /// The bases of one layer, rounded to binary32: `down` is `[a', in]` (rows orthonormal), `up`
    /// is `[out, b']` (columns orthonormal), with `a' = min(a, in)`, `b' = min(b, out)`.
    public static func layer(seed: UInt64, name: String, out: Int, in inDim: Int, a: Int, b: Int) throws(BasisError) -> (down: [Float], up: [Float], a: Int, b: Int) {
        guard out >= 1, inDim >= 1, a >= 1, b >= 1 else { throw .invalidSize("layer [\(out), \(inDim)] with a \(a), b \(b): all must be at least 1") }
        let a2 = min(a, inDim), b2 = min(b, out)
        let d = try orthonormal(key: key(seed: seed, layer: name, role: "down"), count: a2, n: inDim)
        let u = try orthonormal(key: key(seed: seed, layer: name, role: "up"), count: b2, n: out)
        let down = d.map { Float($0) }
        var up = [Float](repeating: 0, count: out * b2)
        for r in 0..<b2 { for c in 0..<out { up[c * b2 + r] = Float(u[r * out + c]) } }
        return (down, up, a2, b2)
    }
}

public enum BasisError: Error, Equatable, CustomStringConvertible {
    case degenerate(row: Int)
    /// Dimensions outside 1 ≤ count ≤ n or beyond `SubjectLimits`.
    case invalidSize(String)
    public var description: String {
        switch self {
        case let .degenerate(row): return "degenerate basis at vector \(row)"
        case let .invalidSize(m): return "basis size: \(m)"
        }
    }
}
