/// A PyTorch checkpoint in the zip format `torch.save` writes (`.ckpt`, `.pt`, `.pth`, `.bin`),
/// read without executing anything: the archive's `data.pkl` goes through the allowlisting pickle
/// interpreter (`unpickle`), storages are zip entries used in place.
///
/// Which tensors are exposed (the rule is in `spec/torch-checkpoints.md`): the pickled root must
/// be a dict. If it has a `state_dict` entry that is a dict, that is the tensor dict (Lightning and
/// LDM checkpoints); otherwise the root is. Tensors in the tensor dict are named by their key;
/// tensors in nested dicts by the keys on the path joined with ".". Every other value goes to
/// `metadataJSON`: root entries by key, non-tensor leaves inside the tensor dict by their path
/// from the root (e.g. `state_dict.some_int`); values outside the tensor dict that hold tensors
/// (optimizer state) are recorded as the string "(contains tensors; not read)".
public final class TorchCheckpoint: TensorCollection, @unchecked Sendable {
    public let path: String
    public let map: MappedFile
    public let archive: ZipArchive
    public let tensors: [TensorInfo]
    public let metadataJSON: JSONValue
    /// The archive's top-level folder (`<archive>` in `<archive>/data.pkl`).
    public let archiveName: String
    private let layouts: [Layout]
    private let index: [String: Int]

    public static let maxPickleSize = 1 << 30
    public static let maxMetadataValues = 1_000_000

    struct Layout {
        var storageKey: String
        /// Absolute byte offset of the tensor's first element in the file.
        var byteOffset: Int
        var stride: [Int]
        var contiguous: Bool
    }

    public var formatName: String { "torch-zip" }

    public convenience init(path: String) throws(TensorFileError) {
        try self.init(map: MappedFile(path: path))
    }

    public init(map: MappedFile) throws(TensorFileError) {
        let file = map.path
        self.path = file
        self.map = map
        let bytes = map.bytes
        func fail(_ p: TensorFileError.Problem, _ tensor: String? = nil) -> TensorFileError {
            TensorFileError(file: file, tensor: tensor, p)
        }
        func structure(_ m: String, _ tensor: String? = nil) -> TensorFileError { fail(.torchCheckpoint(m), tensor) }

        if !ZipArchive.hasSignature(bytes) {
            if Self.isLegacy(bytes) { throw fail(.legacyTorchFormat) }
            throw fail(.unsupportedFormat("not a PyTorch zip checkpoint (no zip signature)"))
        }
        let archive = try ZipArchive(bytes: bytes, file: file)
        self.archive = archive

        // torch's layout: every entry under one folder.
        guard let first = archive.entries.first, let slash = first.name.firstIndex(of: "/") else {
            throw structure("the archive has no '<archive>/' folder")
        }
        let prefix = String(first.name[..<slash])
        self.archiveName = prefix
        for e in archive.entries where !e.name.hasPrefix(prefix + "/") {
            throw structure("entry '\(e.name.debugEscaped)' is outside the archive folder '\(prefix.debugEscaped)'")
        }
        func small(_ name: String) throws(TensorFileError) -> [UInt8]? {
            guard let e = archive.entry(prefix + "/" + name) else { return nil }
            guard e.size <= Self.maxPickleSize else {
                throw fail(.limitExceeded(what: "size of '\(e.name.debugEscaped)' (\(e.size) bytes)", limit: UInt64(Self.maxPickleSize)))
            }
            let data = archive.data(e, in: bytes)
            let crc = zipCRC32(data)
            guard crc == e.crc32 else { throw fail(.zipMalformed("entry '\(e.name.debugEscaped)': CRC-32 mismatch (stored \(hex8(e.crc32)), computed \(hex8(crc)))")) }
            return Array(data)
        }
        if let order = try small("byteorder") {
            guard order == Array("little".utf8) else {
                throw structure("byte order '\(String(decoding: order, as: UTF8.self).debugEscaped)' (only little-endian checkpoints are supported)")
            }
        }
        var versionBytes = try small("version")
        if versionBytes == nil { versionBytes = try small(".data/version") }
        guard let versionBytes else { throw structure("missing '\(prefix.debugEscaped)/version'") }
        let versionText = String(decoding: versionBytes, as: UTF8.self).trimmingSuffixNewline
        guard let version = Int(versionText), (1...10).contains(version) else {
            throw structure("unsupported archive version '\(versionText.debugEscaped)'")
        }
        guard let pickle = try small("data.pkl") else { throw structure("missing '\(prefix.debugEscaped)/data.pkl'") }

        // Storages: persistent ids ('storage', storage type, key, location, numel).
        var storages: [String: PickleStorage] = [:]
        let root = try pickle.withBytes { (p) throws(TensorFileError) -> PickleValue in
            try unpickle(p, file: file) { (pid) throws(TensorFileError) -> PickleValue in
                guard case let .tuple(t) = pid, t.items.count == 5, case let .string(tag) = t.items[0], tag == "storage",
                      case let .global(g) = t.items[1], case let .storageType(dtype) = g.kind,
                      case let .string(key) = t.items[2], case .string = t.items[3],
                      case let .int(numel) = t.items[4], numel >= 0 else {
                    throw structure("persistent id is not ('storage', storage type, key, location, size)")
                }
                let entryName = prefix + "/data/" + key
                guard let e = archive.entry(entryName) else { throw structure("storage '\(key.debugEscaped)' has no entry '\(entryName.debugEscaped)'") }
                let (declared, o) = UInt64(numel).multipliedReportingOverflow(by: UInt64(dtype?.byteSize ?? 1))
                guard !o, declared == UInt64(e.size) else {
                    throw structure("storage 'data/\(key.debugEscaped)' has \(e.size) bytes but its pickle record declares \(numel) \(dtype?.name ?? "byte") elements")
                }
                if let s = storages[key] {
                    guard s.dtype == dtype else { throw structure("storage 'data/\(key.debugEscaped)' is used with two different types") }
                    return .storage(s)
                }
                let s = PickleStorage(key: key, dtype: dtype, byteOffset: e.dataOffset, byteCount: e.size)
                storages[key] = s
                return .storage(s)
            }
        }

        // The tensor dict and the metadata.
        guard case let .dict(rootDict) = root else { throw structure("the pickled object is a \(root.typeName), not a dict") }
        var tensorRoot = rootDict
        var tensorRootPath = ""
        var meta = MetadataBuilder(file: file)
        if case let .dict(sd)? = rootDict[string: "state_dict"] {
            tensorRoot = sd
            tensorRootPath = "state_dict"
            for (k, v) in rootDict.pairs {
                let name = keyText(k)
                if name == "state_dict" { continue }
                try meta.add(name, v)
            }
        }
        // Depth first in file order, with an explicit stack of (path, dict, next pair).
        var found: [(String, PickleTensor)] = []
        var stack: [(String, PickleDict, Int)] = [("", tensorRoot, 0)]
        while !stack.isEmpty {
            let (p, d, i) = stack[stack.count - 1]
            if i >= d.count { stack.removeLast(); continue }
            stack[stack.count - 1].2 = i + 1
            let name = p.isEmpty ? keyText(d.keys[i]) : p + "." + keyText(d.keys[i])
            switch d.values[i] {
            case let .tensor(t): found.append((name, t))
            case let .dict(sub): stack.append((name, sub, 0))
            case let v: try meta.add(tensorRootPath.isEmpty ? name : tensorRootPath + "." + name, v)
            }
        }

        var infos: [TensorInfo] = []
        var layouts: [Layout] = []
        var index: [String: Int] = [:]
        infos.reserveCapacity(found.count)
        layouts.reserveCapacity(found.count)
        for (name, t) in found {
            guard index[name] == nil else { throw fail(.duplicateTensor, name) }
            let info = TensorInfo(name: name, dtype: t.dtype, shape: t.shape)
            let count = checkedByteCount(shape: t.shape, dtype: t.dtype)
            guard case .bytes = count else { throw fail(.from(count)!, name) }
            let item = UInt64(t.dtype.byteSize)
            let storageName = "data/" + t.storage.key
            let empty = t.shape.contains(0)
            if !empty {
                // Extent: the largest element index the view touches, plus one, in bytes.
                var last = UInt64(t.storageOffset)
                var overflow = false
                for (d, s) in zip(t.shape, t.stride) {
                    let (m, o1) = UInt64(d - 1).multipliedReportingOverflow(by: UInt64(s))
                    let (a, o2) = last.addingReportingOverflow(m)
                    overflow = overflow || o1 || o2
                    last = a
                }
                let (n1, o3) = last.addingReportingOverflow(1)
                let (needed, o4) = n1.multipliedReportingOverflow(by: item)
                if overflow || o3 || o4 { throw fail(.storageOutOfRange(storage: storageName, needed: UInt64.max, available: UInt64(t.storage.byteCount)), name) }
                guard needed <= UInt64(t.storage.byteCount) else {
                    throw fail(.storageOutOfRange(storage: storageName, needed: needed, available: UInt64(t.storage.byteCount)), name)
                }
            }
            var contiguous = true
            var expected = 1
            for (d, s) in zip(t.shape, t.stride).reversed() where d != 1 {
                if s != expected { contiguous = false; break }
                expected = expected &* d
            }
            // Empty tensors have no bytes: any offset and stride describe them.
            let byteOffset = empty ? t.storage.byteOffset : t.storage.byteOffset + t.storageOffset * t.dtype.byteSize
            index[name] = infos.count
            infos.append(info)
            layouts.append(Layout(storageKey: t.storage.key, byteOffset: byteOffset, stride: t.stride, contiguous: contiguous || empty))
        }
        self.tensors = infos
        self.layouts = layouts
        self.index = index
        self.metadataJSON = .object(meta.pairs)
    }

    /// Legacy `torch.save(..., _use_new_zipfile_serialization=False)`: a pickled magic number first.
    static func isLegacy(_ b: UnsafeRawBufferPointer) -> Bool {
        let magic: [UInt8] = [0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]
        guard b.count >= 2 + magic.count, b[0] == 0x80 else { return false }
        return magic.indices.allSatisfy { b[2 + $0] == magic[$0] }
    }

    public func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes {
        guard let i = index[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        let info = tensors[i], l = layouts[i]
        let n = info.byteCount
        if l.contiguous {
            return TensorBytes(owner: map, bytes: UnsafeRawBufferPointer(rebasing: map.bytes[l.byteOffset..<(l.byteOffset + n)]))
        }
        // A strided view (e.g. transposed): gather into contiguous memory, innermost runs at a time.
        let out = OwnedBytes(count: n)
        let item = info.dtype.byteSize
        let shape = info.shape, stride = l.stride
        let rank = shape.count
        let inner = rank > 0 && stride[rank - 1] == 1 ? 1 : 0
        let run = (inner == 1 ? shape[rank - 1] : 1) * item
        let outer = rank - inner
        var idx = [Int](repeating: 0, count: outer)
        let src = map.bytes.baseAddress! + l.byteOffset
        let dst = out.buffer.baseAddress!
        var written = 0
        while written < n {
            var off = 0
            for d in 0..<outer { off += idx[d] * stride[d] }
            (dst + written).copyMemory(from: src + off * item, byteCount: run)
            written += run
            var d = outer - 1
            while d >= 0 {
                idx[d] += 1
                if idx[d] < shape[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
        return TensorBytes(owned: out)
    }
}

/// A dict key as text: strings as they are, numbers in decimal, bytes in hex, classes by name.
private func keyText(_ k: PickleValue) -> String {
    switch k {
    case let .string(s): return s
    case let .int(i): return String(i)
    case let .bigInt(s): return s
    case let .bool(b): return b ? "True" : "False"
    case .none: return "None"
    case let .float(f): return "\(f)"
    case let .bytes(b): return hexString(b)
    case let .global(g): return g.name
    default: return k.typeName
    }
}

private func hexString(_ b: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(b.count * 2)
    for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 15)]) }
    return String(decoding: out, as: UTF8.self)
}

/// Metadata as JSON: keys unique (a later value replaces an earlier one), a bounded number of
/// values. Nesting is bounded by the interpreter (64), so the recursion here is bounded.
private struct MetadataBuilder {
    let file: String
    var pairs: [(String, JSONValue)] = []
    var index: [String: Int] = [:]
    var budget = TorchCheckpoint.maxMetadataValues

    init(file: String) { self.file = file }

    mutating func add(_ key: String, _ v: PickleValue) throws(TensorFileError) {
        put(key, try json(v))
    }

    mutating func put(_ key: String, _ j: JSONValue) {
        if let i = index[key] { pairs[i].1 = j } else { index[key] = pairs.count; pairs.append((key, j)) }
    }

    mutating func spend() throws(TensorFileError) {
        budget -= 1
        if budget < 0 { throw TensorFileError(file: file, .limitExceeded(what: "number of metadata values", limit: UInt64(TorchCheckpoint.maxMetadataValues))) }
    }

    mutating func containsTensor(_ v: PickleValue) throws(TensorFileError) -> Bool {
        var work = [v]
        while let x = work.popLast() {
            try spend()
            switch x {
            case .tensor, .storage: return true
            case let .tuple(t): work.append(contentsOf: t.items)
            case let .list(l): work.append(contentsOf: l.items)
            case let .dict(d): work.append(contentsOf: d.values)
            default: break
            }
        }
        return false
    }

    mutating func json(_ v: PickleValue) throws(TensorFileError) -> JSONValue {
        if try containsTensor(v) { return .string("(contains tensors; not read)") }
        return try plain(v)
    }

    mutating func plain(_ v: PickleValue) throws(TensorFileError) -> JSONValue {
        try spend()
        switch v {
        case .none: return .null
        case let .bool(b): return .bool(b)
        case let .int(i): return .int(i)
        case let .bigInt(s): return .number(s)
        case let .float(f):
            if f.isFinite { return .double(f) }
            return .string(f.isNaN ? "nan" : (f < 0 ? "-inf" : "inf"))
        case let .string(s): return .string(s)
        case let .bytes(b): return .string(hexString(b))
        case let .tuple(t): return .array(try items(t.items))
        case let .list(l): return .array(try items(l.items))
        case let .dict(d):
            var sub = MetadataBuilder(file: file)
            for (k, x) in d.pairs {
                let j = try plain(x)
                sub.put(keyText(k), j)
            }
            return .object(sub.pairs)
        case let .global(g): return .string(g.name)
        case let .numpyDType(d): return .string(d.code)
        case .storage, .tensor: return .string("(contains tensors; not read)")
        }
    }

    mutating func items(_ xs: [PickleValue]) throws(TensorFileError) -> [JSONValue] {
        var out: [JSONValue] = []
        out.reserveCapacity(xs.count)
        for x in xs { out.append(try plain(x)) }
        return out
    }
}

private extension String {
    var trimmingSuffixNewline: String {
        var s = self
        while s.hasSuffix("\n") || s.hasSuffix("\r") { s.removeLast() }
        return s
    }
}
