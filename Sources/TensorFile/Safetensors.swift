/// Limits of the safetensors reader. The header limit is the reference reader's.
public enum SafetensorsLimits {
    public static let maxHeaderSize: UInt64 = 100_000_000
    public static let maxDepth = 64
}

/// One tensor's place in a safetensors data buffer.
public struct SafetensorsEntry: Equatable, Sendable {
    public var info: TensorInfo
    /// Offsets into the data buffer (which starts right after the header).
    public var begin: Int
    public var end: Int
}

/// The parsed and validated header of a safetensors file.
public struct SafetensorsLayout: Equatable, Sendable {
    /// Tensors in the order the header lists them.
    public var entries: [SafetensorsEntry]
    /// `__metadata__`, in file order; nil when absent.
    public var metadata: [(String, String)]?
    /// Byte offset of the data buffer in the file.
    public var dataStart: Int

    public static func == (a: SafetensorsLayout, b: SafetensorsLayout) -> Bool {
        a.entries == b.entries && a.dataStart == b.dataStart
            && a.metadata?.map { $0.0 } == b.metadata?.map { $0.0 } && a.metadata?.map { $0.1 } == b.metadata?.map { $0.1 }
    }

    /// Parses and validates a whole safetensors file held in `bytes`.
    ///
    /// Checks, in order: 8-byte length prefix present; header length ≤ 100 MB and within the file;
    /// header is UTF-8 JSON, an object without duplicate keys (the reference reader lets the last
    /// duplicate win; we refuse); `__metadata__` is an object of strings (or null); each entry has a known dtype, a shape of non-negative integers and
    /// two integer offsets with begin ≤ end; elements × dtype size (checked) equals end − begin;
    /// sorted by offset the entries are contiguous from 0 (no hole, no overlap); the last one ends
    /// exactly at the end of the file.
    public static func parse(_ bytes: UnsafeRawBufferPointer, file: String) throws(TensorFileError) -> SafetensorsLayout {
        func fail(_ p: TensorFileError.Problem, _ tensor: String? = nil) -> TensorFileError {
            TensorFileError(file: file, tensor: tensor, p)
        }
        let size = UInt64(bytes.count)
        guard size >= 8 else { throw fail(.truncated(needed: 8, available: size)) }
        let n = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        guard n <= SafetensorsLimits.maxHeaderSize else { throw fail(.headerTooLarge(length: n, limit: SafetensorsLimits.maxHeaderSize)) }
        guard n + 8 <= size else { throw fail(.headerPastEnd(headerEnd: n + 8, fileSize: size)) }
        let header = UnsafeRawBufferPointer(rebasing: bytes[8..<Int(8 + n)])
        if let bad = firstInvalidUTF8(header) { throw fail(.headerNotUTF8(offset: bad)) }
        let json: JSONValue
        do {
            json = try JSONValue.parse(header, limits: .init(maxDepth: SafetensorsLimits.maxDepth))
        } catch {
            throw fail(jsonProblem(error))
        }
        guard case let .object(pairs) = json else { throw fail(.headerNotObject) }

        var entries: [SafetensorsEntry] = []
        entries.reserveCapacity(pairs.count)
        var metadata: [(String, String)]? = nil
        for (name, value) in pairs {
            if name == "__metadata__" {
                if case .null = value { continue }  // the reference reader treats null as absent
                guard case let .object(m) = value else { throw fail(.metadataNotObject) }
                var md: [(String, String)] = []
                for (k, v) in m {
                    guard case let .string(s) = v else { throw fail(.metadataValueNotString(key: k)) }
                    md.append((k, s))
                }
                metadata = md
                continue
            }
            entries.append(try parseEntry(name: name, value: value, file: file))
        }

        // Contiguity: sorted by (begin, end), each must start where the previous ended.
        let dataSize = size - 8 - n
        let order = entries.indices.sorted { (entries[$0].begin, entries[$0].end) < (entries[$1].begin, entries[$1].end) }
        var expected = 0
        for i in order {
            let e = entries[i]
            if e.begin > expected { throw fail(.hole(expectedBegin: UInt64(expected), actualBegin: UInt64(e.begin)), e.info.name) }
            if e.begin < expected { throw fail(.overlap(expectedBegin: UInt64(expected), actualBegin: UInt64(e.begin)), e.info.name) }
            if UInt64(e.end) > dataSize { throw fail(.outOfRange(end: UInt64(e.end), limit: dataSize), e.info.name) }
            expected = e.end
        }
        if UInt64(expected) != dataSize { throw fail(.bufferNotCovered(dataEnd: UInt64(expected), bufferSize: dataSize)) }
        return SafetensorsLayout(entries: entries, metadata: metadata, dataStart: Int(8 + n))
    }

    static func parseEntry(name: String, value: JSONValue, file: String) throws(TensorFileError) -> SafetensorsEntry {
        func fail(_ p: TensorFileError.Problem) -> TensorFileError { TensorFileError(file: file, tensor: name, p) }
        guard case .object = value else { throw fail(.wrongType(field: "tensor entry", expected: "an object")) }
        guard let dt = value["dtype"] else { throw fail(.missingField("dtype")) }
        guard case let .string(dtName) = dt else { throw fail(.wrongType(field: "dtype", expected: "a string")) }
        guard let dtype = DType(rawValue: dtName) else { throw fail(.unknownDType(dtName)) }
        guard let sh = value["shape"] else { throw fail(.missingField("shape")) }
        let shape = try parseShape(sh, fail: fail)
        guard let off = value["data_offsets"] else { throw fail(.missingField("data_offsets")) }
        guard case let .array(o) = off, o.count == 2 else { throw fail(.wrongType(field: "data_offsets", expected: "an array of two integers")) }
        guard let b = offsetValue(o[0]), let e = offsetValue(o[1]) else {
            throw fail(.wrongType(field: "data_offsets", expected: "an array of two non-negative integers"))
        }
        guard b <= e else { throw fail(.invalidOffsets(begin: b, end: e)) }
        let count = checkedByteCount(shape: shape, dtype: dtype)
        guard case let .bytes(need) = count else { throw fail(.from(count)!) }
        guard need == e - b else { throw fail(.sizeMismatch(expected: need, actual: e - b)) }
        guard e <= UInt64(Int.max) else { throw fail(.outOfRange(end: e, limit: UInt64(Int.max))) }
        return SafetensorsEntry(info: TensorInfo(name: name, dtype: dtype, shape: shape), begin: Int(b), end: Int(e))
    }

    private static func offsetValue(_ v: JSONValue) -> UInt64? {
        guard v.isInteger, case let .number(s) = v, !s.hasPrefix("-") else { return nil }
        return UInt64(s) ?? UInt64.max  // integers beyond 64 bits are certainly out of range
    }
}

/// Validates a JSON shape: an array of non-negative integers that each fit in Int.
func parseShape(_ v: JSONValue, maxRank: Int = 64, fail: (TensorFileError.Problem) -> TensorFileError) throws(TensorFileError) -> [Int] {
    guard case let .array(dims) = v else { throw fail(.wrongType(field: "shape", expected: "an array of integers")) }
    guard dims.count <= maxRank else { throw fail(.invalidShape("rank \(dims.count) exceeds \(maxRank)")) }
    var shape: [Int] = []
    shape.reserveCapacity(dims.count)
    for d in dims {
        guard case let .number(s) = d else { throw fail(.invalidShape("dimension \(d.serializedString) is not a number")) }
        guard d.isInteger else { throw fail(.invalidShape("dimension \(s) is not an integer")) }
        // `-0` is refused too: dimensions are written without a sign (spec/format.md §1.2), as the
        // safetensors reference reader (serde_json into usize) refuses it.
        guard !s.hasPrefix("-") else { throw fail(.invalidShape(s == "-0" ? "dimension -0 has a sign" : "dimension \(s) is negative")) }
        guard let x = Int(s) else { throw fail(.invalidShape("dimension \(s) is too large")) }
        shape.append(x)
    }
    return shape
}

extension JSONValue {
    /// Parses a whole JSON document from a file's bytes; failures name the file.
    public static func parse(_ bytes: [UInt8], file: String, maxDepth: Int = 64) throws(TensorFileError) -> JSONValue {
        if let bad = bytes.withUnsafeBytes({ firstInvalidUTF8($0) }) { throw TensorFileError(file: file, .headerNotUTF8(offset: bad)) }
        let r: Result<JSONValue, JSONParseError> = bytes.withUnsafeBytes { b in
            do throws(JSONParseError) { return .success(try JSONValue.parse(b, limits: .init(maxDepth: maxDepth))) } catch { return .failure(error) }
        }
        switch r {
        case let .success(v): return v
        case let .failure(e): throw TensorFileError(file: file, jsonProblem(e))
        }
    }
}

func jsonProblem(_ e: JSONParseError) -> TensorFileError.Problem {
    switch e {
    case let .syntax(o, r): return .invalidJSON(offset: o, reason: r)
    case let .notUTF8(o): return .headerNotUTF8(offset: o)
    case let .tooDeep(l): return .nestingTooDeep(limit: l)
    case let .duplicateKey(k): return .duplicateKey(k)
    }
}

/// Offset of the first byte that breaks UTF-8 well-formedness, or nil.
func firstInvalidUTF8(_ b: UnsafeRawBufferPointer) -> Int? {
    var i = 0
    let n = b.count
    while i < n {
        let c = b[i]
        if c < 0x80 { i += 1; continue }
        func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> Bool { i + k < n && b[i + k] >= lo && b[i + k] <= hi }
        let len: Int
        switch c {
        case 0xC2...0xDF: len = cont(1) ? 2 : 0
        case 0xE0: len = cont(1, 0xA0, 0xBF) && cont(2) ? 3 : 0
        case 0xE1...0xEC, 0xEE...0xEF: len = cont(1) && cont(2) ? 3 : 0
        case 0xED: len = cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0
        case 0xF0: len = cont(1, 0x90, 0xBF) && cont(2) && cont(3) ? 4 : 0
        case 0xF1...0xF3: len = cont(1) && cont(2) && cont(3) ? 4 : 0
        case 0xF4: len = cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0
        default: len = 0
        }
        if len == 0 { return i }
        i += len
    }
    return nil
}

/// A safetensors file, memory-mapped; tensors are views into the map.
public final class SafetensorsFile: TensorCollection, @unchecked Sendable {
    public let path: String
    public let map: MappedFile

    public func releaseMappedPages() { map.release(0..<map.bytes.count) }
    public let layout: SafetensorsLayout
    private let index: [String: Int]

    public convenience init(path: String) throws(TensorFileError) {
        try self.init(map: MappedFile(path: path))
    }

    public init(map: MappedFile) throws(TensorFileError) {
        self.path = map.path
        self.map = map
        self.layout = try SafetensorsLayout.parse(map.bytes, file: map.path)
        var idx: [String: Int] = [:]
        for (i, e) in layout.entries.enumerated() { idx[e.info.name] = i }
        self.index = idx
    }

    public var formatName: String { "safetensors" }
    public var tensors: [TensorInfo] { layout.entries.map(\.info) }
    public var metadata: [(String, String)]? { layout.metadata }
    public var metadataJSON: JSONValue {
        .object((layout.metadata ?? []).map { ($0.0, .string($0.1)) })
    }

    public func entry(_ name: String) -> SafetensorsEntry? { index[name].map { layout.entries[$0] } }
    public func entryIndex(_ name: String) -> Int? { index[name] }

    public func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes {
        guard let e = entry(name) else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        let start = layout.dataStart + e.begin
        return TensorBytes(owner: map, bytes: UnsafeRawBufferPointer(rebasing: map.bytes[start..<start + (e.end - e.begin)]))
    }

    /// Reads with bounded I/O (`pread`), not through the map.
    public func verbatimRange(_ name: String) -> VerbatimRange? {
        guard let e = entry(name) else { return nil }
        let start = layout.dataStart + e.begin
        return VerbatimRange(file: map, range: start..<(start + (e.end - e.begin)), crc32c: nil)
    }

    public func streamTensor(_ name: String, _ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) {
        guard let e = entry(name) else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        let start = layout.dataStart + e.begin
        if e.end == e.begin { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        try map.readChunks(start..<start + (e.end - e.begin), body)
    }
}
