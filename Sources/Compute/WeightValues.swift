import CLidbDNNL
import CLidbSupport

/// The values of a layer's frozen weight as held in memory: binary32, or binary16 bit patterns
/// that are converted to binary32 each time the layer uses them. The conversion is exact, so a
/// layer computes the same values either way; F16 halves the resident memory of an F16 base's
/// weights at the cost of a conversion per use (spec/compute.md §8).
public enum WeightValues: Sendable, Equatable {
    case f32([Float])
    /// IEEE binary16 bit patterns.
    case f16([UInt16])
    /// bfloat16 bit patterns (the upper half of a binary32; converted back exactly).
    case bf16([UInt16])

    public var count: Int {
        switch self {
        case let .f32(v): return v.count
        case let .f16(v), let .bf16(v): return v.count
        }
    }

    /// Held in 16 bits (F16 or BF16).
    public var isHalf: Bool {
        switch self {
        case .f32: return false
        case .f16, .bf16: return true
        }
    }

    /// The values as binary32 (a conversion for F16 and BF16).
    public var floats: [Float] {
        switch self {
        case let .f32(v): return v
        case let .f16(v): return halfToFloat(v)
        case let .bf16(v): return bfloat16ToFloat(v)
        }
    }

    /// Calls `body` with the binary32 values: in place for F32, a converted temporary otherwise.
    @inline(__always)
    func withFloats<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        switch self {
        case let .f32(v): return try v.withBase(body)
        case let .f16(v): return try halfToFloat(v).withBase(body)
        case let .bf16(v): return try bfloat16ToFloat(v).withBase(body)
        }
    }

    /// Writes the values at `range` as binary32 to `out` (exact), without converting the rest:
    /// a layer that uses its weight a slice at a time holds one slice in binary32, not the whole.
    func convert(_ range: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        let n = range.count
        guard n > 0 else { return }
        switch self {
        case let .f32(v): v.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + range.lowerBound, count: n) }
        case let .f16(v):
            v.withUnsafeBufferPointer { p in
                let src = p.baseAddress! + range.lowerBound
                if lidb_f16_to_f32(src, out, n) == 0 { for i in 0..<n { out[i] = halfBitsToFloat(src[i]) } }
            }
        case let .bf16(v):
            v.withUnsafeBufferPointer { p in
                let src = p.baseAddress! + range.lowerBound
                for i in 0..<n { out[i] = Float(bitPattern: UInt32(src[i]) << 16) }
            }
        }
    }

    /// `C = op(W) · B + beta · C` for this weight `W` stored row-major as `rows × cols`: `op(W)`
    /// is `W` (`m = rows`, `k = cols`) or, `transposed`, `Wᵀ` (`m = cols`, `k = rows`); `B` is
    /// `k × n` with leading dimension `ldb`, `C` is `m × n` with `ldc`. Binary32 weights are used
    /// in place; a bfloat16 weight under `--precision bf16` goes to oneDNN as it is; any other
    /// 16-bit weight is converted one block of `op(W)`'s rows (at most `budget` values) at a
    /// time, each block's product writing its own rows of `C` — the same products as the whole
    /// converted weight, with a block's binary32 copy held instead of the layer's.
    func multiply(transposed: Bool, rows: Int, cols: Int, _ b: UnsafePointer<Float>, ldb: Int, n: Int,
                  beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int, budget: Int) {
        let m = transposed ? cols : rows, k = transposed ? rows : cols
        guard m > 0, n > 0 else { return }
        switch self {
        case let .f32(w):
            w.withUnsafeBufferPointer { wb in
                sgemm(transposed, false, m: m, n: n, k: k, wb.baseAddress!, lda: cols, b, ldb: ldb, beta: beta, c, ldc: ldc)
            }
            return
        case let .bf16(w) where ComputePrecision.current == .bf16:
            let done = w.withUnsafeBufferPointer { wb in
                bf16gemm(transposed, false, m: m, n: n, k: k, bfloat16: wb.baseAddress!, lda: cols, b, ldb: ldb, beta: beta, c, ldc: ldc)
            }
            if done { return }
        default: break
        }
        let block = min(m, max(1, budget / max(k, 1)))
        var buffer = [Float](unsafeUninitializedCapacity: block * k) { _, count in count = block * k }
        buffer.withUnsafeMutableBufferPointer { bp in
            let buf = bp.baseAddress!
            var first = 0
            while first < m {
                let mb = min(block, m - first)
                if transposed {
                    // Columns first ..< first + mb of every stored row, as an mb-wide k × mb block.
                    for r in 0..<rows { convert((r * cols + first)..<(r * cols + first + mb), into: buf + r * mb) }
                    sgemm(true, false, m: mb, n: n, k: k, buf, lda: mb, b, ldb: ldb, beta: beta, c + first * ldc, ldc: ldc)
                } else {
                    convert((first * cols)..<((first + mb) * cols), into: buf)
                    sgemm(false, false, m: mb, n: n, k: k, buf, lda: cols, b, ldb: ldb, beta: beta, c + first * ldc, ldc: ldc)
                }
                first += mb
            }
        }
    }

    /// `count` values rounded to bfloat16 as `roundedToBFloat16(_:)` does, with `fill` writing
    /// their binary32 values one chunk (a range of at most `chunk` indices) at a time into a
    /// scratch buffer: a weight converted from its stored dtype without a binary32 copy of the
    /// whole tensor.
    public static func roundedToBFloat16(count n: Int, chunk: Int = 1 << 16,
                                         _ fill: (Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows -> WeightValues {
        let size = min(max(chunk, 1), max(n, 1))
        var scratch = [Float](repeating: 0, count: size)
        var bits = [UInt16](repeating: 0, count: n)
        try scratch.withUnsafeMutableBufferPointer { sb in
            try bits.withUnsafeMutableBufferPointer { ob in
                var start = 0
                while start < n {
                    let end = min(n, start + size)
                    try fill(start..<end, sb.baseAddress!)
                    lidb_f32_to_bf16_rne(sb.baseAddress!, ob.baseAddress! + start, Int64(end - start))
                    start = end
                }
            }
        }
        return .bf16(bits)
    }

    /// Binary32 values rounded to bfloat16 (round to nearest even; NaN stays NaN).
    public static func roundedToBFloat16(_ v: [Float]) -> WeightValues {
        let n = v.count
        return .bf16([UInt16](unsafeUninitializedCapacity: n) { out, count in
            count = n
            guard n > 0, let o = out.baseAddress else { return }
            v.withUnsafeBufferPointer { lidb_f32_to_bf16_rne($0.baseAddress!, o, Int64(n)) }
        })
    }
}

/// bfloat16 bit patterns → binary32 (exact).
public func bfloat16ToFloat(_ h: [UInt16]) -> [Float] {
    let n = h.count
    return [Float](unsafeUninitializedCapacity: n) { out, count in
        count = n
        for i in 0..<n { out[i] = Float(bitPattern: UInt32(h[i]) << 16) }
    }
}

/// F16 bit patterns → binary32 (exact; F16C when the CPU has it, else bit manipulation).
public func halfToFloat(_ h: [UInt16]) -> [Float] {
    let n = h.count
    return [Float](unsafeUninitializedCapacity: n) { out, count in
        count = n
        guard n > 0, let o = out.baseAddress else { return }
        let done = h.withUnsafeBufferPointer { p -> Int32 in
            guard let b = p.baseAddress else { return 1 }
            return lidb_f16_to_f32(b, o, n)
        }
        if done == 0 { for i in 0..<n { o[i] = halfBitsToFloat(h[i]) } }
    }
}

/// One binary16 bit pattern as binary32 (exact, subnormals, infinities and NaN included).
@inline(__always)
func halfBitsToFloat(_ b: UInt16) -> Float {
    let sign = UInt32(b & 0x8000) << 16
    let exponent = Int((b >> 10) & 0x1F), mantissa = UInt32(b & 0x3FF)
    if exponent == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13)) }
    if exponent == 0 {
        // Zero or subnormal: mantissa · 2^-24, exact in binary32.
        let v = Float(mantissa) * 0x1p-24
        return sign == 0 ? v : -v
    }
    return Float(bitPattern: sign | (UInt32(exponent - 15 + 127) << 23) | (mantissa << 13))
}
