import TensorFile
#if canImport(Glibc)
import Glibc
#endif

/// A `base` file opened for use: its architecture, component configs, tokenizer and weights.
public final class BaseModel {
    public let file: LidbFile
    public let architecture: Architecture
    public let metadata: JSONValue

    public convenience init(path: String) throws(TensorFileError) {
        try self.init(file: LidbFile(path: path))
    }

    public init(file: LidbFile) throws(TensorFileError) {
        guard file.kind == "base" else {
            throw TensorFileError(file: file.path, .unsupportedFormat("expected a base file, found kind '\(file.kind)'"))
        }
        self.file = file
        metadata = file.metadata
        guard let v = metadata["lidb_base"]?.int64Value else { throw TensorFileError(file: file.path, .missingField("metadata.lidb_base")) }
        guard v == Int64(BaseConverter.schemaVersion) else {
            throw TensorFileError(file: file.path, .unsupportedFormat("base schema version \(v) (this lidb reads version \(BaseConverter.schemaVersion))"))
        }
        guard let unet = metadata["components"]?["unet"]?["config"], let vae = metadata["components"]?["vae"]?["config"],
              let text = metadata["components"]?["text_encoder"]?["config"] else {
            throw TensorFileError(file: file.path, .missingField("metadata.components.{unet,vae,text_encoder}.config"))
        }
        var arch = try BaseConverter.architecture(unet: unet, vae: vae, text: text, file: file.path)
        if let fam = metadata["architecture"]?.stringValue, let f = Architecture.Family(rawValue: fam) { arch.family = f }
        try arch.checkRanges(file: file.path)
        architecture = arch
    }

    public func config(_ component: String) -> JSONValue? { metadata["components"]?[component]?["config"] }
    public var predictionType: String { metadata["prediction_type"]?.stringValue ?? "epsilon" }
    public var layerTableFingerprint: String? { metadata["fingerprints"]?["layer_table"]?.stringValue }
    public var contentFingerprint: String? { metadata["fingerprints"]?["content"]?.stringValue }

    /// The bytes of a tokenizer file stored in the base (vocab.json, merges.txt, …).
    public func tokenizerFile(_ name: String) throws(TensorFileError) -> [UInt8]? {
        guard file.entry("tokenizer." + name) != nil else { return nil }
        return try file.tensorBytes("tokenizer." + name).array
    }
}

/// Views of a base in other layouts.
public enum BaseExporter {
    /// Writes a diffusers pipeline folder at `directory` (which must not exist or be empty). The
    /// folder is assembled next to it (`DIRECTORY.tmp-PID`) and renamed into place when complete;
    /// on an error, or when SIGINT, SIGTERM or SIGHUP ends the process (once
    /// `InterruptCleanup.install` has run), the partial folder is removed.
    public static func exportDiffusers(_ base: BaseModel, to directory: String, progress: ((Int, Int) -> Void)? = nil) throws(TensorFileError) {
        var dir = directory
        while dir.hasSuffix("/") && dir.count > 1 { dir.removeLast() }
        if isDirectory(dir) && !listDirectory(dir).isEmpty {
            throw TensorFileError(file: dir, .invalidArgument("the output folder exists and is not empty"))
        }
        let tmp = dir + ".tmp-\(getpid())"
        removeTree(tmp)
        // Registered before it exists, so no signal finds it unregistered.
        let cleanupSlot = InterruptCleanup.removeOnInterrupt(folder: tmp)
        defer { InterruptCleanup.forget(folder: cleanupSlot) }
        func mk(_ p: String) throws(TensorFileError) {
            guard mkdir(p, 0o755) == 0 || errno == EEXIST else { throw TensorFileError(file: p, .io(operation: "create the folder", message: errnoMessageC())) }
        }
        do throws(TensorFileError) {
            try mk(tmp)
            let md = base.metadata
            let scheduler = base.config("scheduler") ?? .object([])
            let schedulerClass = md["components"]?["scheduler"]?["class"]?.stringValue ?? "PNDMScheduler"
            let modelIndex = md["model_index"] ?? .object([
                ("_class_name", .string(base.architecture.isInpainting ? "StableDiffusionInpaintPipeline" : "StableDiffusionPipeline")),
                ("_diffusers_version", .string("0.42.1")),
                ("feature_extractor", .array([.null, .null])),
                ("requires_safety_checker", .bool(false)),
                ("safety_checker", .array([.null, .null])),
                ("scheduler", .array([.string("diffusers"), .string(schedulerClass)])),
                ("text_encoder", .array([.string("transformers"), .string("CLIPTextModel")])),
                ("tokenizer", .array([.string("transformers"), .string("CLIPTokenizer")])),
                ("unet", .array([.string("diffusers"), .string("UNet2DConditionModel")])),
                ("vae", .array([.string("diffusers"), .string("AutoencoderKL")])),
            ])
            try writeSmallFile(tmp + "/model_index.json", modelIndex.serialized())
            let parts: [(String, String)] = [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                                             ("text_encoder", "model.safetensors")]
            var done = 0
            let total = base.file.tensors.count
            for (comp, weightsName) in parts {
                try mk(tmp + "/" + comp)
                try writeSmallFile(tmp + "/\(comp)/config.json", (base.config(comp) ?? .object([])).serialized())
                let prefix = comp + "."
                let sources = base.file.tensors.filter { $0.name.hasPrefix(prefix) }.map { t -> TensorSource in
                    var info = t
                    info.name = String(t.name.dropFirst(prefix.count))
                    let name = t.name, file = base.file
                    return TensorSource(info: info) { (consume) throws(TensorFileError) in
                        let b = try file.tensorBytes(name)
                        try consume(b.bytes)
                        b.releasePages()
                    }
                }
                try SafetensorsWriter.write(to: tmp + "/\(comp)/\(weightsName)", tensors: sources, metadata: [("format", "pt")]) { k, _ in
                    progress?(done + k, total)
                }
                done += sources.count
            }
            try mk(tmp + "/scheduler")
            try writeSmallFile(tmp + "/scheduler/scheduler_config.json", scheduler.setting("_class_name", .string(schedulerClass)).serialized())
            let tokFiles = base.file.tensors.filter { $0.name.hasPrefix("tokenizer.") }
            if !tokFiles.isEmpty {
                try mk(tmp + "/tokenizer")
                for t in tokFiles {
                    try writeSmallFile(tmp + "/tokenizer/" + t.name.dropFirst("tokenizer.".count), base.file.tensorBytes(t.name).array)
                }
            }
            if isDirectory(dir) { rmdir(dir) }
            guard rename(tmp, dir) == 0 else { throw TensorFileError(file: dir, .io(operation: "rename the finished folder into place", message: errnoMessageC())) }
        } catch {
            removeTree(tmp)
            throw error
        }
    }

    /// Writes the base as one safetensors file in the original LDM layout (tokenizer files are not
    /// part of that layout and are left out; `extra.*` tensors go back under their original names).
    public static func exportSingleFile(_ base: BaseModel, to path: String, progress: ((Int, Int) -> Void)? = nil) throws(TensorFileError) {
        let map = try BaseConverter.keyMap(base.architecture, file: base.file.path)
        let file = base.file
        var sources: [TensorSource] = []
        var emitted = Set<String>()
        let infos = Dictionary(file.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for t in file.tensors {
            if t.name.hasPrefix("tokenizer.") { continue }
            let name = t.name
            if name.hasPrefix("extra.") {
                var info = t
                info.name = String(name.dropFirst("extra.".count))
                sources.append(TensorSource(info: info) { (consume) throws(TensorFileError) in try consume(try file.tensorBytes(name).bytes) })
                continue
            }
            guard let (entry, suffix) = map.lookup(base: name) else {
                throw TensorFileError(file: file.path, tensor: name, .unsupportedFormat("no LDM name for this tensor in the name map"))
            }
            if entry.base.count > 1 {
                // Several base tensors make one LDM tensor: concatenate along dim 0, once.
                guard !emitted.contains(entry.ldm) else { continue }
                emitted.insert(entry.ldm)
                let parts = try entry.base.map { (p) throws(TensorFileError) -> TensorInfo in
                    guard let i = infos[p] else { throw TensorFileError(file: file.path, tensor: p, .tensorNotFound) }
                    return i
                }
                var info = parts[0]
                info.name = entry.ldm
                info.shape[0] = parts.reduce(0) { $0 + $1.shape[0] }
                sources.append(TensorSource(info: info) { (consume) throws(TensorFileError) in
                    for p in parts { try consume(try file.tensorBytes(p.name).bytes) }
                })
                continue
            }
            var info = t
            info.name = entry.ldm + suffix
            if entry.reshape1x1 && suffix == "weight" && t.shape.count == 2 { info.shape = t.shape + [1, 1] }
            sources.append(TensorSource(info: info) { (consume) throws(TensorFileError) in
                let b = try file.tensorBytes(name)
                try consume(b.bytes)
                b.releasePages()
            })
        }
        try SafetensorsWriter.write(to: path, tensors: sources, metadata: nil, progress: progress)
    }
}

func writeSmallFile(_ path: String, _ bytes: [UInt8]) throws(TensorFileError) {
    let w = try AtomicFileWriter(path: path)
    try w.write(bytes)
    try w.commit()
}

func errnoMessageC() -> String { String(cString: strerror(errno)) }

/// Removes a folder tree made by an interrupted export (files one level deep and their folders).
func removeTree(_ path: String) {
    guard isDirectory(path) else { return }
    for name in listDirectory(path) {
        let p = path + "/" + name
        if isDirectory(p) { removeTree(p) } else { unlink(p) }
    }
    rmdir(path)
}
