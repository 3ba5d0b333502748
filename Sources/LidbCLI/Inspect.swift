import ArgumentParser
import Checkpoint
import SubjectDelta
import TensorFile

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a tensor file holds.",
        discussion: """
        PATH is a .lidb file, a .safetensors file, or a sharded checkpoint's *.safetensors.index.json. \
        Prints the format, kind, version, metadata, tensor count, total bytes, a dtype histogram and \
        the tensor table (first 20 rows unless --all). --json prints one JSON object with format, \
        kind, version, metadata and tensors [{name, dtype, shape, nbytes}] (plus encoding, \
        stored_bytes and crc32c for .lidb).
        """
    )

    @Argument(help: "The file to inspect.") var path: String
    @Flag(help: "Print one JSON object instead of text.") var json = false
    @Flag(help: "List every tensor (text output).") var all = false

    func run() throws {
        try reportingErrors {
            let c: TensorCollection = isDiffusersFolder(path) ? try DiffusersCollection(path: path) : try openTensorCollection(path)
            // A subject is shown only when it is valid (spec/subject.md §4: readers refuse the rest).
            if let l = c as? LidbFile, l.kind == "subject" { _ = try Subject(file: l) }
            if json { print(inspectJSON(c).serializedString) } else { print(inspectText(c, all: all), terminator: "") }
        }
    }
}

func inspectJSON(_ c: TensorCollection) -> JSONValue {
    var pairs: [(String, JSONValue)] = [("path", .string(c.path)), ("format", .string(c.formatName))]
    let lidb = c as? LidbFile
    if let lidb {
        pairs.append(("kind", .string(lidb.kind)))
        pairs.append(("version", .string("\(lidb.layout.major).\(lidb.layout.minor)")))
        pairs.append(("header_compressed", .bool(lidb.layout.flags & LidbFormat.flagHeaderZstd != 0)))
    } else {
        pairs.append(("kind", .null))
    }
    pairs.append(("metadata", c.metadataJSON))
    pairs.append(("tensor_count", .int(c.tensors.count)))
    pairs.append(("total_bytes", .int(c.totalBytes)))
    if let sharded = c as? ShardedSafetensors { pairs.append(("shards", .array(sharded.shards.map { .string($0.path) }))) }
    var rows: [JSONValue] = []
    for t in c.tensors {
        var r: [(String, JSONValue)] = [
            ("name", .string(t.name)), ("dtype", .string(t.dtype.name)),
            ("shape", .array(t.shape.map { .int($0) })), ("nbytes", .int(t.byteCount)),
        ]
        if let e = lidb?.entry(t.name) {
            r.append(("encoding", .string(e.encoding.rawValue)))
            r.append(("stored_bytes", .int(e.length)))
            r.append(("crc32c", .string(hex(e.crc32c))))
        }
        rows.append(.object(r))
    }
    pairs.append(("tensors", .array(rows)))
    return .object(pairs)
}

func hex(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 8 - s.count) + s
}

func humanBytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n), u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(n) B" : String(format1(v)) + " " + units[u]
}

func format1(_ v: Double) -> String {
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? "\(Int(r)).0" : "\(r)"
}

func inspectText(_ c: TensorCollection, all: Bool = false, limit: Int = 20) -> String {
    var s = ""
    s += "file:      \(c.path)\n"
    s += "format:    \(c.formatName)"
    if let l = c as? LidbFile {
        s += " \(l.layout.major).\(l.layout.minor)\n"
        s += "kind:      \(l.kind)\n"
        s += "header:    \(l.layout.headerLength) bytes" + (l.layout.flags & LidbFormat.flagHeaderZstd != 0 ? " (\(l.layout.headerStoredLength) stored, zstd)" : "") + "\n"
        s += "size:      \(l.map.bytes.count) bytes (\(humanBytes(UInt64(l.map.bytes.count))))\n"
        if l.kind == "subject", let rows = l.metadata["layers"]?.arrayValue {
            let md = l.metadata
            let ranks = Set(rows.compactMap { $0["lidb"]?["rank"]?.int64Value })
            let loras = rows.filter { $0["lora"] != nil }.count
            s += "subject:   \(rows.count) layers (targets: \(md["targets"]?.stringValue ?? "?"))"
            s += ranks.isEmpty ? "" : ", LiDB rank \(ranks.sorted().map(String.init).joined(separator: "/"))"
            s += loras > 0 ? ", \(loras) LoRA terms" : ""
            s += ", \(md["trained_parameters"]?.int64Value ?? 0) trained parameters, \(md["dtype"]?.stringValue ?? "?")\n"
            if let seed = md["basis"]?["seed"]?.uint64Value { s += "basis:     \(md["basis"]?["generator"]?.stringValue ?? "") seed \(seed)\n" } else { s += "basis:     stored\n" }
            s += "binding:   \(md["binding"]?["architecture"]?.stringValue ?? "?"), layer table \(md["binding"]?["targets_fingerprint"]?.stringValue?.prefix(16) ?? "?")…"
            s += md["binding"]?["base_content"] != nil ? ", base content \(md["binding"]?["base_content"]?.stringValue?.prefix(16) ?? "")…\n" : " (any base with these layers)\n"
        }
    } else {
        s += "\n"
        if let sh = c as? ShardedSafetensors { s += "shards:    \(sh.shards.count)\n" }
    }
    let md = c.metadataJSON.objectValue ?? []
    s += "metadata:  \(md.isEmpty ? "(none)" : "")\n"
    for (k, v) in md {
        var text = v.stringValue ?? v.serializedString
        if text.count > 100 { text = String(text.prefix(97)) + "..." }
        s += "  \(k): \(text.debugDescriptionLine)\n"
    }
    let ts = c.tensors
    s += "tensors:   \(ts.count)\n"
    s += "bytes:     \(c.totalBytes) (\(humanBytes(c.totalBytes)))\n"
    var hist: [DType: (Int, UInt64)] = [:]
    for t in ts { let h = hist[t.dtype] ?? (0, 0); hist[t.dtype] = (h.0 + 1, h.1 + UInt64(t.byteCount)) }
    s += "dtypes:    " + DType.allCases.compactMap { d in hist[d].map { "\(d.name) ×\($0.0) (\(humanBytes($0.1)))" } }.joined(separator: ", ") + "\n"
    let shown = all ? ts : Array(ts.prefix(limit))
    if !shown.isEmpty {
        let lidb = c as? LidbFile
        let nameW = min(max(shown.map { $0.name.count }.max() ?? 4, 4), 80)
        s += "\n" + "name".padding(nameW) + "  dtype    shape" + String(repeating: " ", count: 18) + "bytes" + (lidb != nil ? "        stored  enc" : "") + "\n"
        for t in shown {
            let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
            s += t.name.padding(nameW) + "  " + t.dtype.name.padding(7) + "  " + shape.padding(20) + "  " + String(t.byteCount).leftPadding(10)
            if let e = lidb?.entry(t.name) { s += "  " + String(e.length).leftPadding(10) + "  " + e.encoding.rawValue }
            s += "\n"
        }
        if shown.count < ts.count { s += "... \(ts.count - shown.count) more (use --all)\n" }
    }
    return s
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
    func leftPadding(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
    var debugDescriptionLine: String {
        var out = ""
        for u in unicodeScalars {
            if u == "\n" { out += "\\n" } else if u.value < 0x20 || u.value == 0x7F { out += "\\u{\(String(u.value, radix: 16))}" } else { out.unicodeScalars.append(u) }
        }
        return out
    }
}
