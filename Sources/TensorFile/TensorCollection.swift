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
}

extension TensorCollection {
    public var totalBytes: UInt64 { tensors.reduce(0) { $0 + UInt64($1.byteCount) } }
}

extension TensorBytes {
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
