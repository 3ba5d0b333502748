/// A `.lidb` file opened for reading: memory-mapped, header validated and its checksum checked.
/// Raw tensors are handed out as views into the map; zstd tensors are decoded on demand.
public final class LidbFile: TensorCollection, @unchecked Sendable {
    public let path: String
    public let map: MappedFile
    public let layout: LidbLayout
    private let index: [String: Int]

    /// Files up to this size have every tensor checksum verified when opened.
    public static let verifyOnOpenLimit = 16 << 20

    public enum ChecksumPolicy: Sendable {
        /// Verify every tensor on open when the file is small (≤ 16 MiB); big files are verified
        /// per tensor only by `verify()`.
        case smallFiles
        case always
        case never
    }

    public convenience init(path: String, checksums: ChecksumPolicy = .smallFiles) throws(TensorFileError) {
        try self.init(map: MappedFile(path: path), checksums: checksums)
    }

    public init(map: MappedFile, checksums: ChecksumPolicy = .smallFiles) throws(TensorFileError) {
        path = map.path
        self.map = map
        layout = try LidbLayout.parse(map.bytes, file: map.path)
        var idx: [String: Int] = [:]
        for (i, e) in layout.entries.enumerated() { idx[e.info.name] = i }
        index = idx
        let check: Bool
        switch checksums {
        case .always: check = true
        case .never: check = false
        case .smallFiles: check = map.bytes.count <= Self.verifyOnOpenLimit
        }
        if check, let first = verify().first { throw first }
    }

    public var formatName: String { "lidb" }
    public var kind: String { layout.kind }
    public var metadata: JSONValue { layout.metadata }
    public var metadataJSON: JSONValue { layout.metadata }
    public var tensors: [TensorInfo] { layout.entries.map(\.info) }
    public func entry(_ name: String) -> LidbEntry? { index[name].map { layout.entries[$0] } }

    func storedBytes(_ e: LidbEntry) -> UnsafeRawBufferPointer {
        let start = Int(layout.dataOffset + e.offset)
        return UnsafeRawBufferPointer(rebasing: map.bytes[start..<start + Int(e.length)])
    }

    /// The tensor's bytes. Raw: a zero-copy view (64-byte aligned). Zstd: decoded into owned memory
    /// after its checksum is checked.
    public func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes {
        guard let i = index[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        let e = layout.entries[i]
        let stored = storedBytes(e)
        switch e.encoding {
        case .raw:
            return TensorBytes(owner: map, bytes: stored)
        case .zstd:
            let crc = CRC32C.checksum(stored)
            guard crc == e.crc32c else { throw TensorFileError(file: path, tensor: name, .tensorChecksumMismatch(stored: e.crc32c, computed: crc)) }
            do throws(TensorFileError.Problem) {
                return TensorBytes(owned: try Zstd.decompress(stored, expectedSize: e.info.byteCount))
            } catch { throw TensorFileError(file: path, tensor: name, error) }
        }
    }

    /// Checks every tensor checksum, that zstd tensors decode to their declared size, and that all
    /// padding is zero. Returns one error per damaged part (empty when intact).
    public func verify() -> [TensorFileError] {
        Self.verify(layout: layout, bytes: map.bytes, file: path, release: map.release)
    }

    /// `verify()` over a whole file held in memory, given its validated layout.
    public static func verify(layout: LidbLayout, bytes: UnsafeRawBufferPointer, file: String,
                              release: ((UnsafeRawBufferPointer) -> Void)? = nil) -> [TensorFileError] {
        var problems: [TensorFileError] = []
        let headerEnd = 64 + Int(layout.headerStoredLength)
        if let nz = firstNonZero(bytes, headerEnd..<Int(layout.dataOffset)) {
            problems.append(TensorFileError(file: file, .nonZeroPadding(offset: UInt64(nz))))
        }
        var cursor = Int(layout.dataOffset)
        for e in layout.entries {
            let start = Int(layout.dataOffset + e.offset)
            if let nz = firstNonZero(bytes, cursor..<start) {
                problems.append(TensorFileError(file: file, tensor: e.info.name, .nonZeroPadding(offset: UInt64(nz))))
            }
            let stored = UnsafeRawBufferPointer(rebasing: bytes[start..<start + Int(e.length)])
            let crc = CRC32C.checksum(stored)
            release?(stored)
            if crc != e.crc32c {
                problems.append(TensorFileError(file: file, tensor: e.info.name, .tensorChecksumMismatch(stored: e.crc32c, computed: crc)))
            } else if e.encoding == .zstd && e.info.byteCount > 0 {
                do throws(TensorFileError.Problem) {
                    try Zstd.validate(stored, expectedSize: e.info.byteCount)
                } catch { problems.append(TensorFileError(file: file, tensor: e.info.name, error)) }
            }
            cursor = start + Int(e.length)
        }
        return problems
    }
}

private func firstNonZero(_ b: UnsafeRawBufferPointer, _ r: Range<Int>) -> Int? {
    for i in r where b[i] != 0 { return i }
    return nil
}
