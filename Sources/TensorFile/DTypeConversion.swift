import CLidbSupport

/// What a lossy conversion did to values that do not fit the target type.
public struct ConversionReport: Equatable, Sendable {
    /// Finite inputs that became ±infinity (magnitude beyond the target's range).
    public var overflowed: Int = 0
    /// Outputs that are NaN (from NaN inputs, or from overflow in types without infinities).
    public var nans: Int = 0
    public init() {}
    public mutating func add(_ o: ConversionReport) {
        overflowed += o.overflowed
        nans += o.nans
    }
    public var isClean: Bool { overflowed == 0 && nans == 0 }
}

/// Element type conversions with IEEE round-to-nearest-even, bit-compatible with PyTorch's CPU
/// casts (including its NaN encodings: F16 keeps the sign with payload 0x200, BF16 is 0x7FC0).
/// F64 → F16/BF16 go through F32, as PyTorch does. Integer types convert only to themselves.
public enum DTypeConversion {
    public static func canConvert(from: DType, to: DType) -> Bool {
        if from == to { return true }
        if from.isSubByte || to.isSubByte { return false }
        let targets: Set<DType> = [.F32, .F16, .BF16]
        return from.isFloatingPoint && (targets.contains(to) || (from == .F64 && to == .F64))
    }

    /// Converts `count` elements from `src` (dtype `from`) into `dst` (dtype `to`).
    @discardableResult
    public static func convert(_ src: UnsafeRawBufferPointer, from: DType, into dst: UnsafeMutableRawBufferPointer,
                               to: DType, count: Int) -> ConversionReport {
        precondition(src.count >= count * from.byteSize && dst.count >= count * to.byteSize)
        var report = ConversionReport()
        if from == to {
            let n = count * from.bitSize / 8
            if n > 0 { dst.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: n) }
            return report
        }
        if let fast = fastConvert(src, from: from, into: dst, to: to, count: count) { return fast }
        // Decode to f32 (exact for every source but F64), then encode.
        @inline(__always) func load(_ i: Int) -> (Float, Bool) {
            switch from {
            case .F32: return (Float(bitPattern: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)), false)
            case .F16: return (f16ToF32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)), false)
            case .BF16: return (Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16), false)
            case .F8_E4M3: return (f8e4m3ToF32(src[i]), false)
            case .F8_E5M2: return (f16ToF32(UInt16(src[i]) << 8), false)
            case .F8_E8M0: return (f8e8m0ToF32(src[i]), false)
            case .F8_E4M3FNUZ: return (f8FnuzToF32(src[i], exponentBits: 4, bias: 8), false)
            case .F8_E5M2FNUZ: return (f8FnuzToF32(src[i], exponentBits: 5, bias: 16), false)
            case .F64:
                let d = Double(bitPattern: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))
                let f = Float(d)
                return (f, d.isFinite && f.isInfinite)
            default: fatalError("unsupported source dtype")
            }
        }
        for i in 0..<count {
            let (x, overflowedToF32) = load(i)
            if overflowedToF32 { report.overflowed += 1 }
            switch to {
            case .F32:
                dst.storeBytes(of: x.bitPattern, toByteOffset: 4 * i, as: UInt32.self)
                if x.isNaN { report.nans += 1 }
            case .F16:
                let h = f32ToF16(x)
                dst.storeBytes(of: h, toByteOffset: 2 * i, as: UInt16.self)
                if x.isFinite && (h & 0x7FFF) == 0x7C00 { report.overflowed += 1 }
                if x.isNaN { report.nans += 1 }
            case .BF16:
                let b = f32ToBF16(x)
                dst.storeBytes(of: b, toByteOffset: 2 * i, as: UInt16.self)
                if x.isFinite && (b & 0x7FFF) == 0x7F80 { report.overflowed += 1 }
                if x.isNaN { report.nans += 1 }
            default: fatalError("unsupported target dtype")
            }
        }
        return report
    }

    /// Vectorised paths for the common casts; nil when there is none for this pair or CPU.
    static func fastConvert(_ src: UnsafeRawBufferPointer, from: DType, into dst: UnsafeMutableRawBufferPointer,
                            to: DType, count: Int) -> ConversionReport? {
        guard count > 0, let s = src.baseAddress, let d = dst.baseAddress else { return nil }
        switch (from, to) {
        case (.F32, .F16):
            var overflow = 0, nans = 0
            let ok = lidb_f32_to_f16(s.assumingMemoryBound(to: Float.self), d.assumingMemoryBound(to: UInt16.self), count, &overflow, &nans)
            guard ok != 0 else { return nil }
            var r = ConversionReport()
            r.overflowed = overflow
            r.nans = nans
            return r
        case (.F16, .F32):
            guard lidb_f16_to_f32(s.assumingMemoryBound(to: UInt16.self), d.assumingMemoryBound(to: Float.self), count) != 0 else { return nil }
            return ConversionReport()
        case (.F32, .BF16):
            var r = ConversionReport()
            for i in 0..<count {
                let x = src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                let isNaN = (x & 0x7FFF_FFFF) > 0x7F80_0000
                let rounded = UInt16(truncatingIfNeeded: (x &+ 0x7FFF &+ ((x >> 16) & 1)) >> 16)
                dst.storeBytes(of: isNaN ? 0x7FC0 : rounded, toByteOffset: 2 * i, as: UInt16.self)
                if isNaN { r.nans += 1 } else if (x & 0x7FFF_FFFF) != 0x7F80_0000 && (rounded & 0x7FFF) == 0x7F80 { r.overflowed += 1 }
            }
            return r
        case (.BF16, .F32):
            for i in 0..<count {
                dst.storeBytes(of: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16, toByteOffset: 4 * i, as: UInt32.self)
            }
            var r = ConversionReport()
            for i in 0..<count where src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & 0x7FFF > 0x7F80 { r.nans += 1 }
            return r
        default:
            return nil
        }
    }

    /// IEEE binary16 → binary32 (exact).
    @inline(__always)
    public static func f16ToF32(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = UInt32(h >> 10) & 0x1F
        let man = UInt32(h & 0x3FF)
        if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (man << 13)) }
        if exp == 0 {
            if man == 0 { return Float(bitPattern: sign) }
            // Subnormal: value = man × 2^-24, exactly representable in f32.
            let v = Float(man) * 0x1p-24
            return Float(bitPattern: sign | v.bitPattern)
        }
        return Float(bitPattern: sign | ((exp + 112) << 23) | (man << 13))
    }

    /// binary32 → binary16, round to nearest even; NaN → sign | 0x7E00.
    @inline(__always)
    public static func f32ToF16(_ f: Float) -> UInt16 {
        let x = f.bitPattern
        let sign = UInt16((x >> 16) & 0x8000)
        let a = x & 0x7FFF_FFFF
        if a > 0x7F80_0000 { return sign | 0x7E00 }
        if a >= 0x4780_0000 { return sign | 0x7C00 }  // ≥ 65536: inf (also inf → inf)
        if a >= 0x3880_0000 {  // normal f16 range (≥ 2^-14)
            // Rebias exponent (127 → 15) and round the 13 dropped bits to nearest even.
            let m = a - 0x3800_0000  // subtract (127-15) << 23
            let rounded = m + 0x0FFF + ((m >> 13) & 1)
            return sign | UInt16(truncatingIfNeeded: rounded >> 13)  // may carry into inf: correct
        }
        if a < 0x3300_0000 { return sign }  // < 2^-25: rounds to zero (2^-25 itself ties to even 0)
        // Subnormal f16: value / 2^-24, rounded to nearest even integer.
        let e = Int(a >> 23)  // biased f32 exponent, 102...112
        let mant = (a & 0x007F_FFFF) | 0x0080_0000  // 24-bit significand
        let shift = UInt32(126 - e)  // result = mant >> shift with rounding (value = mant × 2^(e-150) / 2^-24)
        let q = mant >> shift
        let rem = mant & ((1 << shift) - 1)
        let half: UInt32 = 1 << (shift - 1)
        let r = q + ((rem > half || (rem == half && (q & 1) == 1)) ? 1 : 0)
        return sign | UInt16(r)
    }

    /// binary32 → bfloat16, round to nearest even; every NaN → 0x7FC0.
    @inline(__always)
    public static func f32ToBF16(_ f: Float) -> UInt16 {
        let x = f.bitPattern
        if f.isNaN { return 0x7FC0 }
        let rounded = x &+ 0x7FFF &+ ((x >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    /// F8 E8M0: an unsigned power of two 2^(b−127); 0xFF is NaN.
    @inline(__always)
    public static func f8e8m0ToF32(_ b: UInt8) -> Float {
        if b == 0xFF { return .nan }
        return Float(sign: .plus, exponent: Int(b) - 127, significand: 1)
    }

    /// The FNUZ 8-bit floats: no infinities, no negative zero, 0x80 is NaN.
    @inline(__always)
    public static func f8FnuzToF32(_ b: UInt8, exponentBits: Int, bias: Int) -> Float {
        if b == 0x80 { return .nan }
        let manBits = 7 - exponentBits
        let sign: Float = (b & 0x80) != 0 ? -1 : 1
        let exp = Int(b >> manBits) & ((1 << exponentBits) - 1)
        let man = Int(b) & ((1 << manBits) - 1)
        if exp == 0 { return sign * Float(man) * Float(sign: .plus, exponent: 1 - bias - manBits, significand: 1) }
        return sign * Float((1 << manBits) + man) * Float(sign: .plus, exponent: exp - bias - manBits, significand: 1)
    }

    /// F8 E4M3 ("fn": bias 7, no infinities, S.1111.111 is NaN) → binary32 (exact).
    @inline(__always)
    public static func f8e4m3ToF32(_ b: UInt8) -> Float {
        let sign: Float = (b & 0x80) != 0 ? -1 : 1
        let exp = Int((b >> 3) & 0xF)
        let man = Int(b & 0x7)
        if exp == 0xF && man == 0x7 { return sign < 0 ? -Float.nan : Float.nan }
        if exp == 0 { return sign * Float(man) * 0x1p-9 }
        return sign * Float(8 + man) * Float(sign: .plus, exponent: exp - 10, significand: 1)
    }
}
