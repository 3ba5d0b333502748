/// Element types: every whole-byte type of safetensors 0.8, with its names and byte layouts
/// (little-endian; IEEE 754 for F16/F32/F64; F8_E4M3 is the "fn" variant: no infinities,
/// S.1111.111 is NaN; the FNUZ variants have no infinities, no negative zero and NaN = 0x80;
/// F8_E8M0 is an unsigned power of two, 0xFF = NaN; C64 is a pair of F32, real then imaginary).
public enum DType: String, CaseIterable, Sendable, Codable {
    case BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64
    case F8_E4M3, F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, C64
    /// Packed sub-byte floats (OCP MX formats): readable and writable as opaque bytes; a tensor's
    /// element count times the bit size must be a multiple of 8.
    case F4, F6_E2M3, F6_E3M2

    /// Size of one element in bits.
    public var bitSize: Int {
        switch self {
        case .F4: return 4
        case .F6_E2M3, .F6_E3M2: return 6
        default: return byteSize * 8
        }
    }

    /// True for types whose elements do not each fill whole bytes.
    public var isSubByte: Bool { self == .F4 || self == .F6_E2M3 || self == .F6_E3M2 }

    /// Size of one element in bytes (0 for the sub-byte types; use `bitSize`).
    public var byteSize: Int {
        switch self {
        case .F4, .F6_E2M3, .F6_E3M2: return 0
        case .BOOL, .U8, .I8, .F8_E4M3, .F8_E5M2, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: return 1
        case .I16, .U16, .F16, .BF16: return 2
        case .I32, .U32, .F32: return 4
        case .I64, .U64, .F64, .C64: return 8
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .F16, .BF16, .F32, .F64, .F8_E4M3, .F8_E5M2, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: return true
        default: return false
        }
    }

    /// Position in safetensors' `Dtype` declaration order; its writer sorts tensors by this,
    /// descending, then by name (byte order).
    var safetensorsOrder: Int {
        // BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
        // I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64 (sub-byte types not supported here).
        switch self {
        case .BOOL: return 0
        case .F4: return 1
        case .F6_E2M3: return 2
        case .F6_E3M2: return 3
        case .U8: return 4
        case .I8: return 5
        case .F8_E5M2: return 6
        case .F8_E4M3: return 7
        case .F8_E8M0: return 8
        case .F8_E4M3FNUZ: return 9
        case .F8_E5M2FNUZ: return 10
        case .I16: return 11
        case .U16: return 12
        case .F16: return 13
        case .BF16: return 14
        case .I32: return 15
        case .U32: return 16
        case .F32: return 17
        case .C64: return 18
        case .F64: return 19
        case .I64: return 20
        case .U64: return 21
        }
    }

    public init?(name: String) { self.init(rawValue: name) }
    public var name: String { rawValue }
}

/// Name, element type and shape of one tensor.
public struct TensorInfo: Equatable, Sendable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    /// Number of elements (1 for a scalar). Shapes are validated on load, so this cannot overflow
    /// for tensors that came from a file; for constructed ones it traps on overflow.
    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dtype.bitSize / 8 }
}

/// Byte size of a tensor, computed as the reference reader does: the checked product of the
/// dimensions, times the element size in bits (checked), which must be a whole number of bytes.
enum ByteCountResult { case bytes(UInt64), overflow, partialByte(bits: UInt64) }

func checkedByteCount(shape: [Int], dtype: DType) -> ByteCountResult {
    var n: UInt64 = 1
    for d in shape {
        guard d >= 0 else { return .overflow }
        let (p, o) = n.multipliedReportingOverflow(by: UInt64(d))
        if o { return .overflow }
        n = p
    }
    let (bits, o) = n.multipliedReportingOverflow(by: UInt64(dtype.bitSize))
    if o { return .overflow }
    if bits % 8 != 0 { return .partialByte(bits: bits) }
    let bytes = bits / 8
    return bytes <= UInt64(Int.max) ? .bytes(bytes) : .overflow
}

extension TensorFileError.Problem {
    static func from(_ r: ByteCountResult) -> TensorFileError.Problem? {
        switch r {
        case .bytes: return nil
        case .overflow: return .sizeOverflow
        case let .partialByte(bits): return .invalidShape("\(bits) bits of packed data is not a whole number of bytes")
        }
    }
}
