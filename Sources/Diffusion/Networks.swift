import Checkpoint
import Compute
import TensorFile

/// The training networks (`Compute.UNetNetwork`, `Compute.CLIPTextNetwork`) built from a base:
/// the same validated configs (`UNetConfig`, `TextEncoderConfig`) and the same weight checks as
/// the inference models, so a hostile config or a missing or mis-sized weight is refused with
/// the same `TensorFileError` naming the base file and the field or tensor.

extension UNetArchitecture {
    /// The architecture a validated `UNetConfig` describes (GEGLU inner size
    /// `feedForwardMultiplier · channels`).
    public init(config c: UNetConfig, feedForwardMultiplier: Int = 4) {
        self.init(blockChannels: c.channels, layersPerBlock: c.layersPerBlock, downAttention: c.downAttention, upAttention: c.upAttention,
                  heads: c.heads, groups: c.groups, eps: c.eps, inChannels: c.inChannels, outChannels: c.outChannels,
                  contextDim: c.contextDim, feedForwardMultiplier: feedForwardMultiplier, flipSinToCos: c.flipSinToCos,
                  freqShift: c.freqShift, linearProjection: c.linearProjection)
    }
}

extension CLIPTextArchitecture {
    /// The architecture a validated `TextEncoderConfig` describes; nil for an activation Compute
    /// does not implement (none of `TextEncoderConfig.activations`).
    public init?(config c: TextEncoderConfig) {
        guard let act = Activation(configName: c.activation) else { return nil }
        self.init(hidden: c.hidden, heads: c.heads, intermediate: c.intermediate, maxPositions: c.maxPositions, vocab: c.vocab,
                  layers: c.layers, activation: act, eps: c.eps)
    }
}

/// Builds a network from weights already checked against its expectations, turning its errors
/// into `TensorFileError`s about `file`.
private func build<N>(file: String, component: String, prefix: String, _ make: () throws -> N) throws(TensorFileError) -> N {
    do {
        return try make()
    } catch let e as TensorFileError {
        throw e
    } catch let e as ComputeError {
        throw TensorFileError(file: file, .invalidArgument("\(component): \(e.message)"))
    } catch {
        throw TensorFileError(file: file, .invalidArgument("\(component): \(error)"))
    }
}

extension UNetNetwork {
    /// The base's UNet. With `.f32` every weight is converted to binary32 once; with
    /// `.f16PerLayer` an F16 base's `Linear` and `Conv2d` weights of at least `halfMinimum`
    /// values stay F16 in memory and are converted each time their layer runs (the results are
    /// the same: the conversion is exact); with `.bf16PerLayer` those weights of any base are
    /// rounded to bfloat16 once and held so. A missing or mis-sized weight, or a config outside
    /// spec/base.md §2.1, is a `TensorFileError` naming the base file and the tensor or field.
    /// The architecture of the base's UNet, from its validated config and the shape of one weight
    /// (the GEGLU inner size), without loading a weight.
    public static func architecture(base: BaseModel) throws(TensorFileError) -> UNetArchitecture {
        let cfg = try UNetConfig(base: base)
        // The GEGLU inner size from the middle block's feed-forward output weight `[c, inner]`
        // (4 · c in SD); a weight that says otherwise is named by the size check at load.
        var multiplier = 4
        let top = cfg.channels.last ?? 1
        if let s = WeightLoader(base: base).shape("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"), s.count == 2,
           s[0] == top, top > 0, s[1] % top == 0, (1...UNetArchitecture.maxMultiplier).contains(s[1] / top) {
            multiplier = s[1] / top
        }
        return UNetArchitecture(config: cfg, feedForwardMultiplier: multiplier)
    }

    public init(base: BaseModel, residency: WeightResidency = .f32, halfMinimum: Int = 4096) throws(TensorFileError) {
        let file = base.file.path
        _ = Parallel.allocatorConfigured
        let loader = WeightLoader(base: base)
        let arch = try Self.architecture(base: base)
        let expected: [(name: String, count: Int)]
        do { expected = try arch.expectedWeights() } catch {
            throw TensorFileError(file: file, .invalidArgument("UNet: \(error.message)"))
        }
        // Large F16 weights stay F16 (copied out of the mapped file, whose pages are released);
        // norms, biases and anything not F16 are converted once.
        let half: [String: WeightValues]
        switch residency {
        case .f32: half = [:]
        case .f16PerLayer: half = try loader.halfWeights(prefix: "unet.", minimumCount: halfMinimum).mapValues { .f16($0) }
        case .bf16PerLayer: half = try loader.bfloat16Weights(prefix: "unet.", minimumCount: halfMinimum)
        }
        let w = try loader.all(prefix: "unet.", excluding: Set(half.keys))
        try checkWeights({ w[$0]?.count ?? half[$0]?.count }, expected: expected.map { ($0.name, $0.count) }, prefix: "unet.", file: file)
        self = try build(file: file, component: "UNet", prefix: "unet.") { () throws -> UNetNetwork in
            try UNetNetwork(architecture: arch, values: { name in
                if let h = half[name] { return h }
                guard let v = w[name] else { throw TensorFileError(file: file, tensor: "unet." + name, .tensorNotFound) }
                return .f32(v)
            })
        }
    }
}

extension CLIPTextNetwork {
    /// The base's text encoder as a training network (weights converted to f32 once).
    public init(base: BaseModel) throws(TensorFileError) {
        let file = base.file.path
        let cfg = try TextEncoderConfig(base: base)
        guard let arch = CLIPTextArchitecture(config: cfg) else {
            throw TensorFileError(file: file, .wrongType(field: "components.text_encoder.config.hidden_act",
                                                         expected: "one of \(TextEncoderConfig.activations.joined(separator: ", "))"))
        }
        let expected: [(name: String, count: Int)]
        do { expected = try arch.expectedWeights() } catch {
            throw TensorFileError(file: file, .invalidArgument("text encoder: \(error.message)"))
        }
        _ = Parallel.allocatorConfigured
        let w = try WeightLoader(base: base).all(prefix: "text_encoder.")
        try checkWeights(w, expected: expected.map { ($0.name, $0.count) }, prefix: "text_encoder.", file: file)
        self = try build(file: file, component: "text encoder", prefix: "text_encoder.") { () throws -> CLIPTextNetwork in
            try CLIPTextNetwork(architecture: arch, weights: { name in
                guard let v = w[name] else { throw TensorFileError(file: file, tensor: "text_encoder." + name, .tensorNotFound) }
                return v
            })
        }
    }
}
