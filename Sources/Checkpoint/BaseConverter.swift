import Crypto
import TensorFile

/// Options of `lidb convert` when the output is a base.
public struct BaseConvertOptions: Sendable {
    /// Element type of floating-point weights; nil keeps each tensor's own.
    public var dtype: DType?
    /// A VAE to use instead of the checkpoint's: a diffusers `vae` folder, or a single file with
    /// diffusers names, LDM names (`first_stage_model.*`) or bare LDM VAE names (`encoder.down.*`).
    public var vae: String?
    /// Take the UNet from the EMA copy (`model_ema.*`) of an LDM checkpoint.
    public var ema: Bool
    /// `epsilon` or `v_prediction`; nil: the scheduler config's, else epsilon for SD 1.x and
    /// v_prediction for SD 2.x single files.
    public var predictionType: String?
    /// A diffusers folder whose configs and tokenizer describe a single-file checkpoint.
    public var configFolder: String?
    /// Checks the tokenizer files taken from a folder (keyed by file name) before anything is
    /// written; its errors name the bare file name, which the plan prefixes with the folder. The
    /// tokenizer itself lives in the runtime (a higher layer), so the caller supplies the check.
    public var validateTokenizer: (@Sendable ([String: [UInt8]]) throws(TensorFileError) -> Void)?

    public init(dtype: DType? = nil, vae: String? = nil, ema: Bool = false, predictionType: String? = nil, configFolder: String? = nil,
                validateTokenizer: (@Sendable ([String: [UInt8]]) throws(TensorFileError) -> Void)? = nil) {
        self.dtype = dtype
        self.vae = vae
        self.ema = ema
        self.predictionType = predictionType
        self.configFolder = configFolder
        self.validateTokenizer = validateTokenizer
    }
}

/// One tensor of a base being assembled: its base name, shape, source dtype, and where its bytes
/// come from (fetched lazily so only one tensor is resident at a time).
public struct PlannedTensor {
    public var info: TensorInfo
    public var fetch: () throws(TensorFileError) -> TensorBytes
    public var isWeight: Bool = true
    public var encodingHint: LidbWriter.TensorEncoding? = nil

    public init(info: TensorInfo, fetch: @escaping () throws(TensorFileError) -> TensorBytes, isWeight: Bool = true,
                encodingHint: LidbWriter.TensorEncoding? = nil) {
        self.info = info
        self.fetch = fetch
        self.isWeight = isWeight
        self.encodingHint = encodingHint
    }
}

/// Everything needed to write a base file.
public struct BasePlan {
    public var architecture: Architecture
    /// Metadata without fingerprints (added while writing).
    public var metadata: JSONValue
    public var tensors: [PlannedTensor]
    /// Things the user should hear about (one line each, without the "warning:" prefix): above all
    /// a base that ends up without a tokenizer, and why.
    public var warnings: [String]

    public init(architecture: Architecture, metadata: JSONValue, tensors: [PlannedTensor], warnings: [String] = []) {
        self.architecture = architecture
        self.metadata = metadata
        self.tensors = tensors
        self.warnings = warnings
    }
    public var tensorNames: [String] { tensors.map(\.info.name) }
    /// The tokenizer files the base will store (`vocab.json`, …), keyed by file name.
    public var tokenizerFiles: [String: [UInt8]] {
        get throws(TensorFileError) {
            var out: [String: [UInt8]] = [:]
            for t in tensors where t.info.name.hasPrefix("tokenizer.") {
                out[String(t.info.name.dropFirst("tokenizer.".count))] = try t.fetch().array
            }
            return out
        }
    }
    /// `built-in` when the tokenizer files are lidb's CLIP tokenizer (`EmbeddedTokenizer`); nil
    /// when they come from the source (or the base has none).
    public var tokenizerOrigin: String? {
        metadata["components"]?["tokenizer"]?["origin"]?.stringValue
    }
    public var tensorInfos: [TensorInfo] { tensors.map(\.info) }
}

/// Builds `base.lidb` files from diffusers folders and single-file checkpoints.
public enum BaseConverter {
    public static let schemaVersion = 1

    /// Plans the conversion of `input`: a diffusers folder, or a single-file checkpoint
    /// (`.safetensors`, `.ckpt`, `.pt`, `.pth`, `.bin`) in the LDM layout.
    public static func plan(input: String, options: BaseConvertOptions = .init()) throws(TensorFileError) -> BasePlan {
        var plan: BasePlan
        if isDirectory(input) {
            guard fileExists(input + "/model_index.json") else {
                throw TensorFileError(file: input, .unsupportedFormat("a folder must be a diffusers pipeline (no model_index.json)"))
            }
            plan = try planDiffusers(DiffusersFolder(path: input), options: options)
        } else {
            plan = try planSingleFile(openTensorCollection(input), options: options)
        }
        if let vae = options.vae { try replaceVAE(&plan, with: vae) }
        return plan
    }

    // MARK: Diffusers folders

    static func planDiffusers(_ folder: DiffusersFolder, options: BaseConvertOptions) throws(TensorFileError) -> BasePlan {
        func fail(_ m: String) -> TensorFileError { TensorFileError(file: folder.path, .unsupportedFormat(m)) }
        if folder.modelIndex["text_encoder_2"] != nil || folder.components.first(where: { $0.name == "unet" })?.config["addition_embed_type"]?.stringValue == "text_time" {
            throw fail("not supported yet: SDXL (the pipeline has text_encoder_2 / text_time embeddings)")
        }
        guard let unet = folder.components.first(where: { $0.name == "unet" }),
              let vae = folder.components.first(where: { $0.name == "vae" }),
              let text = folder.components.first(where: { $0.name == "text_encoder" }) else {
            throw fail("the pipeline needs unet, vae and text_encoder")
        }
        let arch = try architecture(unet: unet.config, vae: vae.config, text: text.config, file: folder.path)
        var tensors: [PlannedTensor] = []
        for (comp, _, weights) in [unet, text, vae] {
            for t in weights.tensors.sorted(by: { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }) {
                var info = t
                info.name = comp + "." + normalisedComponentName(comp, t.name)
                let name = t.name
                tensors.append(PlannedTensor(info: info, fetch: { () throws(TensorFileError) in try weights.tensorBytes(name) }))
            }
        }
        let embedding = text.weights.tensors.first { normalisedComponentName("text_encoder", $0.name) == "text_model.embeddings.token_embedding.weight" }
        let tokenizer = try chooseTokenizer(folder: folder.tokenizerFiles, folderPath: folder.path + "/tokenizer", family: arch.family,
                                            vocabularyRows: embedding?.shape.first, input: folder.path,
                                            validate: options.validateTokenizer,
                                            remedy: "give the folder the model's tokenizer/ (tokenizer.json, or vocab.json and merges.txt)")
        tensors += tokenizerTensors(tokenizer.files)
        let prediction = options.predictionType ?? folder.schedulerConfig?["prediction_type"]?.stringValue ?? "epsilon"
        var scheduler = folder.schedulerConfig ?? DefaultConfigs.scheduler(arch.family, prediction: prediction)
        scheduler = scheduler.setting("prediction_type", .string(prediction))
        let metadata = baseMetadata(arch: arch, prediction: prediction, unet: unet.config, vae: vae.config, text: text.config,
                                    scheduler: scheduler, tokenizer: tokenizer.files, tokenizerOrigin: tokenizer.origin, modelIndex: folder.modelIndex,
                                    source: .object([("format", .string("diffusers")), ("path", .string(basename(folder.path)))]))
        try checkDuplicates(tensors, file: folder.path)
        return BasePlan(architecture: arch, metadata: metadata, tensors: tensors, warnings: tokenizer.warnings)
    }

    /// transformers ≥ 5 saves `CLIPTextModel` without the `text_model.` prefix; bases always use it.
    static func normalisedComponentName(_ comp: String, _ name: String) -> String {
        if comp == "text_encoder" && !name.hasPrefix("text_model.") && (name.hasPrefix("embeddings.") || name.hasPrefix("encoder.") || name.hasPrefix("final_layer_norm.")) {
            return "text_model." + name
        }
        return name
    }

    static func architecture(unet: JSONValue, vae: JSONValue, text: JSONValue, file: String) throws(TensorFileError) -> Architecture {
        func int(_ v: JSONValue, _ k: String) throws(TensorFileError) -> Int {
            guard let x = v[k]?.int64Value else { throw TensorFileError(file: file, .missingField(k)) }
            return Int(x)
        }
        guard let downTypes = unet["down_block_types"]?.arrayValue?.compactMap(\.stringValue),
              let upTypes = unet["up_block_types"]?.arrayValue?.compactMap(\.stringValue),
              let vaeChannels = vae["block_out_channels"]?.arrayValue else {
            throw TensorFileError(file: file, .missingField("down_block_types / up_block_types / block_out_channels"))
        }
        let sd2 = unet["use_linear_projection"]?.boolValue == true || text["hidden_act"]?.stringValue == "gelu"
        return Architecture(family: sd2 ? .sd2 : .sd1, unetInChannels: try int(unet, "in_channels"),
                            unetLayersPerBlock: try int(unet, "layers_per_block"),
                            downAttention: downTypes.map { $0.hasPrefix("CrossAttn") }, upAttention: upTypes.map { $0.hasPrefix("CrossAttn") },
                            vaeBlocks: vaeChannels.count, vaeLayersPerBlock: try int(vae, "layers_per_block"),
                            textLayers: try int(text, "num_hidden_layers"))
    }

    // MARK: Single files in the LDM layout

    static func planSingleFile(_ src: TensorCollection, options: BaseConvertOptions) throws(TensorFileError) -> BasePlan {
        if let lidb = src as? LidbFile, lidb.kind == "base" { return try planRebase(lidb, options: options) }
        let all = src.tensors
        var arch = try Architecture.detectLDM(all, file: src.path)
        let shapes = Dictionary(all.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        var unetConfig: JSONValue, vaeConfig: JSONValue, textConfig: JSONValue
        var folderTokenizer: [String: [UInt8]] = [:]
        var scheduler: JSONValue?
        if let dir = options.configFolder {
            let folder = try DiffusersFolder(path: dir, requireWeights: false)
            guard let u = try? readJSON(dir + "/unet/config.json"), let v = try? readJSON(dir + "/vae/config.json"),
                  let t = try? readJSON(dir + "/text_encoder/config.json") else {
                throw TensorFileError(file: dir, .unsupportedFormat("--config folder needs unet/, vae/ and text_encoder/ config.json"))
            }
            (unetConfig, vaeConfig, textConfig) = (u, v, t)
            folderTokenizer = folder.tokenizerFiles
            scheduler = folder.schedulerConfig
        } else {
            (unetConfig, vaeConfig, textConfig) = inferConfigs(arch, shapes: shapes)
        }
        if arch.family == .sd2 {
            // diffusers' SD 2.x text encoder stops at the penultimate OpenCLIP block; later blocks stay as extras.
            arch.textLayers = Int(textConfig["num_hidden_layers"]?.int64Value ?? Int64(arch.textLayers - 1))
        }
        let map = try keyMap(arch, file: src.path)
        let prediction = options.predictionType ?? scheduler?["prediction_type"]?.stringValue ?? (arch.family == .sd2 ? "v_prediction" : "epsilon")
        let schedulerConfig = (scheduler ?? DefaultConfigs.scheduler(arch.family, prediction: prediction)).setting("prediction_type", .string(prediction))

        let emaPrefix = "model_ema."
        let emaNames = Set(all.map(\.name).filter { $0.hasPrefix(emaPrefix) })
        if options.ema && emaNames.isEmpty {
            throw TensorFileError(file: src.path, .invalidArgument("--ema: the checkpoint has no EMA weights (no model_ema.* tensors)"))
        }
        var tensors: [PlannedTensor] = []
        var extras: [PlannedTensor] = []
        for t in all {
            if t.name.hasPrefix(emaPrefix) { continue }
            var sourceName = t.name
            if options.ema && t.name.hasPrefix("model.diffusion_model.") {
                // LDM's EMA copy names drop "model." and every dot: model_ema.diffusion_modelinput_blocks00weight
                let emaName = emaPrefix + t.name.dropFirst("model.".count).replacingDots()
                guard emaNames.contains(emaName) else {
                    throw TensorFileError(file: src.path, tensor: t.name, .invalidArgument("--ema: no EMA copy (\(emaName))"))
                }
                sourceName = emaName
            }
            let srcName = sourceName
            guard let (entry, suffix) = map.lookup(ldm: t.name) else {
                var info = t
                info.name = "extra." + t.name
                extras.append(PlannedTensor(info: info, fetch: { () throws(TensorFileError) in try src.tensorBytes(srcName) }, isWeight: false))
                continue
            }
            if entry.base.count > 1 {
                // One LDM tensor → equal chunks along dim 0 (views, no copy).
                let n = entry.base.count
                guard let d0 = t.shape.first, d0 % n == 0 else {
                    throw TensorFileError(file: src.path, tensor: t.name, .invalidShape("cannot split \(t.shape) into \(n) equal parts"))
                }
                for (k, name) in entry.base.enumerated() {
                    var info = t
                    info.name = name
                    info.shape[0] = d0 / n
                    let chunk = info.byteCount
                    tensors.append(PlannedTensor(info: info, fetch: { () throws(TensorFileError) in
                        let all = try src.tensorBytes(srcName)
                        return TensorBytes(owner: all.owner, bytes: UnsafeRawBufferPointer(rebasing: all.bytes[(k * chunk)..<((k + 1) * chunk)]))
                    }))
                }
                continue
            }
            var info = t
            info.name = entry.base[0] + suffix
            if entry.reshape1x1 && suffix == "weight" && t.shape.count == 4 && t.shape[2] == 1 && t.shape[3] == 1 {
                info.shape = [t.shape[0], t.shape[1]]
            }
            tensors.append(PlannedTensor(info: info, fetch: { () throws(TensorFileError) in try src.tensorBytes(srcName) }))
        }
        let order: (PlannedTensor, PlannedTensor) -> Bool = { a, b in
            let ra = componentRank(a.info.name), rb = componentRank(b.info.name)
            return ra != rb ? ra < rb : a.info.name.utf8.lexicographicallyPrecedes(b.info.name.utf8)
        }
        tensors.sort(by: order)
        extras.sort(by: order)
        // No single file carries a tokenizer: --config's, else lidb's built-in CLIP tokenizer.
        let embedding = arch.family == .sd1 ? "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" : "cond_stage_model.model.token_embedding.weight"
        let tokenizer = try chooseTokenizer(folder: folderTokenizer, folderPath: options.configFolder.map { $0 + "/tokenizer" }, family: arch.family,
                                            vocabularyRows: shapes[embedding]?.first, input: src.path,
                                            validate: options.validateTokenizer)
        tensors += tokenizerTensors(tokenizer.files)
        tensors += extras
        let container = (src as? TensorFile.SafetensorsFile) != nil ? "safetensors" : src.formatName
        let metadata = baseMetadata(arch: arch, prediction: prediction, unet: unetConfig, vae: vaeConfig, text: textConfig,
                                    scheduler: schedulerConfig, tokenizer: tokenizer.files, tokenizerOrigin: tokenizer.origin, modelIndex: nil,
                                    source: .object([("format", .string("single-file")), ("container", .string(container)),
                                                     ("path", .string(basename(src.path))), ("ema", .bool(options.ema)),
                                                     ("dropped_ema_tensors", .int(options.ema ? 0 : emaNames.count)),
                                                     ("extra_tensors", .int(extras.count))]))
        try checkDuplicates(tensors, file: src.path)
        return BasePlan(architecture: arch, metadata: metadata, tensors: tensors, warnings: tokenizer.warnings)
    }

    static func componentRank(_ name: String) -> Int {
        if name.hasPrefix("unet.") { return 0 }
        if name.hasPrefix("text_encoder.") { return 1 }
        if name.hasPrefix("vae.") { return 2 }
        if name.hasPrefix("tokenizer.") { return 3 }
        return 4
    }

    public static func keyMap(_ arch: Architecture, file: String) throws(TensorFileError) -> KeyMap {
        guard let text = EmbeddedMaps.files["sd-ldm.json"] else { fatalError("name map missing from the build") }
        do {
            let json = try JSONValue.parse(Array(text.utf8), file: "sd-ldm.json")
            return try KeyMap(map: json, architecture: arch.family.rawValue, variables: arch.mapVariables)
        } catch let e as TensorFileError {
            throw e
        } catch {
            throw TensorFileError(file: file, .invalidArgument("\(error)"))
        }
    }

    /// Configs read off the tensors of an LDM checkpoint, on top of the released defaults.
    static func inferConfigs(_ arch: Architecture, shapes: [String: [Int]]) -> (JSONValue, JSONValue, JSONValue) {
        let u = "model.diffusion_model.", L = arch.unetLayersPerBlock
        var unet = DefaultConfigs.unet(arch.family)
        let channels = (0..<arch.downAttention.count).compactMap { b in shapes[u + "input_blocks.\(1 + b * (L + 1)).0.in_layers.2.weight"]?.first }
        if channels.count == arch.downAttention.count {
            unet = unet.setting("block_out_channels", .array(channels.map { .int($0) }))
            if arch.family == .sd2 { unet = unet.setting("attention_head_dim", .array(channels.map { .int(max($0 / 64, 1)) })) }
        }
        unet = unet.setting("in_channels", .int(arch.unetInChannels))
        if let out = shapes[u + "out.2.weight"]?.first { unet = unet.setting("out_channels", .int(out)) }
        unet = unet.setting("layers_per_block", .int(L))
        unet = unet.setting("down_block_types", .array(arch.downAttention.map { .string($0 ? "CrossAttnDownBlock2D" : "DownBlock2D") }))
        unet = unet.setting("up_block_types", .array(arch.upAttention.map { .string($0 ? "CrossAttnUpBlock2D" : "UpBlock2D") }))
        if let k = shapes.first(where: { $0.key.hasPrefix(u) && $0.key.hasSuffix("attn2.to_k.weight") })?.value, k.count == 2 {
            unet = unet.setting("cross_attention_dim", .int(k[1]))
        }
        if let p = shapes.first(where: { $0.key.hasPrefix(u) && $0.key.hasSuffix("proj_in.weight") })?.value {
            unet = unet.setting("use_linear_projection", .bool(p.count == 2))
        }
        var vae = DefaultConfigs.vae(arch.family)
        let v = "first_stage_model."
        let vch = (0..<arch.vaeBlocks).compactMap { b in shapes[v + "encoder.down.\(b).block.0.conv1.weight"]?.first }
        if vch.count == arch.vaeBlocks {
            vae = vae.setting("block_out_channels", .array(vch.map { .int($0) }))
            vae = vae.setting("down_block_types", .array(vch.map { _ in .string("DownEncoderBlock2D") }))
            vae = vae.setting("up_block_types", .array(vch.map { _ in .string("UpDecoderBlock2D") }))
        }
        vae = vae.setting("layers_per_block", .int(arch.vaeLayersPerBlock))
        if let q = shapes[v + "quant_conv.weight"]?.first { vae = vae.setting("latent_channels", .int(q / 2)) }
        var text = DefaultConfigs.textEncoder(arch.family)
        let tok = arch.family == .sd1 ? "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" : "cond_stage_model.model.token_embedding.weight"
        if let s = shapes[tok], s.count == 2 {
            text = text.setting("vocab_size", .int(s[0])).setting("hidden_size", .int(s[1])).setting("num_attention_heads", .int(max(s[1] / 64, 1)))
        }
        let fc1 = arch.family == .sd1 ? "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight" : "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight"
        if let s = shapes[fc1]?.first { text = text.setting("intermediate_size", .int(s)) }
        text = text.setting("num_hidden_layers", .int(arch.family == .sd2 ? arch.textLayers - 1 : arch.textLayers))
        return (unet, vae, text)
    }

    // MARK: Re-encoding an existing base

    static func planRebase(_ base: LidbFile, options: BaseConvertOptions) throws(TensorFileError) -> BasePlan {
        let model = try BaseModel(file: base)
        var tensors: [PlannedTensor] = []
        for e in base.layout.entries {
            let name = e.info.name
            tensors.append(PlannedTensor(info: e.info, fetch: { () throws(TensorFileError) in try base.tensorBytes(name) },
                                         isWeight: !name.hasPrefix("tokenizer.") && !name.hasPrefix("extra."),
                                         encodingHint: name.hasPrefix("tokenizer.") ? .zstd(level: 19) : nil))
        }
        var md = base.metadata
        if let p = options.predictionType {
            md = md.setting("prediction_type", .string(p))
        }
        var warnings: [String] = []
        if !tensors.contains(where: { $0.info.name.hasPrefix("tokenizer.") }) {
            // A base converted without a tokenizer gets the built-in one when its vocabulary fits.
            let rows = base.entry("text_encoder.text_model.embeddings.token_embedding.weight")?.info.shape.first
            let tokenizer = try chooseTokenizer(folder: [:], folderPath: nil, family: model.architecture.family, vocabularyRows: rows, input: base.path,
                                                validate: nil)
            warnings = tokenizer.warnings
            if !tokenizer.files.isEmpty {
                let at = tensors.firstIndex { $0.info.name.hasPrefix("extra.") } ?? tensors.count
                tensors.insert(contentsOf: tokenizerTensors(tokenizer.files), at: at)
                var comps = md["components"] ?? .object([])
                comps = comps.setting("tokenizer", tokenizerComponent(tokenizer.files, origin: tokenizer.origin))
                md = md.setting("components", comps)
            }
        }
        return BasePlan(architecture: model.architecture, metadata: md, tensors: tensors, warnings: warnings)
    }

    // MARK: VAE replacement

    static func replaceVAE(_ plan: inout BasePlan, with path: String) throws(TensorFileError) {
        var weights: TensorCollection
        var config: JSONValue? = nil
        if isDirectory(path) {
            guard let w = try DiffusersFolder.openWeights(path) else { throw TensorFileError(file: path, .unsupportedFormat("no VAE weights in the folder")) }
            weights = w
            if fileExists(path + "/config.json") { config = try readJSON(path + "/config.json") }
        } else {
            weights = try openTensorCollection(path)
        }
        let names = weights.tensors.map(\.name)
        let map = try keyMap(plan.architecture, file: path)
        var vae: [PlannedTensor] = []
        for t in weights.tensors {
            let name = t.name
            var info = t
            if name.hasPrefix("encoder.down_blocks.") || name.hasPrefix("decoder.up_blocks.") || name.hasPrefix("encoder.") && names.contains("encoder.conv_norm_out.weight")
                || name.hasPrefix("decoder.") && names.contains("decoder.conv_norm_out.weight") || name.hasPrefix("quant_conv.") && names.contains("encoder.conv_norm_out.weight")
                || name.hasPrefix("post_quant_conv.") && names.contains("encoder.conv_norm_out.weight") {
                info.name = "vae." + name
            } else {
                let ldm = name.hasPrefix("first_stage_model.") ? name : "first_stage_model." + name
                guard let (entry, suffix) = map.lookup(ldm: ldm), entry.base.count == 1, entry.base[0].hasPrefix("vae.") else { continue }
                info.name = entry.base[0] + suffix
                if entry.reshape1x1 && suffix == "weight" && t.shape.count == 4 { info.shape = [t.shape[0], t.shape[1]] }
            }
            vae.append(PlannedTensor(info: info, fetch: { () throws(TensorFileError) in try weights.tensorBytes(name) }))
        }
        let old = plan.tensors.filter { $0.info.name.hasPrefix("vae.") }
        let newNames = Set(vae.map(\.info.name))
        guard Set(old.map(\.info.name)) == newNames else {
            let missing = Set(old.map(\.info.name)).subtracting(newNames).sorted().prefix(3)
            throw TensorFileError(file: path, .unsupportedFormat("this VAE does not match the model (e.g. missing \(missing.joined(separator: ", ")))"))
        }
        let oldShapes = Dictionary(old.map { ($0.info.name, $0.info.shape) }, uniquingKeysWith: { a, _ in a })
        for t in vae where oldShapes[t.info.name] != t.info.shape {
            throw TensorFileError(file: path, tensor: t.info.name, .invalidShape("\(t.info.shape) where the model has \(oldShapes[t.info.name]!)"))
        }
        vae.sort { $0.info.name.utf8.lexicographicallyPrecedes($1.info.name.utf8) }
        let first = plan.tensors.firstIndex { $0.info.name.hasPrefix("vae.") } ?? plan.tensors.count
        plan.tensors.removeAll { $0.info.name.hasPrefix("vae.") }
        plan.tensors.insert(contentsOf: vae, at: min(first, plan.tensors.count))
        var comps = plan.metadata["components"] ?? .object([])
        if let config { comps = comps.setting("vae", .object([("class", .string("AutoencoderKL")), ("config", config)])) }
        plan.metadata = plan.metadata.setting("components", comps)
        let source = (plan.metadata["source"] ?? .object([])).setting("vae", .string(basename(path)))
        plan.metadata = plan.metadata.setting("source", source)
    }

    // MARK: Metadata

    static func tokenizerTensors(_ files: [String: [UInt8]]) -> [PlannedTensor] {
        files.keys.sorted().map { f in
            let bytes = files[f]!
            let owned = OwnedBytes(count: bytes.count)
            if !bytes.isEmpty { bytes.withUnsafeBytes { owned.buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) } }
            return PlannedTensor(info: TensorInfo(name: "tokenizer." + f, dtype: .U8, shape: [bytes.count]),
                                 fetch: { TensorBytes(owned: owned) }, isWeight: false, encodingHint: .zstd(level: 19))
        }
    }

    /// The files a tokenizer needs: `tokenizer.json` (transformers ≥ 5 saves only that), or
    /// `vocab.json` and `merges.txt`.
    public static func isCompleteTokenizer(_ files: [String: [UInt8]]) -> Bool {
        files["tokenizer.json"] != nil || files["vocab.json"] != nil && files["merges.txt"] != nil
    }

    /// The tokenizer of a base: the folder's when it is complete, else lidb's built-in CLIP
    /// tokenizer when the text encoder's vocabulary has CLIP's 49,408 tokens, else none; with a
    /// warning for every case the user should know about.
    static func chooseTokenizer(folder: [String: [UInt8]], folderPath: String?, family: Architecture.Family, vocabularyRows: Int?, input: String,
                                validate: (@Sendable ([String: [UInt8]]) throws(TensorFileError) -> Void)?,
                                remedy: String = "pass --config DIR (a diffusers folder with the model's tokenizer/)") throws(TensorFileError)
        -> (files: [String: [UInt8]], origin: String?, warnings: [String]) {
        if isCompleteTokenizer(folder), let folderPath {
            do throws(TensorFileError) {
                try validate?(folder)
            } catch {
                throw TensorFileError(file: folderPath + "/" + error.file, tensor: error.tensor, error.problem)
            }
            return (folder, nil, [])
        }
        var warnings: [String] = []
        if let folderPath {
            let why = folder.isEmpty ? "has no tokenizer files" : "has \(folder.keys.sorted().joined(separator: ", ")) but neither tokenizer.json nor vocab.json with merges.txt"
            warnings.append("\(folderPath) \(why)")
        }
        let needed = EmbeddedTokenizer.vocabularySize
        guard let rows = vocabularyRows, rows == needed else {
            let rowsText = vocabularyRows.map { "\($0) tokens" } ?? "no token embedding"
            warnings.append("\(input): the base has no tokenizer, so `lidb generate` and `lidb tokenize` will refuse it: the text encoder's vocabulary has \(rowsText), not CLIP's \(needed), so lidb's built-in CLIP tokenizer does not fit; \(remedy)")
            return ([:], nil, warnings)
        }
        if folderPath != nil { warnings.append("\(input): using lidb's built-in CLIP tokenizer (\(family.rawValue): pad token \(EmbeddedTokenizer.padToken(family)))") }
        return (try EmbeddedTokenizer.files(family), "built-in", warnings)
    }

    static func tokenizerComponent(_ files: [String: [UInt8]], origin: String?) -> JSONValue {
        var pairs: [(String, JSONValue)] = [("class", .string("CLIPTokenizer")), ("files", .array(files.keys.sorted().map { .string($0) }))]
        if let origin { pairs.append(("origin", .string(origin))) }
        return .object(pairs)
    }

    static func baseMetadata(arch: Architecture, prediction: String, unet: JSONValue, vae: JSONValue, text: JSONValue,
                             scheduler: JSONValue, tokenizer: [String: [UInt8]], tokenizerOrigin: String?, modelIndex: JSONValue?, source: JSONValue) -> JSONValue {
        var comps: [(String, JSONValue)] = [
            ("unet", .object([("class", .string("UNet2DConditionModel")), ("config", unet)])),
            ("text_encoder", .object([("class", .string("CLIPTextModel")), ("config", text)])),
            ("vae", .object([("class", .string("AutoencoderKL")), ("config", vae)])),
            ("scheduler", .object([("class", .string(scheduler["_class_name"]?.stringValue ?? "PNDMScheduler")), ("config", scheduler)])),
        ]
        if !tokenizer.isEmpty {
            comps.append(("tokenizer", tokenizerComponent(tokenizer, origin: tokenizerOrigin)))
        }
        var pairs: [(String, JSONValue)] = [
            ("lidb_base", .int(schemaVersion)),
            ("architecture", .string(arch.family.rawValue)),
            ("variant", .string(arch.isInpainting ? "inpainting" : "txt2img")),
            ("prediction_type", .string(prediction)),
            ("components", .object(comps)),
        ]
        if let modelIndex { pairs.append(("model_index", modelIndex)) }
        pairs.append(("source", source))
        pairs.append(("converted_by", .string("lidb \(lidbVersion)")))
        return .object(pairs)
    }

    static func checkDuplicates(_ tensors: [PlannedTensor], file: String) throws(TensorFileError) {
        var seen = Set<String>()
        for t in tensors where !seen.insert(t.info.name).inserted {
            throw TensorFileError(file: file, tensor: t.info.name, .duplicateTensor)
        }
    }
}

public let lidbVersion = "0.1.0"

func basename(_ path: String) -> String {
    var p = Substring(path)
    while p.hasSuffix("/") && p.count > 1 { p = p.dropLast() }
    if let slash = p.lastIndex(of: "/") { return String(p[p.index(after: slash)...]) }
    return String(p)
}

extension Substring {
    func replacingDots() -> String { String(filter { $0 != "." }) }
}
