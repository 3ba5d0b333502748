/// A tensor to be written: its name, dtype and shape, and a producer that hands its bytes over in
/// one or more chunks (so a converted multi-GB tensor never needs to exist in memory at once).
public struct TensorSource {
    public var info: TensorInfo
    /// Calls the consumer with consecutive chunks totalling exactly `info.byteCount` bytes.
    public var produce: ((UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) -> Void
    /// How a `.lidb` writer should store this tensor; nil follows the writer's options.
    public var encodingHint: LidbWriter.TensorEncoding? = nil

    public init(info: TensorInfo, produce: @escaping ((UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) -> Void) {
        self.info = info
        self.produce = produce
    }

    /// Bytes already in memory (a view or an owned buffer), in the tensor's dtype.
    public static func bytes(_ info: TensorInfo, _ data: TensorBytes) -> TensorSource {
        precondition(data.count == info.byteCount, "byte count does not match the shape")
        return TensorSource(info: info) { (consume) throws(TensorFileError) in
            try consume(data.bytes)
            withExtendedLifetime(data.owner) {}
        }
    }

    public static func array(_ info: TensorInfo, _ data: [UInt8]) -> TensorSource {
        precondition(data.count == info.byteCount, "byte count does not match the shape")
        return TensorSource(info: info) { (consume) throws(TensorFileError) in
            try data.withBytes { (b) throws(TensorFileError) in try consume(b) }
        }
    }

    /// `data` (in `from`) converted to `info.dtype` in chunks, reporting lossy values to `report`.
    public static func converting(_ info: TensorInfo, _ data: TensorBytes, from: DType, file: String,
                                  report: ((ConversionReport) -> Void)? = nil) throws(TensorFileError) -> TensorSource {
        guard DTypeConversion.canConvert(from: from, to: info.dtype) else {
            throw TensorFileError(file: file, tensor: info.name, .unsupportedConversion(from: from.name, to: info.dtype.name))
        }
        if from == info.dtype { return .bytes(info, data) }
        let n = info.elementCount
        return TensorSource(info: info) { (consume) throws(TensorFileError) in
            let chunk = 1 << 18
            let scratch = OwnedBytes(count: min(n, chunk) * info.dtype.byteSize)
            var total = ConversionReport()
            var i = 0
            defer { withExtendedLifetime(data.owner) {} }
            do {
                while i < n {
                    let m = min(chunk, n - i)
                    let src = UnsafeRawBufferPointer(rebasing: data.bytes[(i * from.byteSize)..<((i + m) * from.byteSize)])
                    let dst = UnsafeMutableRawBufferPointer(rebasing: scratch.buffer[0..<(m * info.dtype.byteSize)])
                    total.add(DTypeConversion.convert(src, from: from, into: dst, to: info.dtype, count: m))
                    try consume(UnsafeRawBufferPointer(dst))
                    i += m
                }
            }
            report?(total)
        }
    }
}
