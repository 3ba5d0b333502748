/// Writes `.lidb` files atomically and in one streaming pass over the tensor data.
///
/// Raw tensors stream from their sources straight to disk; their checksums are computed on the way
/// and patched into the header at the end (checksums have a fixed-width text form, so the header's
/// length does not change). Compressed tensors are encoded one at a time before the header is laid
/// out, since their stored length must be known.
public enum LidbWriter {
    public enum TensorEncoding: Sendable, Equatable {
        case raw
        /// zstd at the given level, always.
        case zstd(level: Int32)
        /// zstd when it saves at least 1/8 of the bytes, raw otherwise.
        case zstdIfSmaller(level: Int32)
    }

    public struct Options: Sendable {
        public var encoding: TensorEncoding
        /// Compress the header with zstd when that makes it smaller (needs every checksum before
        /// writing, so raw tensors are read twice; meant for small files).
        public var compressHeader: Bool
        /// Flush the file to disk before renaming it into place (see `AtomicFileWriter`).
        public var sync: Bool
        public init(encoding: TensorEncoding = .raw, compressHeader: Bool = false, sync: Bool = true) {
            self.encoding = encoding
            self.compressHeader = compressHeader
            self.sync = sync
        }
    }

    /// Writes a file of `kind` with typed `metadata` (a JSON object) and `tensors` in the given order.
    ///
    /// `finalMetadata`, when given, is called after all tensor data is written and replaces the
    /// metadata; it must serialise to exactly as many bytes as `metadata` (use fixed-width
    /// placeholders, e.g. for digests computed while streaming). Not combinable with a compressed header.
    ///
    /// Raw tensors whose bytes lie verbatim in a file (`TensorSource.verbatim`) are copied by the
    /// kernel while their checksums are computed from the same file on another thread; a checksum
    /// their file declares must match (otherwise the write fails, no output). `options.sync`
    /// false skips the fsync (see `AtomicFileWriter`).
    public static func write(to path: String, kind: String, metadata: JSONValue = .object([]), tensors: [TensorSource],
                             options: Options = .init(), progress: ((Int, Int) -> Void)? = nil,
                             finalMetadata: (() -> JSONValue)? = nil) throws(TensorFileError) {
        func fail(_ p: TensorFileError.Problem, _ t: String? = nil) -> TensorFileError { TensorFileError(file: path, tensor: t, p) }
        guard case .object = metadata else { throw fail(.wrongType(field: "metadata", expected: "an object")) }
        if finalMetadata != nil && options.compressHeader {
            throw fail(.invalidArgument("metadata finalised after the data cannot go into a compressed header"))
        }
        guard LidbFormat.isValidKind(kind) else { throw fail(.unknownKind(kind)) }
        var names = Set<String>()
        for t in tensors {
            let n = t.info.name
            guard names.insert(n).inserted else { throw fail(.duplicateTensor, n) }
            guard !n.isEmpty, n.utf8.count <= LidbFormat.maxNameBytes, !n.utf8.contains(0) else {
                throw fail(.invalidName(reason: "names must be 1–\(LidbFormat.maxNameBytes) bytes without NUL"), n)
            }
            guard t.info.shape.count <= LidbFormat.maxRank else { throw fail(.invalidShape("rank exceeds \(LidbFormat.maxRank)"), n) }
        }

        // 1. Stored form of each tensor: compressed bytes now, or raw (streamed later).
        struct Planned { var length: UInt64; var encoding: LidbEncoding; var stored: [UInt8]?; var crc: UInt32? }
        var planned: [Planned] = []
        planned.reserveCapacity(tensors.count)
        for t in tensors {
            let level: Int32?
            let encoding = t.encodingHint ?? options.encoding
            switch encoding {
            case .raw: level = nil
            case let .zstd(l), let .zstdIfSmaller(l): level = l
            }
            guard let level, t.info.byteCount > 0, UInt64(t.info.byteCount) <= LidbFormat.maxCompressedTensorSize else {
                planned.append(Planned(length: UInt64(t.info.byteCount), encoding: .raw, stored: nil, crc: nil))
                continue
            }
            let raw = try collect(t, path: path)
            let packed: [UInt8]
            do throws(TensorFileError.Problem) {
                packed = try raw.withBytes { (b) throws(TensorFileError.Problem) in try Zstd.compress(b, level: level) }
            } catch { throw fail(error, t.info.name) }
            if case .zstdIfSmaller = encoding, packed.count > raw.count - raw.count / 8 {
                planned.append(Planned(length: UInt64(raw.count), encoding: .raw, stored: raw, crc: CRC32C.checksum(raw)))
            } else {
                planned.append(Planned(length: UInt64(packed.count), encoding: .zstd, stored: packed, crc: CRC32C.checksum(packed)))
            }
        }
        if options.compressHeader {
            for i in planned.indices where planned[i].crc == nil {
                var crc: UInt32 = 0
                try tensors[i].produce { (chunk) throws(TensorFileError) in crc = CRC32C.checksum(chunk, continuing: crc) }
                planned[i].crc = crc
            }
        }

        // 2. Layout.
        var offsets: [UInt64] = []
        var cursor: UInt64 = 0
        for p in planned {
            let o = align64(cursor)
            offsets.append(o)
            cursor = o + p.length
        }
        let dataLength = cursor
        func header(_ crcs: [UInt32?], metadata: JSONValue = metadata) -> [UInt8] {
            var rows: [JSONValue] = []
            rows.reserveCapacity(tensors.count)
            for (i, t) in tensors.enumerated() {
                rows.append(.object([
                    ("name", .string(t.info.name)),
                    ("dtype", .string(t.info.dtype.name)),
                    ("shape", .array(t.info.shape.map { .int($0) })),
                    ("offset", .int(offsets[i])),
                    ("length", .int(planned[i].length)),
                    ("encoding", .string(planned[i].encoding.rawValue)),
                    ("crc32c", .string(hex8(crcs[i] ?? 0))),
                ]))
            }
            return JSONValue.object([("kind", .string(kind)), ("metadata", metadata), ("tensors", .array(rows))]).serialized()
        }
        var headerText = header(planned.map(\.crc))
        guard UInt64(headerText.count) <= LidbFormat.maxHeaderSize else {
            throw fail(.headerTooLarge(length: UInt64(headerText.count), limit: LidbFormat.maxHeaderSize))
        }
        var flags: UInt32 = 0
        var storedHeader = headerText
        if options.compressHeader {
            let packed: [UInt8]
            do throws(TensorFileError.Problem) {
                packed = try headerText.withBytes { (b) throws(TensorFileError.Problem) in try Zstd.compress(b, level: 19) }
            } catch { throw fail(error) }
            if packed.count < headerText.count {
                storedHeader = packed
                flags |= LidbFormat.flagHeaderZstd
            }
        }
        let dataOffset = align64(64 + UInt64(storedHeader.count))

        // 3. Stream.
        let out = try AtomicFileWriter(path: path, sync: options.sync)
        let copied: [VerbatimRange?] = tensors.indices.map { planned[$0].stored == nil ? tensors[$0].verbatim : nil }
        let checks = BackgroundChecksums(copied)
        try out.write([UInt8](repeating: 0, count: 64))
        try out.write(storedHeader)
        try out.writeZeros(Int(dataOffset) - 64 - storedHeader.count)
        var crcs = planned.map(\.crc)
        for (i, t) in tensors.enumerated() {
            try out.writeZeros(Int(dataOffset + offsets[i] - out.position))
            if let stored = planned[i].stored {
                try out.write(stored)
            } else if let v = copied[i] {
                guard v.range.count == t.info.byteCount else {
                    throw fail(.sizeMismatch(expected: UInt64(t.info.byteCount), actual: UInt64(v.range.count)), t.info.name)
                }
                try out.append(from: v.file, range: v.range)
            } else {
                var crc: UInt32 = 0
                var written = 0
                try t.produce { (chunk) throws(TensorFileError) in
                    crc = CRC32C.checksum(chunk, continuing: crc)
                    written += chunk.count
                    try out.write(chunk)
                }
                guard written == t.info.byteCount else {
                    throw fail(.sizeMismatch(expected: UInt64(t.info.byteCount), actual: UInt64(written)), t.info.name)
                }
                if let known = crcs[i], known != crc {
                    throw fail(.invalidArgument("source produced different bytes on a second read"), t.info.name)
                }
                crcs[i] = crc
            }
            progress?(i + 1, tensors.count)
        }
        let copiedCRCs = try checks.wait()
        for (i, v) in copied.enumerated() {
            guard let v, let crc = copiedCRCs[i] else { continue }
            if let declared = v.crc32c, declared != crc {
                throw TensorFileError(file: v.file.path, tensor: tensors[i].info.name, .tensorChecksumMismatch(stored: declared, computed: crc))
            }
            if let known = crcs[i], known != crc {
                throw fail(.invalidArgument("source produced different bytes on a second read"), tensors[i].info.name)
            }
            crcs[i] = crc
        }
        if flags & LidbFormat.flagHeaderZstd == 0 {
            headerText = header(crcs, metadata: finalMetadata?() ?? metadata)
            guard headerText.count == storedHeader.count else {
                throw fail(.invalidArgument("final metadata changed the header length"))
            }
            storedHeader = headerText
            try out.overwrite(storedHeader, at: 64)
        }
        var pre = [UInt8](repeating: 0, count: 64)
        pre.replaceSubrange(0..<8, with: LidbFormat.magic)
        put(&pre, 8, LidbFormat.majorVersion)
        put(&pre, 10, LidbFormat.minorVersion)
        put(&pre, 12, flags)
        put(&pre, 16, UInt64(storedHeader.count))
        put(&pre, 24, UInt64(headerText.count))
        put(&pre, 32, dataOffset)
        put(&pre, 40, dataLength)
        var hcrc = pre.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<48])) }
        hcrc = CRC32C.checksum(storedHeader, continuing: hcrc)
        put(&pre, 48, hcrc)
        try out.overwrite(pre, at: 0)
        try out.commit()
    }

    private static func collect(_ t: TensorSource, path: String) throws(TensorFileError) -> [UInt8] {
        var raw: [UInt8] = []
        raw.reserveCapacity(t.info.byteCount)
        try t.produce { (chunk) throws(TensorFileError) in raw.append(contentsOf: chunk) }
        guard raw.count == t.info.byteCount else {
            throw TensorFileError(file: path, tensor: t.info.name, .sizeMismatch(expected: UInt64(t.info.byteCount), actual: UInt64(raw.count)))
        }
        return raw
    }

    private static func put<T: FixedWidthInteger>(_ b: inout [UInt8], _ o: Int, _ v: T) {
        withUnsafeBytes(of: v.littleEndian) { for i in 0..<MemoryLayout<T>.size { b[o + i] = $0[i] } }
    }
}
