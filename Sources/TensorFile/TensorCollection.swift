/// Anything that holds named tensors: a safetensors file, a sharded checkpoint, a `.lidb` file.
public protocol TensorCollection: AnyObject {
    /// The path shown in messages.
    var path: String { get }
    /// "safetensors", "safetensors-sharded" or "lidb".
    var formatName: String { get }
    /// Tensors in file order.
    var tensors: [TensorInfo] { get }
    /// Metadata as typed JSON (safetensors' string map becomes an object of strings).
    var metadataJSON: JSONValue { get }
    /// The bytes of one tensor: a view into the mapped file when stored raw, decoded otherwise.
    func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes
    /// Calls `body` with the tensor's bytes in consecutive chunks of at most
    /// `MappedFile.chunkBytes` (each a whole number of elements for byte-sized types), for
    /// streaming copies and conversions. Files read with bounded I/O where they can (a file that
    /// shrinks meanwhile gives an error, not a bus error), and a `.lidb` tensor's checksum is
    /// computed over the same chunks: a damaged tensor throws after its last chunk, so whatever
    /// `body` wrote must be discarded (the atomic writers do).
    func streamTensor(_ name: String, _ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError)
    /// Where the tensor's bytes lie verbatim in a file (stored raw, not compressed), for copies
    /// the kernel can do; nil when they do not.
    func verbatimRange(_ name: String) -> VerbatimRange?
    /// Drops every page of the mapped file(s) from this process's memory (they stay in the page
    /// cache and are read again if touched): after a model's weights are copied out, so the file
    /// is not resident next to them.
    func releaseMappedPages()
}

extension TensorCollection {
    public func releaseMappedPages() {}
}

/// A tensor's bytes as they lie in a file, and the CRC-32C the file declares for them (nil when
/// it declares none, as in safetensors). A copy must check the declared checksum over the bytes
/// it copies, as `streamTensor` would.
public struct VerbatimRange: Sendable {
    public let file: MappedFile
    public let range: Range<Int>
    public let crc32c: UInt32?
    public init(file: MappedFile, range: Range<Int>, crc32c: UInt32?) {
        self.file = file
        self.range = range
        self.crc32c = crc32c
    }
}

extension TensorCollection {
    public func verbatimRange(_ name: String) -> VerbatimRange? { nil }

    public var totalBytes: UInt64 { tensors.reduce(0) { $0 + UInt64($1.byteCount) } }

    public func streamTensor(_ name: String, _ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) {
        try tensorBytes(name).withChunks(body)
    }
}

extension TensorBytes {
    /// Calls `body` with the bytes in consecutive chunks of at most `MappedFile.chunkBytes`.
    public func withChunks(_ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) {
        defer { withExtendedLifetime(owner) {} }
        var at = 0
        repeat {
            let m = min(MappedFile.chunkBytes, bytes.count - at)
            try body(UnsafeRawBufferPointer(rebasing: bytes[at..<at + m]))
            at += m
        } while at < bytes.count
    }

    /// Tells the kernel this process is done with the bytes for now when they are a view into a
    /// mapped file (no effect on owned memory). The view stays valid.
    public func releasePages() {
        (owner as? MappedFile)?.release(bytes)
    }
}

/// Opens any supported tensor file by its content: `.lidb` magic, a safetensors header, or a
/// `*.safetensors.index.json` shard index.
public func openTensorCollection(_ path: String, checksums: LidbFile.ChecksumPolicy = .smallFiles) throws(TensorFileError) -> TensorCollection {
    if path.hasSuffix(".index.json") { return try ShardedSafetensors(indexPath: path) }
    let map = try MappedFile(path: path)
    if map.bytes.count >= 8, LidbLayout.hasMagic(map.bytes) { return try LidbFile(map: map, checksums: checksums) }
    if path.hasSuffix(".lidb") { return try LidbFile(map: map, checksums: checksums) }
    if [".ckpt", ".pt", ".pth", ".bin"].contains(where: { path.hasSuffix($0) }) { return try TorchCheckpoint(map: map) }
    if path.hasSuffix(".safetensors") || looksLikeSafetensors(map.bytes) { return try SafetensorsFile(map: map) }
    throw TensorFileError(file: path, .unsupportedFormat("neither a .lidb nor a safetensors file"))
}

private func looksLikeSafetensors(_ b: UnsafeRawBufferPointer) -> Bool {
    b.count >= 9 && b[8] == UInt8(ascii: "{")
}
