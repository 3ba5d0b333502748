import Compute
import Checkpoint
import TensorFile

/// The component configurations of a base as the runtime reads them, every number within the
/// range spec/base.md §2.1 documents. A value outside its range is refused with a
/// `TensorFileError` naming the base file and the field (`components.vae.config.scaling_factor`)
/// before anything the value sizes is allocated.

/// A config value outside its documented range: the field (relative to the component's config)
/// and what it must be.
struct ConfigViolation: Error {
    var field: String
    var expected: String
}

/// A closed, open or half-open interval of real numbers, printed as `[0.0001, 10000]`, `(0, 1]`.
struct NumberRange: Sendable {
    var lower: Double, upper: Double
    var lowerOpen = false, upperOpen = false

    func contains(_ x: Double) -> Bool {
        x.isFinite && (lowerOpen ? x > lower : x >= lower) && (upperOpen ? x < upper : x <= upper)
    }

    var description: String { "\(lowerOpen ? "(" : "[")\(Self.show(lower)), \(Self.show(upper))\(upperOpen ? ")" : "]")" }

    static func show(_ x: Double) -> String {
        if x == x.rounded(), abs(x) < 1e15 { return String(Int64(x)) }
        return "\(x)"
    }

    /// (0, 1]: epsilons.
    static let epsilon = NumberRange(lower: 0, upper: 1, lowerOpen: true)
    /// (0, 1): betas.
    static let unitOpen = NumberRange(lower: 0, upper: 1, lowerOpen: true, upperOpen: true)
}

/// Typed reads of one config object. `null` counts as absent (the default applies), as in
/// diffusers; a present value of the wrong type or outside its range is a violation.
struct ConfigReader {
    let json: JSONValue

    func value(_ k: String) -> JSONValue? {
        guard let v = json[k], v != .null else { return nil }
        return v
    }

    static func shown(_ v: JSONValue) -> String {
        let s = v.serializedString
        return s.count > 40 ? String(s.prefix(40)) + "…" : s
    }

    /// An integer (integral numbers written as `1000.0` count) in `range`.
    static func integer(_ v: JSONValue, _ field: String, _ range: ClosedRange<Int>) throws(ConfigViolation) -> Int {
        let want = "an integer in \(range.lowerBound)…\(range.upperBound)"
        var n: Int?
        if let i = v.int64Value { n = Int(exactly: i) } else if let d = v.doubleValue, d.isFinite, d == d.rounded(), abs(d) < 9e15 { n = Int(d) }
        guard let n, range.contains(n) else { throw ConfigViolation(field: field, expected: want + " (found \(shown(v)))") }
        return n
    }

    func int(_ k: String, default d: Int? = nil, _ range: ClosedRange<Int>) throws(ConfigViolation) -> Int {
        guard let v = value(k) else {
            if let d { return d }
            throw ConfigViolation(field: k, expected: "an integer in \(range.lowerBound)…\(range.upperBound) (missing)")
        }
        return try Self.integer(v, k, range)
    }

    /// A list of `count` integers, each in `range` (`field[i]` named on failure).
    func ints(_ k: String, count: ClosedRange<Int>, _ range: ClosedRange<Int>) throws(ConfigViolation) -> [Int] {
        guard let v = value(k), let a = v.arrayValue else {
            throw ConfigViolation(field: k, expected: "a list of \(count.lowerBound)…\(count.upperBound) integers (missing or not a list)")
        }
        guard count.contains(a.count) else {
            throw ConfigViolation(field: k, expected: "a list of \(count.lowerBound)…\(count.upperBound) integers (found \(a.count))")
        }
        var out: [Int] = []
        for (i, x) in a.enumerated() { out.append(try Self.integer(x, "\(k)[\(i)]", range)) }
        return out
    }

    func number(_ k: String, default d: Double? = nil, _ range: NumberRange) throws(ConfigViolation) -> Double {
        guard let v = value(k) else {
            if let d { return d }
            throw ConfigViolation(field: k, expected: "a number in \(range.description) (missing)")
        }
        guard let x = v.doubleValue, range.contains(x) else {
            throw ConfigViolation(field: k, expected: "a number in \(range.description) (found \(Self.shown(v)))")
        }
        return x
    }

    func bool(_ k: String, default d: Bool) throws(ConfigViolation) -> Bool {
        guard let v = value(k) else { return d }
        guard let b = v.boolValue else { throw ConfigViolation(field: k, expected: "true or false (found \(Self.shown(v)))") }
        return b
    }

    func string(_ k: String, default d: String, allowed: [String]) throws(ConfigViolation) -> String {
        guard let v = value(k) else { return d }
        guard let s = v.stringValue, allowed.contains(s) else {
            throw ConfigViolation(field: k, expected: "one of \(allowed.joined(separator: ", ")) (found \(Self.shown(v)))")
        }
        return s
    }

    func strings(_ k: String, count: Int, allowed: [String]) throws(ConfigViolation) -> [String] {
        guard let v = value(k), let a = v.arrayValue else { throw ConfigViolation(field: k, expected: "a list of \(count) block types (missing or not a list)") }
        guard a.count == count else { throw ConfigViolation(field: k, expected: "a list of \(count) block types, one per block_out_channels entry (found \(a.count))") }
        var out: [String] = []
        for (i, x) in a.enumerated() {
            guard let s = x.stringValue, allowed.contains(s) else {
                throw ConfigViolation(field: "\(k)[\(i)]", expected: "one of \(allowed.joined(separator: ", ")) (found \(Self.shown(x)))")
            }
            out.append(s)
        }
        return out
    }
}

/// Reads component `component` of `base` with `body`, turning a violation into a typed error that
/// names the file and the field.
func readComponentConfig<T>(_ base: BaseModel, _ component: String,
                            _ body: (ConfigReader) throws(ConfigViolation) -> T) throws(TensorFileError) -> T {
    guard let c = base.config(component), c.objectValue != nil else {
        throw TensorFileError(file: base.file.path, .missingField("components.\(component).config"))
    }
    do {
        return try body(ConfigReader(json: c))
    } catch {
        throw TensorFileError(file: base.file.path, .wrongType(field: "components.\(component).config.\(error.field)", expected: error.expected))
    }
}

/// The limits of spec/base.md §2.1 shared by the components.
enum ConfigLimits {
    static let blocks = 1...8
    static let channels = 1...8192
    static let layersPerBlock = 1...64
    static let groups = 1...1024
    static let heads = 1...1024
    static let ioChannels = 1...64
    static let contextDim = 1...16384
    static let scalingFactor = NumberRange(lower: 1e-4, upper: 1e4)
    static let trainTimesteps = 1...100_000
}

/// The UNet's configuration (diffusers `UNet2DConditionModel`, SD 1.x/2.x subset), validated.
public struct UNetConfig: Sendable {
    public var channels: [Int]
    public var layersPerBlock: Int
    public var downAttention: [Bool], upAttention: [Bool]
    public var heads: [Int]
    public var groups: Int
    public var eps: Float
    public var linearProjection: Bool
    public var inChannels: Int, outChannels: Int, contextDim: Int
    public var flipSinToCos: Bool
    public var freqShift: Float

    public init(base: BaseModel) throws(TensorFileError) {
        self = try readComponentConfig(base, "unet") { (c) throws(ConfigViolation) -> UNetConfig in try UNetConfig(c) }
    }

    init(_ c: ConfigReader) throws(ConfigViolation) {
        let ch = try c.ints("block_out_channels", count: ConfigLimits.blocks, ConfigLimits.channels)
        channels = ch
        layersPerBlock = try c.int("layers_per_block", ConfigLimits.layersPerBlock)
        let down = try c.strings("down_block_types", count: ch.count, allowed: ["CrossAttnDownBlock2D", "DownBlock2D"])
        let up = try c.strings("up_block_types", count: ch.count, allowed: ["CrossAttnUpBlock2D", "UpBlock2D"])
        downAttention = down.map { $0.hasPrefix("CrossAttn") }
        upAttention = up.map { $0.hasPrefix("CrossAttn") }
        _ = try c.string("mid_block_type", default: "UNetMidBlock2DCrossAttn", allowed: ["UNetMidBlock2DCrossAttn"])
        // diffusers reads attention_head_dim as the number of heads (a legacy quirk) unless
        // num_attention_heads is given.
        let key = c.value("num_attention_heads") != nil ? "num_attention_heads" : "attention_head_dim"
        if let list = c.value(key)?.arrayValue {
            heads = try c.ints(key, count: ch.count...ch.count, ConfigLimits.heads)
            _ = list
        } else {
            let one = try c.int(key, ConfigLimits.heads)
            heads = ch.map { _ in one }
        }
        for (b, n) in ch.enumerated() where n % heads[b] != 0 {
            throw ConfigViolation(field: key, expected: "a number of heads dividing every block's channels (block \(b): \(n) channels, \(heads[b]) heads)")
        }
        let g = try c.int("norm_num_groups", default: 32, ConfigLimits.groups)
        if let bad = ch.first(where: { $0 % g != 0 }) {
            throw ConfigViolation(field: "norm_num_groups", expected: "a divisor of every block's channels (\(g) does not divide \(bad))")
        }
        groups = g
        eps = Float(try c.number("norm_eps", default: 1e-5, .epsilon))
        linearProjection = try c.bool("use_linear_projection", default: false)
        inChannels = try c.int("in_channels", default: 4, ConfigLimits.ioChannels)
        outChannels = try c.int("out_channels", default: 4, ConfigLimits.ioChannels)
        contextDim = try c.int("cross_attention_dim", default: 768, ConfigLimits.contextDim)
        flipSinToCos = try c.bool("flip_sin_to_cos", default: true)
        freqShift = Float(try c.number("freq_shift", default: 0, NumberRange(lower: 0, upper: 1)))
        // One transformer block per attention (SD 1.x/2.x); more would leave weights unused.
        if let t = c.value("transformer_layers_per_block") {
            if t.arrayValue != nil {
                _ = try c.ints("transformer_layers_per_block", count: ch.count...ch.count, 1...1)
            } else {
                _ = try c.int("transformer_layers_per_block", 1...1)
            }
        }
    }

    /// Latent side divisor of the down path: 2^(blocks − 1) (sizes need not be multiples of it:
    /// the up path resizes to the skip connections' sizes, as diffusers does).
    public var downsamplers: Int { channels.count - 1 }
}

/// The VAE's configuration (diffusers `AutoencoderKL`) as both halves read it, validated.
public struct VAEConfig: Sendable {
    public var channels: [Int]
    public var layersPerBlock: Int, groups: Int, latentChannels: Int, inChannels: Int, outChannels: Int
    public var scalingFactor: Float

    /// Pixels per latent along each side: `2^(len(block_out_channels) − 1)`, as diffusers'
    /// pipelines derive `vae_scale_factor` (8 for every SD 1.x/2.x VAE).
    public var scaleFactor: Int { 1 << (channels.count - 1) }

    public init(base: BaseModel) throws(TensorFileError) {
        self = try readComponentConfig(base, "vae") { (c) throws(ConfigViolation) -> VAEConfig in try VAEConfig(c) }
    }

    init(_ c: ConfigReader) throws(ConfigViolation) {
        let ch = try c.ints("block_out_channels", count: ConfigLimits.blocks, ConfigLimits.channels)
        channels = ch
        layersPerBlock = try c.int("layers_per_block", default: 2, ConfigLimits.layersPerBlock)
        let g = try c.int("norm_num_groups", default: 32, ConfigLimits.groups)
        if let bad = ch.first(where: { $0 % g != 0 }) {
            throw ConfigViolation(field: "norm_num_groups", expected: "a divisor of every block's channels (\(g) does not divide \(bad))")
        }
        groups = g
        latentChannels = try c.int("latent_channels", default: 4, ConfigLimits.ioChannels)
        inChannels = try c.int("in_channels", default: 3, ConfigLimits.ioChannels)
        outChannels = try c.int("out_channels", default: 3, ConfigLimits.ioChannels)
        scalingFactor = Float(try c.number("scaling_factor", default: 0.18215, ConfigLimits.scalingFactor))
        // SD 1.x/2.x VAEs have none; a shift the runtime would ignore must not pass silently.
        _ = try c.number("shift_factor", default: 0, NumberRange(lower: 0, upper: 0))
    }

    /// The f32 weights under `prefixes`, keyed without `vae.`.
    func weights(_ base: BaseModel, prefixes: [String]) throws(TensorFileError) -> [String: [Float]] {
        _ = Parallel.allocatorConfigured
        let loader = WeightLoader(base: base)
        var w: [String: [Float]] = [:]
        for t in base.file.tensors where prefixes.contains(where: { t.name.hasPrefix($0) }) {
            w[String(t.name.dropFirst("vae.".count))] = try loader.f32(t.name)
        }
        return w
    }
}

/// The text encoder's configuration (transformers `CLIPTextConfig`), validated.
public struct TextEncoderConfig: Sendable {
    public var hidden: Int, heads: Int, intermediate: Int, maxPositions: Int, vocab: Int, layers: Int
    public var activation: String
    public var eps: Float

    public static let activations = ["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"]

    public init(base: BaseModel) throws(TensorFileError) {
        self = try readComponentConfig(base, "text_encoder") { (c) throws(ConfigViolation) -> TextEncoderConfig in try TextEncoderConfig(c) }
    }

    init(_ c: ConfigReader) throws(ConfigViolation) {
        hidden = try c.int("hidden_size", 1...16384)
        heads = try c.int("num_attention_heads", ConfigLimits.heads)
        guard hidden % heads == 0 else {
            throw ConfigViolation(field: "num_attention_heads", expected: "a divisor of hidden_size \(hidden) (found \(heads))")
        }
        intermediate = try c.int("intermediate_size", 1...65536)
        maxPositions = try c.int("max_position_embeddings", 1...8192)
        vocab = try c.int("vocab_size", 1...1_000_000)
        layers = try c.int("num_hidden_layers", 1...256)
        activation = try c.string("hidden_act", default: "quick_gelu", allowed: Self.activations)
        eps = Float(try c.number("layer_norm_eps", default: 1e-5, .epsilon))
    }
}

extension SchedulerConfig {
    /// Every number a scheduler reads, within spec/base.md §2.1's ranges, whichever scheduler
    /// will use the config: called before any schedule is computed.
    func checkRanges() throws(ConfigViolation) {
        let c = ConfigReader(json: json)
        let train = try c.int("num_train_timesteps", default: 1000, ConfigLimits.trainTimesteps)
        if let betas = c.value("trained_betas") {
            guard let a = betas.arrayValue else { throw ConfigViolation(field: "trained_betas", expected: "a list of numbers or null") }
            guard a.count == train else {
                throw ConfigViolation(field: "trained_betas", expected: "one beta per training timestep: \(train) values (found \(a.count))")
            }
            for (i, b) in a.enumerated() {
                guard let x = b.doubleValue, NumberRange.unitOpen.contains(x) else {
                    throw ConfigViolation(field: "trained_betas[\(i)]", expected: "a number in \(NumberRange.unitOpen.description) (found \(ConfigReader.shown(b)))")
                }
            }
        }
        _ = try c.number("beta_start", default: 0.0001, .unitOpen)
        _ = try c.number("beta_end", default: 0.02, .unitOpen)
        _ = try c.int("steps_offset", default: 0, 0...(train - 1))
        _ = try c.number("clip_sample_range", default: 1, NumberRange(lower: 0, upper: 1e4, lowerOpen: true))
        _ = try c.int("solver_order", default: 2, 1...3)
        _ = try c.number("sigma_min", default: 1, NumberRange(lower: 0, upper: 1e4, lowerOpen: true))
        _ = try c.number("sigma_max", default: 1, NumberRange(lower: 0, upper: 1e4, lowerOpen: true))
        _ = try c.number("lambda_min_clipped", default: 0, NumberRange(lower: -1e4, upper: 1e4))
    }
}

/// Everything a generation reads from a base's configs, validated together (ranges, and the
/// components agreeing with each other), without touching a weight.
public struct PipelineConfigs: Sendable {
    public var unet: UNetConfig
    public var vae: VAEConfig
    public var text: TextEncoderConfig
    public var scheduler: SchedulerConfig

    /// Prompts are padded to this many tokens, as diffusers' pipeline does.
    public static let promptTokens = 77

    public init(base: BaseModel) throws(TensorFileError) {
        let file = base.file.path
        unet = try UNetConfig(base: base)
        vae = try VAEConfig(base: base)
        text = try TextEncoderConfig(base: base)
        guard let sc = base.config("scheduler") else { throw TensorFileError(file: file, .missingField("components.scheduler.config")) }
        guard let s = try? SchedulerConfig(json: sc) else {
            throw TensorFileError(file: file, .wrongType(field: "components.scheduler.config", expected: "a JSON object"))
        }
        do { try s.checkRanges() } catch {
            throw TensorFileError(file: file, .wrongType(field: "components.scheduler.config.\(error.field)", expected: error.expected))
        }
        scheduler = s
        func mismatch(_ field: String, _ expected: String) -> TensorFileError {
            TensorFileError(file: file, .wrongType(field: field, expected: expected))
        }
        guard unet.contextDim == text.hidden else {
            throw mismatch("components.unet.config.cross_attention_dim", "the text encoder's hidden_size \(text.hidden) (found \(unet.contextDim))")
        }
        guard text.maxPositions >= Self.promptTokens else {
            throw mismatch("components.text_encoder.config.max_position_embeddings", "at least the \(Self.promptTokens) prompt tokens (found \(text.maxPositions))")
        }
        guard unet.outChannels == vae.latentChannels else {
            throw mismatch("components.unet.config.out_channels", "the VAE's latent_channels \(vae.latentChannels) (found \(unet.outChannels))")
        }
        guard unet.inChannels == 4 || unet.inChannels == 9 else {
            throw mismatch("components.unet.config.in_channels", "4 (text-to-image) or 9 (inpainting) (found \(unet.inChannels))")
        }
        guard vae.latentChannels == 4 else {
            throw mismatch("components.vae.config.latent_channels", "4, as SD 1.x/2.x latents have (found \(vae.latentChannels))")
        }
        guard vae.outChannels == 3 else { throw mismatch("components.vae.config.out_channels", "3 (RGB) (found \(vae.outChannels))") }
    }
}
