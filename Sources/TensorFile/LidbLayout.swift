/// Constants and the validating parser of the `.lidb` container, version 1 (see spec/format.md).
public enum LidbFormat {
    public static let magic: [UInt8] = [0x89, 0x4C, 0x49, 0x44, 0x42, 0x0D, 0x0A, 0x1A]
    public static let majorVersion: UInt16 = 1
    public static let minorVersion: UInt16 = 0
    public static let preambleSize = 64
    public static let alignment = 64
    public static let maxHeaderSize: UInt64 = 100_000_000
    public static let maxDepth = 64
    public static let maxRank = 32
    public static let maxNameBytes = 1024
    /// Largest decoded size of a zstd-encoded tensor (bounds what a hostile frame can make us allocate).
    public static let maxCompressedTensorSize: UInt64 = 1 << 30
    /// Flag bit 0: the header is stored as one zstd frame.
    public static let flagHeaderZstd: UInt32 = 1
    /// Bits 0–15 must be understood by a reader; bits 16–31 may be ignored.
    public static let requiredFlagMask: UInt32 = 0x0000_FFFF
    public static let knownKinds = ["base", "hypernetwork", "subject", "basis", "tensors"]

    /// Kinds are 1–64 characters of `a-z`, `0-9` and `-`.
    public static func isValidKind(_ k: String) -> Bool {
        !k.isEmpty && k.utf8.count <= 64 && k.utf8.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D }
    }
}

/// How a tensor's bytes are stored.
public enum LidbEncoding: String, Sendable {
    case raw
    case zstd
}

/// One row of the tensor table.
public struct LidbEntry: Equatable, Sendable {
    public var info: TensorInfo
    /// Offset of the stored bytes from the start of the data section.
    public var offset: UInt64
    /// Stored length (compressed length for zstd).
    public var length: UInt64
    public var encoding: LidbEncoding
    /// CRC-32C of the stored bytes.
    public var crc32c: UInt32
}

/// A parsed, validated `.lidb` header and tensor table.
public struct LidbLayout: Equatable, Sendable {
    public var major: UInt16
    public var minor: UInt16
    public var flags: UInt32
    public var headerStoredLength: UInt64
    public var headerLength: UInt64
    public var dataOffset: UInt64
    public var dataLength: UInt64
    public var headerCRC: UInt32
    public var kind: String
    public var metadata: JSONValue
    public var entries: [LidbEntry]
    /// The decoded header JSON as stored (for inspection).
    public var headerJSON: JSONValue

    static func hasMagic(_ b: UnsafeRawBufferPointer) -> Bool {
        b.count >= 8 && (0..<8).allSatisfy { b[$0] == LidbFormat.magic[$0] }
    }

    @inline(__always) static func u16(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt16 { UInt16(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    @inline(__always) static func u32(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt32 { UInt32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    @inline(__always) static func u64(_ b: UnsafeRawBufferPointer, _ o: Int) -> UInt64 { UInt64(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }

    /// Parses and validates the preamble, header and tensor table of a whole file in `bytes`.
    /// Checks the header checksum; tensor checksums and padding are checked by `LidbFile.verify`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, file: String) throws(TensorFileError) -> LidbLayout {
        func fail(_ p: TensorFileError.Problem, _ t: String? = nil) -> TensorFileError { TensorFileError(file: file, tensor: t, p) }
        let size = UInt64(bytes.count)
        guard size >= 8 else {
            if size > 0 && bytes.elementsEqual(LidbFormat.magic.prefix(Int(size))) { throw fail(.truncated(needed: 64, available: size)) }
            throw fail(.badMagic)
        }
        guard hasMagic(bytes) else { throw fail(.badMagic) }
        guard size >= 64 else { throw fail(.truncated(needed: 64, available: size)) }
        let major = u16(bytes, 8), minor = u16(bytes, 10)
        guard major == LidbFormat.majorVersion else { throw fail(.unsupportedVersion(major: major, minor: minor)) }
        let flags = u32(bytes, 12)
        let storedLen = u64(bytes, 16), headerLen = u64(bytes, 24)
        let dataOffset = u64(bytes, 32), dataLength = u64(bytes, 40)
        let storedCRC = u32(bytes, 48)
        guard storedLen <= LidbFormat.maxHeaderSize else { throw fail(.headerTooLarge(length: storedLen, limit: LidbFormat.maxHeaderSize)) }
        guard headerLen <= LidbFormat.maxHeaderSize else { throw fail(.headerTooLarge(length: headerLen, limit: LidbFormat.maxHeaderSize)) }
        guard 64 + storedLen <= size else { throw fail(.headerPastEnd(headerEnd: 64 + storedLen, fileSize: size)) }
        // The checksum covers preamble bytes 0..<48 and the stored header; check it before
        // trusting any other field.
        var crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<48]))
        crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[64..<Int(64 + storedLen)]), continuing: crc)
        guard crc == storedCRC else { throw fail(.headerChecksumMismatch(stored: storedCRC, computed: crc)) }
        if minor == 0 {
            for o in 52..<64 where bytes[o] != 0 { throw fail(.nonZeroReserved(offset: UInt64(o))) }
        }
        let unknownRequired = flags & LidbFormat.requiredFlagMask & ~LidbFormat.flagHeaderZstd
        guard unknownRequired == 0 else { throw fail(.unknownRequiredFlags(unknownRequired)) }
        let compressed = flags & LidbFormat.flagHeaderZstd != 0
        if !compressed && headerLen != storedLen {
            throw fail(.sizeMismatch(expected: storedLen, actual: headerLen))
        }
        let expectedDataOffset = align64(64 + storedLen)
        guard dataOffset % 64 == 0 else { throw fail(.misalignedDataSection(offset: dataOffset)) }
        if dataOffset > expectedDataOffset { throw fail(.hole(expectedBegin: expectedDataOffset, actualBegin: dataOffset)) }
        if dataOffset < expectedDataOffset { throw fail(.overlap(expectedBegin: expectedDataOffset, actualBegin: dataOffset)) }
        let (dataEnd, o) = dataOffset.addingReportingOverflow(dataLength)
        guard !o, dataEnd == size else {
            if !o && dataEnd > size { throw fail(.truncated(needed: dataEnd, available: size)) }
            throw fail(.dataSectionMismatch(expectedEnd: o ? UInt64.max : dataEnd, fileSize: size))
        }

        let stored = UnsafeRawBufferPointer(rebasing: bytes[64..<Int(64 + storedLen)])
        let json: JSONValue
        if compressed {
            let decoded: OwnedBytes
            do throws(TensorFileError.Problem) {
                decoded = try Zstd.decompress(stored, expectedSize: Int(headerLen))
            } catch { throw fail(error) }
            json = try parseHeaderJSON(decoded.bytes, file: file)
        } else {
            json = try parseHeaderJSON(stored, file: file)
        }
        guard case .object = json else { throw fail(.headerNotObject) }
        guard let kindValue = json["kind"] else { throw fail(.missingField("kind")) }
        guard let kind = kindValue.stringValue, LidbFormat.isValidKind(kind) else {
            throw fail(.wrongType(field: "kind", expected: "a string of lower-case letters, digits and '-'"))
        }
        let metadata = json["metadata"] ?? .object([])
        guard case .object = metadata else { throw fail(.wrongType(field: "metadata", expected: "an object")) }
        guard let tv = json["tensors"] else { throw fail(.missingField("tensors")) }
        guard case let .array(rows) = tv else { throw fail(.wrongType(field: "tensors", expected: "an array")) }

        var entries: [LidbEntry] = []
        entries.reserveCapacity(rows.count)
        var names = Set<String>()
        var expected: UInt64 = 0
        for (i, row) in rows.enumerated() {
            let e = try parseEntry(row, index: i, file: file)
            guard names.insert(e.info.name).inserted else { throw fail(.duplicateTensor, e.info.name) }
            guard e.offset % 64 == 0 else { throw fail(.misalignedTensor(offset: e.offset), e.info.name) }
            let begin = align64(expected)
            if e.offset > begin { throw fail(.hole(expectedBegin: begin, actualBegin: e.offset), e.info.name) }
            if e.offset < begin { throw fail(.overlap(expectedBegin: begin, actualBegin: e.offset), e.info.name) }
            let (end, ovf) = e.offset.addingReportingOverflow(e.length)
            guard !ovf, end <= dataLength else { throw fail(.outOfRange(end: ovf ? UInt64.max : end, limit: dataLength), e.info.name) }
            expected = end
            entries.append(e)
        }
        guard expected == dataLength else { throw fail(.bufferNotCovered(dataEnd: expected, bufferSize: dataLength)) }
        return LidbLayout(major: major, minor: minor, flags: flags, headerStoredLength: storedLen, headerLength: headerLen,
                          dataOffset: dataOffset, dataLength: dataLength, headerCRC: storedCRC, kind: kind,
                          metadata: metadata, entries: entries, headerJSON: json)
    }

    static func parseHeaderJSON(_ text: UnsafeRawBufferPointer, file: String) throws(TensorFileError) -> JSONValue {
        if let bad = firstInvalidUTF8(text) { throw TensorFileError(file: file, .headerNotUTF8(offset: bad)) }
        do {
            return try JSONValue.parse(text, limits: .init(maxDepth: LidbFormat.maxDepth))
        } catch {
            throw TensorFileError(file: file, jsonProblem(error))
        }
    }

    static func parseEntry(_ row: JSONValue, index: Int, file: String) throws(TensorFileError) -> LidbEntry {
        guard case .object = row else {
            throw TensorFileError(file: file, .wrongType(field: "tensors[\(index)]", expected: "an object"))
        }
        guard let nv = row["name"] else { throw TensorFileError(file: file, .missingField("tensors[\(index)].name")) }
        guard let name = nv.stringValue else { throw TensorFileError(file: file, .wrongType(field: "tensors[\(index)].name", expected: "a string")) }
        func fail(_ p: TensorFileError.Problem) -> TensorFileError { TensorFileError(file: file, tensor: name, p) }
        guard !name.isEmpty else { throw fail(.invalidName(reason: "empty")) }
        guard name.utf8.count <= LidbFormat.maxNameBytes else { throw fail(.invalidName(reason: "longer than \(LidbFormat.maxNameBytes) bytes")) }
        guard !name.utf8.contains(0) else { throw fail(.invalidName(reason: "contains a NUL character")) }
        guard let dv = row["dtype"] else { throw fail(.missingField("dtype")) }
        guard let dn = dv.stringValue else { throw fail(.wrongType(field: "dtype", expected: "a string")) }
        guard let dtype = DType(rawValue: dn) else { throw fail(.unknownDType(dn)) }
        guard let sv = row["shape"] else { throw fail(.missingField("shape")) }
        let shape = try parseShape(sv, maxRank: LidbFormat.maxRank, fail: fail)
        let count = checkedByteCount(shape: shape, dtype: dtype)
        guard case let .bytes(decoded) = count else { throw fail(.from(count)!) }
        func u64Field(_ key: String) throws(TensorFileError) -> UInt64 {
            guard let v = row[key] else { throw fail(.missingField(key)) }
            guard v.isInteger, case let .number(s) = v, !s.hasPrefix("-") else {
                throw fail(.wrongType(field: key, expected: "a non-negative integer"))
            }
            guard let x = UInt64(s) else { throw fail(.wrongType(field: key, expected: "an integer below 2^64")) }
            return x
        }
        let offset = try u64Field("offset")
        let length = try u64Field("length")
        let encName = row["encoding"]?.stringValue ?? "raw"
        if let ev = row["encoding"], ev.stringValue == nil { throw fail(.wrongType(field: "encoding", expected: "a string")) }
        guard let encoding = LidbEncoding(rawValue: encName) else { throw fail(.unknownEncoding(encName)) }
        if encoding == .raw && length != decoded { throw fail(.sizeMismatch(expected: decoded, actual: length)) }
        if encoding == .zstd && decoded == 0 { throw fail(.wrongType(field: "encoding", expected: "raw for an empty tensor")) }
        if encoding == .zstd && decoded > LidbFormat.maxCompressedTensorSize {
            throw fail(.limitExceeded(what: "decoded size \(decoded) of a zstd tensor", limit: LidbFormat.maxCompressedTensorSize))
        }
        guard let cv = row["crc32c"] else { throw fail(.missingField("crc32c")) }
        guard let cs = cv.stringValue, cs.utf8.count == 8, let crc = UInt32(cs, radix: 16),
              cs.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw fail(.wrongType(field: "crc32c", expected: "8 lowercase hexadecimal digits"))
        }
        return LidbEntry(info: TensorInfo(name: name, dtype: dtype, shape: shape), offset: offset, length: length,
                         encoding: encoding, crc32c: crc)
    }
}

@inline(__always) func align64(_ x: UInt64) -> UInt64 { (x + 63) & ~63 }
