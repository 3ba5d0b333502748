import TensorFile
#if canImport(Glibc)
import Glibc
#endif

/// A diffusers pipeline folder (`model_index.json` plus one folder per component), read without
/// copying: each component's weights are opened as safetensors (single or sharded) or as a
/// PyTorch zip `.bin`.
public final class DiffusersFolder {
    public let path: String
    public let modelIndex: JSONValue
    /// Weight-bearing components: unet, vae, text_encoder (each with its config and weights).
    public private(set) var components: [(name: String, config: JSONValue, weights: TensorCollection)] = []
    /// Tokenizer files (`tokenizerFileNames` that exist in `tokenizer/`), raw bytes.
    public private(set) var tokenizerFiles: [String: [UInt8]] = [:]
    public private(set) var schedulerConfig: JSONValue?

    public static let weightComponents = ["unet", "vae", "text_encoder"]
    /// The tokenizer files a base keeps: transformers < 5 saves `vocab.json` and `merges.txt`
    /// (often with `tokenizer.json` too), transformers ≥ 5 only `tokenizer.json`; the two JSON
    /// configurations name the special tokens.
    public static let tokenizerFileNames = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    /// The largest tokenizer file read (CLIP's tokenizer.json is 3.6 MB).
    public static let maxTokenizerFileSize = 32 << 20

    public init(path: String, requireWeights: Bool = true) throws(TensorFileError) {
        self.path = path
        let indexPath = path + "/model_index.json"
        modelIndex = try readJSON(indexPath)
        for comp in Self.weightComponents {
            let dir = path + "/" + comp
            guard isDirectory(dir) else {
                if requireWeights { throw TensorFileError(file: path, .unsupportedFormat("diffusers folder has no \(comp)/ folder")) }
                continue
            }
            let config = try readJSON(dir + "/config.json")
            guard let weights = try Self.openWeights(dir) else {
                throw TensorFileError(file: dir, .unsupportedFormat("no weights (expected *.safetensors, *.safetensors.index.json or *.bin)"))
            }
            components.append((comp, config, weights))
        }
        let tok = path + "/tokenizer"
        if isDirectory(tok) {
            for f in Self.tokenizerFileNames where fileExists(tok + "/" + f) {
                tokenizerFiles[f] = try readFile(tok + "/" + f, limit: Self.maxTokenizerFileSize)
            }
        }
        if fileExists(path + "/scheduler/scheduler_config.json") {
            schedulerConfig = try readJSON(path + "/scheduler/scheduler_config.json")
        }
    }

    /// Opens a component's weights, preferring safetensors (unsharded, then sharded), then `.bin`.
    static func openWeights(_ dir: String) throws(TensorFileError) -> TensorCollection? {
        let files = listDirectory(dir).sorted()
        let prefer = ["diffusion_pytorch_model.safetensors", "model.safetensors"]
        for p in prefer where files.contains(p) { return try SafetensorsFile(path: dir + "/" + p) }
        if let idx = files.first(where: { $0.hasSuffix(".safetensors.index.json") }) { return try ShardedSafetensors(indexPath: dir + "/" + idx) }
        if let st = files.first(where: { $0.hasSuffix(".safetensors") && !$0.contains(".fp16.") }) { return try SafetensorsFile(path: dir + "/" + st) }
        for p in ["diffusion_pytorch_model.bin", "pytorch_model.bin"] where files.contains(p) { return try openTensorCollection(dir + "/" + p) }
        if let bin = files.first(where: { $0.hasSuffix(".bin") }) { return try openTensorCollection(dir + "/" + bin) }
        return nil
    }
}

// MARK: - Small file helpers

func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

func fileExists(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
}

func listDirectory(_ path: String) -> [String] {
    guard let d = opendir(path) else { return [] }
    defer { closedir(d) }
    var out: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { b in String(cString: b.bindMemory(to: CChar.self).baseAddress!) }
        if name != "." && name != ".." { out.append(name) }
    }
    return out
}

/// Reads a whole (small) file; refuses files over 64 MiB.
func readFile(_ path: String, limit: Int = 64 << 20) throws(TensorFileError) -> [UInt8] {
    let map = try MappedFile(path: path)
    guard map.bytes.count <= limit else { throw TensorFileError(file: path, .limitExceeded(what: "file size \(map.bytes.count)", limit: UInt64(limit))) }
    return Array(map.bytes)
}

func readJSON(_ path: String) throws(TensorFileError) -> JSONValue {
    try JSONValue.parse(try readFile(path), file: path)
}

/// A diffusers folder seen as one collection of tensors under base names (`unet.*`, `vae.*`,
/// `text_encoder.*`), for `lidb inspect`.
public final class DiffusersCollection: TensorCollection {
    public let folder: DiffusersFolder
    public let tensors: [TensorInfo]
    private let location: [String: (TensorCollection, String)]

    public init(path: String) throws(TensorFileError) {
        folder = try DiffusersFolder(path: path)
        var infos: [TensorInfo] = []
        var loc: [String: (TensorCollection, String)] = [:]
        for (comp, _, weights) in folder.components {
            for t in weights.tensors {
                var i = t
                i.name = comp + "." + BaseConverter.normalisedComponentName(comp, t.name)
                infos.append(i)
                loc[i.name] = (weights, t.name)
            }
        }
        tensors = infos
        location = loc
    }

    public var path: String { folder.path }
    public var formatName: String { "diffusers" }
    public var metadataJSON: JSONValue {
        var pairs: [(String, JSONValue)] = [("model_index", folder.modelIndex)]
        for (comp, config, weights) in folder.components {
            pairs.append((comp, .object([("weights", .string(weights.path)), ("format", .string(weights.formatName)), ("config", config)])))
        }
        if let s = folder.schedulerConfig { pairs.append(("scheduler", s)) }
        return .object(pairs)
    }

    public func tensorBytes(_ name: String) throws(TensorFileError) -> TensorBytes {
        guard let (c, n) = location[name] else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
        return try c.tensorBytes(n)
    }
}
