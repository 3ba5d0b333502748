import Dispatch
import Synchronization

/// A tensor to be written: its name, dtype and shape, and a producer that hands its bytes over in
/// one or more chunks (so a converted multi-GB tensor never needs to exist in memory at once).
public struct TensorSource {
    public var info: TensorInfo
    /// Calls the consumer with consecutive chunks totalling exactly `info.byteCount` bytes.
    public var produce: ((UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) -> Void
    /// How a `.lidb` writer should store this tensor; nil follows the writer's options.
    public var encodingHint: LidbWriter.TensorEncoding? = nil
    /// When the bytes `produce` gives lie verbatim in a file, where: writers then let the kernel
    /// copy them (checking the declared checksum, if any, over the same bytes).
    public var verbatim: VerbatimRange? = nil

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

/// CRC-32Cs of verbatim file ranges, computed on another thread (with bounded reads) while the
/// writer has the kernel copy the same ranges, so checking them costs no time on the copy's path.
final class BackgroundChecksums: @unchecked Sendable {
    private var results: [UInt32?]
    private var failure: TensorFileError?
    private let cancelled = Atomic<Bool>(false)
    private let group = DispatchGroup()

    /// Starts on `ranges` (nil entries are skipped and give nil).
    init(_ ranges: [VerbatimRange?]) {
        results = Array(repeating: nil, count: ranges.count)
        guard ranges.contains(where: { $0 != nil }) else { return }
        group.enter()
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            defer { group.leave() }
            for (i, r) in ranges.enumerated() {
                guard let r else { continue }
                if cancelled.load(ordering: .relaxed) { return }
                var crc: UInt32 = 0
                do throws(TensorFileError) {
                    try r.file.readChunks(r.range) { (chunk) throws(TensorFileError) in crc = CRC32C.checksum(chunk, continuing: crc) }
                } catch {
                    failure = error
                    return
                }
                results[i] = crc
            }
        }
    }

    /// Waits for every checksum.
    func wait() throws(TensorFileError) -> [UInt32?] {
        group.wait()
        if let failure { throw failure }
        return results
    }

    deinit {
        cancelled.store(true, ordering: .relaxed)
        group.wait()
    }
}
