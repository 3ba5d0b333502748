import Synchronization

/// A `.lidb` file opened for reading: memory-mapped, header validated and its checksum checked.
/// Raw tensors are handed out as views into the map, after their checksum is checked (see
/// `ChecksumPolicy`); zstd tensors are decoded on demand, after their checksum is checked.
public final class LidbFile: TensorCollection, @unchecked Sendable {
    public let path: String
    public let map: MappedFile

    public func releaseMappedPages() { map.release(0..<map.bytes.count) }
    public let layout: LidbLayout
    private let index: [String: Int]
    private let policy: ChecksumPolicy
    /// Per entry: its stored bytes were found to match their checksum.
    private let checked: Mutex<[Bool]>

    /// Files up to this size have every tensor checksum verified when opened.
    public static let verifyOnOpenLimit = 16 << 20

    public enum ChecksumPolicy: Sendable {
        /// Files of at most 16 MiB (subjects, hypernetworks): every tensor is verified on open.
        /// Bigger files: each tensor is verified the first time its bytes are handed out
        /// (`tensorBytes`, `streamTensor`), so opening a base stays cheap and damage is still
        /// found before any of its bytes are used or copied.
        case smallFiles
        /// Every tensor verified on open.
        case always
        /// No tensor checksum is checked (for `verify`, which reports every problem itself, and
        /// for callers that only read the table).
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
        let onOpen: Bool
        switch checksums {
        case .always: onOpen = true
        case .never: onOpen = false
        case .smallFiles: onOpen = map.bytes.count <= Self.verifyOnOpenLimit
        }
        policy = onOpen ? .always : checksums
        checked = Mutex([Bool](repeating: false, count: layout.entries.count))
        if onOpen {
            if let first = verify().first { throw first }
            checked.withLock { $0 = [Bool](repeating: true, count: $0.count) }
        }
    }

    public var formatName: String { "lidb" }
    public var kind: String { layout.kind }
    public var metadata: JSONValue { layout.metadata }
    public var metadataJSON: JSONValue { layout.metadata }
    public var tensors: [TensorInfo] { layout.entries.map(\.info) }
    public func entry(_ name: String) -> LidbEntry? { index[name].map { layout.entries[$0] } }

    func storedRange(_ e: LidbEntry) -> Range<Int> {
        let start = Int(layout.dataOffset + e.offset)
        return start..<start + Int(e.length)
    }

    func storedBytes(_ e: LidbEntry) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: map.bytes[storedRange(e)])
    }

    /// Whether entry `i` still needs its checksum checked before its bytes are handed out.
    private func needsCheck(_ i: Int) -> Bool {
        policy == .smallFiles && !checked.withLock { $0[i] }
    }

    private func markChecked(_ i: Int) {
        checked.withLock { $0[i] = true }
    }

    private func mismatch(_ e: LidbEntry, _ crc: UInt32) -> TensorFileError {
        TensorFileError(file: path, tensor: e.info.name, .tensorChecksumMismatch(stored: e.crc32c, computed: crc))
    }

    /// The tensor's bytes. Raw: a zero-copy view (64-byte aligned), its checksum checked first
    /// (once) unless the whole file was verified on open. Zstd: decoded into owned memory after its
    /// checksum is checked.
    public func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes {
        guard let i = index[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        let e = layout.entries[i]
        switch e.encoding {
        case .raw:
            if needsCheck(i) {
                // Bounded reads, not the map: a file that shrank gives an error, not a bus error.
                var crc: UInt32 = 0
                try map.readChunks(storedRange(e)) { (chunk) throws(TensorFileError) in crc = CRC32C.checksum(chunk, continuing: crc) }
                guard crc == e.crc32c else { throw mismatch(e, crc) }
                markChecked(i)
            }
            return TensorBytes(owner: map, bytes: storedBytes(e))
        case .zstd:
            let stored = storedBytes(e)
            let crc = CRC32C.checksum(stored)
            guard crc == e.crc32c else { throw mismatch(e, crc) }
            do throws(TensorFileError.Problem) {
                return TensorBytes(owned: try Zstd.decompress(stored, expectedSize: e.info.byteCount))
            } catch { throw TensorFileError(file: path, tensor: name, error) }
        }
    }

    /// Raw tensors are read with bounded I/O (`pread`, not the map) and their checksum is computed
    /// over the same chunks that `body` receives; a mismatch throws after the last chunk (unless
    /// the file was opened with `.never`), so whatever `body` wrote must then be discarded.
    /// Raw tensors only; the declared checksum comes along unless the file was opened with
    /// `checksums: .never`.
    public func verbatimRange(_ name: String) -> VerbatimRange? {
        guard let i = index[name] else { return nil }
        let e = layout.entries[i]
        guard e.encoding == .raw else { return nil }
        return VerbatimRange(file: map, range: storedRange(e), crc32c: policy == .never ? nil : e.crc32c)
    }

    public func streamTensor(_ name: String, _ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) {
        guard let i = index[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        let e = layout.entries[i]
        switch e.encoding {
        case .raw:
            var crc: UInt32 = 0
            try map.readChunks(storedRange(e)) { (chunk) throws(TensorFileError) in
                crc = CRC32C.checksum(chunk, continuing: crc)
                try body(chunk)
            }
            if policy != .never {
                guard crc == e.crc32c else { throw mismatch(e, crc) }
                markChecked(i)
            }
        case .zstd:
            let b = try tensorBytes(name)
            try b.withChunks(body)
        }
    }

    /// Checks every tensor checksum, that zstd tensors decode to their declared size, and that all
    /// padding is zero. Returns one error per damaged part (empty when intact). Tensor data and
    /// padding are read with bounded I/O, so a file truncated meanwhile gives `fileChanged`
    /// (and the check stops there) instead of a bus error.
    public func verify() -> [TensorFileError] {
        var problems: [TensorFileError] = []
        do throws(TensorFileError) {
            let headerEnd = 64 + Int(layout.headerStoredLength)
            if let nz = try firstNonZeroByte(headerEnd..<Int(layout.dataOffset)) {
                problems.append(TensorFileError(file: path, .nonZeroPadding(offset: UInt64(nz))))
            }
            var cursor = Int(layout.dataOffset)
            for e in layout.entries {
                let range = storedRange(e)
                if let nz = try firstNonZeroByte(cursor..<range.lowerBound) {
                    problems.append(TensorFileError(file: path, tensor: e.info.name, .nonZeroPadding(offset: UInt64(nz))))
                }
                var crc: UInt32 = 0
                try map.readChunks(range) { (chunk) throws(TensorFileError) in crc = CRC32C.checksum(chunk, continuing: crc) }
                if crc != e.crc32c {
                    problems.append(mismatch(e, crc))
                } else if e.encoding == .zstd && e.info.byteCount > 0 {
                    // The frame was just read in full, so the map covers it.
                    do throws(TensorFileError.Problem) {
                        try Zstd.validate(storedBytes(e), expectedSize: e.info.byteCount)
                    } catch { problems.append(TensorFileError(file: path, tensor: e.info.name, error)) }
                }
                cursor = range.upperBound
            }
        } catch {
            problems.append(error)
        }
        return problems
    }

    /// Offset of the first non-zero byte of `range` (read with bounded I/O), or nil.
    private func firstNonZeroByte(_ range: Range<Int>) throws(TensorFileError) -> Int? {
        var found: Int? = nil
        var at = range.lowerBound
        try map.readChunks(range) { (chunk) throws(TensorFileError) in
            if found == nil, let i = chunk.firstIndex(where: { $0 != 0 }) { found = at + i }
            at += chunk.count
        }
        return found
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
