/// Element types. Names and byte layouts are those of safetensors (little-endian, IEEE 754 for
/// floats; F8_E4M3 is the "fn" variant: no infinities, one NaN pattern per sign).
public enum DType: String, CaseIterable, Sendable, Codable {
    case BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64
    case F8_E4M3, F8_E5M2

    /// Size of one element in bytes.
    public var byteSize: Int {
        switch self {
        case .BOOL, .U8, .I8, .F8_E4M3, .F8_E5M2: return 1
        case .I16, .U16, .F16, .BF16: return 2
        case .I32, .U32, .F32: return 4
        case .I64, .U64, .F64: return 8
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .F16, .BF16, .F32, .F64, .F8_E4M3, .F8_E5M2: return true
        default: return false
        }
    }

    /// Position in safetensors' `Dtype` declaration order; its writer sorts tensors by this,
    /// descending, then by name (byte order).
    var safetensorsOrder: Int {
        switch self {
        case .BOOL: return 0
        case .U8: return 4
        case .I8: return 5
        case .F8_E5M2: return 6
        case .F8_E4M3: return 7
        case .I16: return 9
        case .U16: return 10
        case .F16: return 11
        case .BF16: return 12
        case .I32: return 13
        case .U32: return 14
        case .F32: return 15
        case .F64: return 17
        case .I64: return 18
        case .U64: return 19
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
    public var byteCount: Int { elementCount * dtype.byteSize }
}

/// Checked product of dimensions times an element size; nil on overflow or a negative dim.
func checkedByteCount(shape: [Int], elementSize: Int) -> UInt64? {
    var n: UInt64 = UInt64(elementSize)
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, o) = n.multipliedReportingOverflow(by: UInt64(d))
        if o { return nil }
        n = p
    }
    return n
}
