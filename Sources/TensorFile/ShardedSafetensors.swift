/// A checkpoint split over several safetensors files, described by `*.safetensors.index.json`
/// (`{"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}`).
public final class ShardedSafetensors: TensorCollection, @unchecked Sendable {
    public let path: String
    public let shards: [SafetensorsFile]

    public func releaseMappedPages() { for s in shards { s.releaseMappedPages() } }
    /// `metadata` of the index as typed JSON (e.g. `total_size`).
    public let indexMetadata: JSONValue
    private let location: [String: (shard: Int, entry: Int)]
    public let tensors: [TensorInfo]

    public static let maxIndexSize = 100_000_000

    public init(indexPath: String) throws(TensorFileError) {
        path = indexPath
        func fail(_ p: TensorFileError.Problem, _ t: String? = nil) -> TensorFileError { TensorFileError(file: indexPath, tensor: t, p) }
        let map = try MappedFile(path: indexPath)
        guard map.bytes.count <= Self.maxIndexSize else {
            throw fail(.headerTooLarge(length: UInt64(map.bytes.count), limit: UInt64(Self.maxIndexSize)))
        }
        if let bad = firstInvalidUTF8(map.bytes) { throw fail(.headerNotUTF8(offset: bad)) }
        let json: JSONValue
        do { json = try JSONValue.parse(map.bytes) } catch { throw fail(jsonProblem(error)) }
        guard case .object = json else { throw fail(.invalidShardIndex("not a JSON object")) }
        guard let wm = json["weight_map"]?.objectValue else { throw fail(.invalidShardIndex("missing 'weight_map' object")) }
        indexMetadata = json["metadata"] ?? .object([])

        let dir: String = {
            guard let slash = indexPath.lastIndex(of: "/") else { return "." }
            let d = String(indexPath[..<slash])
            return d.isEmpty ? "/" : d
        }()
        var shardOrder: [String] = []
        var shardIndex: [String: Int] = [:]
        for (name, v) in wm {
            guard let file = v.stringValue else { throw fail(.invalidShardIndex("shard for '\(name.debugEscaped)' is not a string"), name) }
            guard !file.isEmpty, !file.hasPrefix("/"), !file.split(separator: "/").contains(".."), !file.contains("\0") else {
                throw fail(.invalidShardIndex("shard path '\(file.debugEscaped)' leaves the index's folder"), name)
            }
            if shardIndex[file] == nil {
                shardIndex[file] = shardOrder.count
                shardOrder.append(file)
            }
        }
        // The literal check above cannot see symbolic links: resolve both sides and check again, so
        // a link inside the folder cannot point a shard at any other file.
        let resolvedDir = resolvedPath(dir)
        var shards: [SafetensorsFile] = []
        for f in shardOrder {
            let shardPath = dir + "/" + f
            if let rd = resolvedDir, let rs = resolvedPath(shardPath) {
                let inside = rd == "/" ? rs.hasPrefix("/") : rs.hasPrefix(rd + "/")
                guard inside else {
                    let t = wm.first(where: { $0.1.stringValue == f })?.0
                    throw fail(.invalidShardIndex("shard path '\(f.debugEscaped)' leaves the index's folder through a symbolic link"), t)
                }
            }
            shards.append(try SafetensorsFile(path: shardPath))
        }
        self.shards = shards

        var loc: [String: (Int, Int)] = [:]
        var infos: [TensorInfo] = []
        for (name, v) in wm {
            let s = shardIndex[v.stringValue!]!
            guard let e = shards[s].entryIndex(name) else {
                throw fail(.invalidShardIndex("tensor is not in its shard \(shardOrder[s])"), name)
            }
            loc[name] = (s, e)
            infos.append(shards[s].layout.entries[e].info)
        }
        for (s, shard) in shards.enumerated() {
            for e in shard.layout.entries where loc[e.info.name] == nil || loc[e.info.name]!.0 != s {
                throw fail(.invalidShardIndex("shard \(shardOrder[s]) holds a tensor the index does not map to it"), e.info.name)
            }
        }
        location = loc
        tensors = infos
    }

    public var formatName: String { "safetensors-sharded" }

    public var metadataJSON: JSONValue {
        var pairs: [(String, JSONValue)] = []
        if let m = shards.first?.metadata { pairs = m.map { ($0.0, .string($0.1)) } }
        return .object(pairs)
    }

    public func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes {
        guard let (s, _) = location[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        return try shards[s].tensorBytes(name)
    }

    public func verbatimRange(_ name: String) -> VerbatimRange? {
        guard let (s, _) = location[name] else { return nil }
        return shards[s].verbatimRange(name)
    }

    public func streamTensor(_ name: String, _ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) {
        guard let (s, _) = location[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        try shards[s].streamTensor(name, body)
    }
}
