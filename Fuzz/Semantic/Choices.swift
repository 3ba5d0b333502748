import TensorFile

/// The fuzzer's bytes read as a stream of decisions (in the manner of libFuzzer's
/// FuzzedDataProvider). Every read is total: an exhausted stream yields zeros, and a zero byte
/// always means the ordinary, consistent choice, so short inputs build valid files and the
/// mutations that matter are the ones that turn single decisions hostile.
struct Choices {
    let bytes: UnsafeRawBufferPointer
    private(set) var position = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isExhausted: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> UInt16 { UInt16(byte()) | UInt16(byte()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

    /// A value in `range` (bounded ranges only; one byte for spans up to 256, two beyond).
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        let span = UInt64(range.upperBound - range.lowerBound) + 1
        let raw = span <= 256 ? UInt64(byte()) : UInt64(u16())
        return range.lowerBound + Int(raw % span)
    }

    /// True with probability about `1/n` on random bytes; false on zero bytes.
    mutating func rarely(_ n: UInt8 = 8) -> Bool {
        let b = byte()
        return b != 0 && b % n == 0
    }

    /// True on about half of random bytes; false on zero bytes.
    mutating func bool() -> Bool { byte() & 1 == 1 }

    /// `items[0]` on a zero byte.
    mutating func pick<T>(_ items: [T]) -> T { items[Int(byte()) % items.count] }

    /// The consistent value, or (on a byte ≥ `threshold`) an entry of `pool`.
    mutating func orHostile<T>(_ consistent: T, _ pool: [T], threshold: UInt8 = 200) -> T {
        let b = byte()
        guard b >= threshold else { return consistent }
        return pool[Int(u16()) % pool.count]
    }
}

/// Values that have broken readers before: integer extremes and their neighbours, float
/// extremes, literals that are integers only in some spellings, and non-numbers.
enum Hostile {
    /// Integers as JSON literals (also `-0`, exponents and fractions that some readers round).
    static let integerLiterals: [String] = [
        "0", "-0", "1", "-1", "2", "3", "4", "5", "7", "8", "9", "16", "17", "31", "32", "64", "77", "255", "256",
        "1023", "1024", "1025", "4096", "65535", "65536", "65537", "1048576", "1048577",
        "2147483647", "2147483648", "-2147483648", "4294967295", "4294967296",
        "1152921504606846976", "4611686018427387904", "4611686018427387903", "9223372036854775807",
        "-9223372036854775808", "9223372036854775808", "18446744073709551615", "18446744073709551616",
        "1e3", "1.0", "2.5", "1e12", "1e18", "1e19", "1e308", "-1e308", "1e-310", "5e-324", "0.5", "-0.5",
    ]

    /// Sizes at the large end: products of two of them overflow 64 bits, or allocations of them fail.
    static let largeSizes: [Int64] = [1 << 62, Int64.max, 1 << 60, 1 << 40, 1 << 32, 1 << 31, Int64(Int32.max), 1 << 20, 1 << 16, 3_000_000_000]

    /// Floating-point literals for alphas, epsilons, betas, scale factors.
    static let doubleLiterals: [String] = [
        "0", "-0", "0.0", "-0.0", "1", "-1", "0.5", "2", "1e-5", "1e-12", "1e-30", "1e-45", "1e-310", "5e-324",
        "1e30", "-1e30", "3e38", "3.4028234663852886e38", "3.5e38", "1e39", "1e300", "1e308", "-1e308", "1.7976931348623157e308",
        "65504", "65520", "1e5", "0.99", "0.999999", "1.0000001", "1.5", "100", "1e12", "9007199254740993",
    ]

    /// Float values for tensor contents.
    static let floats: [Float] = [
        0, -0.0, 1, -1, 0.5, .nan, -.nan, .infinity, -.infinity, 1e30, -1e30, 3e38, -3e38, .greatestFiniteMagnitude,
        -.greatestFiniteMagnitude, .leastNonzeroMagnitude, .leastNormalMagnitude, 1e-30, 65504, 65520, 1e10, 127, 128,
        Float(bitPattern: 0x7FC0_0001), Float(bitPattern: 0xFF80_0001),
    ]

    /// Any JSON value, chosen to meet the reader's type switch at every branch.
    static func json(_ c: inout Choices) -> JSONValue {
        switch c.int(0...11) {
        case 0, 1, 2, 3: return .number(c.pick(integerLiterals))
        case 4, 5: return .number(c.pick(doubleLiterals))
        case 6: return .null
        case 7: return .bool(c.bool())
        case 8: return .string(c.pick(["", "0", "1", "nan", "inf", "epsilon", "v_prediction", "sample", "linear", "scaled_linear",
                                         "squaredcos_cap_v2", "leading", "trailing", "linspace", "gelu", "quick_gelu", "relu",
                                         "CrossAttnDownBlock2D", "DownBlock2D", "lidb-basis-1", "\u{0}", String(repeating: "x", count: 300)]))
        case 9: return .array((0..<c.int(0...5)).map { _ in .number(c.pick(integerLiterals)) })
        case 10: return .object([])
        default: return .array([])
        }
    }

    /// An integer literal: `consistent` usually, a hostile literal or another JSON value otherwise.
    static func integer(_ c: inout Choices, _ consistent: Int) -> JSONValue {
        let b = c.byte()
        if b < 200 { return .int(consistent) }
        if b < 248 { return .number(integerLiterals[Int(c.u16()) % integerLiterals.count]) }
        return json(&c)
    }

    /// A double literal: `consistent` usually, a hostile literal or another JSON value otherwise.
    static func double(_ c: inout Choices, _ consistent: Double) -> JSONValue {
        let b = c.byte()
        if b < 200 { return .double(consistent) }
        if b < 248 { return .number(doubleLiterals[Int(c.u16()) % doubleLiterals.count]) }
        return json(&c)
    }
}

/// Tensor contents: small values from a seeded generator, with a few positions overridden by
/// hostile values chosen from the input (so long tensors cost only a few input bytes).
struct Filler {
    var state: UInt64
    var overrides: [(Int, Float)] = []

    init(_ c: inout Choices, count: Int) {
        state = UInt64(c.u16()) &+ 0x9E37_79B9_7F4A_7C15
        let n = c.rarely(2) ? c.int(1...4) : 0
        for _ in 0..<n {
            let i = count > 0 ? c.int(0...Swift.max(count - 1, 0)) % count : 0
            overrides.append((i, c.pick(Hostile.floats)))
        }
        if !overrides.isEmpty { trace("values: of \(count), " + overrides.map { "[\($0.0)] = \($0.1)" }.joined(separator: ", ")) }
    }

    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int32(truncatingIfNeeded: state >> 33) >> 8) * 0x1p-24   // in [-0.5, 0.5)
    }

    mutating func values(_ count: Int) -> [Float] {
        var v = (0..<count).map { _ in next() }
        for (i, x) in overrides where i < count { v[i] = x }
        return v
    }
}

func floatBytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

/// `values` stored as `dtype` (F32, F16, BF16; I8 takes the values as already quantised).
func encode(_ values: [Float], as dtype: DType) -> [UInt8] {
    switch dtype {
    case .F32: return floatBytes(values)
    case .I8: return values.map { x in UInt8(bitPattern: Int8(x.isFinite ? max(-128, min(127, x.rounded())) : 0)) }
    default:
        var out = [UInt8](repeating: 0, count: values.count * dtype.byteSize)
        values.withUnsafeBytes { src in out.withUnsafeMutableBytes { _ = DTypeConversion.convert(src, from: .F32, into: $0, to: dtype, count: values.count) } }
        return out
    }
}
