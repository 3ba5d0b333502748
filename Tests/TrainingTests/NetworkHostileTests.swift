import Checkpoint
import Compute
import Diffusion
import Foundation
import TensorFile
import Testing

/// Hostile architectures, weights, bases, inputs and terms for the training networks: each
/// refused with a typed error naming what is wrong; nothing traps.
@Suite(.serialized) struct NetworkHostileTests {
    struct ProviderError: Error, Equatable { let name: String }

    func error<E: Error>(_ type: E.Type, _ body: () throws -> Void) -> E? {
        do { try body() } catch let e as E { return e } catch { Issue.record("unexpected error \(error)") }
        return nil
    }

    static func sd1Architecture() -> UNetArchitecture {
        UNetArchitecture(blockChannels: [4, 6, 8, 8], layersPerBlock: 2, downAttention: [true, true, true, false],
                         upAttention: [false, true, true, true], heads: [2, 2, 2, 2], groups: 2, eps: 1e-5,
                         inChannels: 4, outChannels: 4, contextDim: 32, linearProjection: false)
    }

    @Test func invalidArchitecturesNameTheField() throws {
        let good = Self.sd1Architecture()
        try good.validate()
        let cases: [(String, (inout UNetArchitecture) -> Void)] = [
            ("blockChannels", { $0.blockChannels = [] }),
            ("blockChannels", { $0.blockChannels = Array(repeating: 8, count: 9) }),
            ("blockChannels[3]", { $0.blockChannels[3] = 0 }),
            ("blockChannels[2]", { $0.blockChannels[2] = 1 << 20 }),
            ("blockChannels[0]", { $0.blockChannels[0] = .max }),
            ("layersPerBlock", { $0.layersPerBlock = 0 }),
            ("downAttention", { $0.downAttention = [true] }),
            ("upAttention", { $0.upAttention = [] }),
            ("heads", { $0.heads = [2, 2] }),
            ("heads[1]", { $0.heads[1] = 4 }),
            ("heads[0]", { $0.heads[0] = 0 }),
            ("transformerDepth", { $0.transformerDepth = 0 }),
            ("groups", { $0.groups = 0 }),
            ("groups", { $0.groups = 3 }),
            ("eps", { $0.eps = .nan }),
            ("transformerNormEps", { $0.transformerNormEps = 0 }),
            ("layerNormEps", { $0.layerNormEps = -.infinity }),
            ("inChannels", { $0.inChannels = 0 }),
            ("outChannels", { $0.outChannels = 1 << 30 }),
            ("contextDim", { $0.contextDim = -3 }),
            ("feedForwardMultiplier", { $0.feedForwardMultiplier = 0 }),
            ("blockChannels[0]", { $0.blockChannels[0] = 5; $0.groups = 1; $0.heads[0] = 1 }),
            ("freqShift", { $0.freqShift = 2 }),
            ("freqShift", { $0.freqShift = .infinity }),
        ]
        for (field, edit) in cases {
            var a = good
            edit(&a)
            let e = error(ComputeError.self) { try a.validate() }
            #expect(e?.message.contains("UNet architecture: \(field) ") == true, "\(field): \(String(describing: e))")
            _ = a.timeEmbeddingChannels  // defined (never a trap) for any architecture
            // The network refuses it before asking for a single weight.
            var asked = 0
            #expect(throws: ComputeError.self) { _ = try UNetNetwork(architecture: a) { _ in asked += 1; return [] } }
            #expect(asked == 0)
        }
        let text = CLIPTextArchitecture(hidden: 32, heads: 4, intermediate: 37, maxPositions: 77, vocab: 614, layers: 2, activation: .quickGELU, eps: 1e-5)
        try text.validate()
        let textCases: [(String, (inout CLIPTextArchitecture) -> Void)] = [
            ("hidden", { $0.hidden = 0 }), ("heads", { $0.heads = 5 }), ("heads", { $0.heads = 0 }),
            ("intermediate", { $0.intermediate = 1 << 20 }), ("maxPositions", { $0.maxPositions = 0 }),
            ("vocab", { $0.vocab = 1 << 40 }), ("layers", { $0.layers = 0 }), ("eps", { $0.eps = .nan }),
        ]
        for (field, edit) in textCases {
            var a = text
            edit(&a)
            let e = error(ComputeError.self) { try a.validate() }
            #expect(e?.message.contains("CLIP text architecture: \(field) ") == true, "\(field): \(String(describing: e))")
            #expect(throws: ComputeError.self) { _ = try CLIPTextNetwork(architecture: a) { _ in [] } }
        }
    }

    /// Weights from a provider: a missing one is the provider's error; a mis-sized one names it.
    @Test func missingAndMisSizedWeights() throws {
        let (base, dir) = try NetworkFixtures.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loader = WeightLoader(base: base)
        let arch = Self.sd1Architecture()
        func provider(prefix: String, missing: String? = nil, short: String? = nil) -> (String) throws -> [Float] {
            { name in
                if name == missing { throw ProviderError(name: name) }
                var v = try loader.f32(prefix + name)
                if name == short { v.removeLast() }
                return v
            }
        }
        _ = try UNetNetwork(architecture: arch, weights: provider(prefix: "unet."))
        for name in ["conv_in.weight", "up_blocks.1.resnets.2.conv_shortcut.bias", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                     "time_embedding.linear_2.bias", "conv_out.weight"] {
            #expect(throws: ProviderError(name: name)) { _ = try UNetNetwork(architecture: arch, weights: provider(prefix: "unet.", missing: name)) }
            let e = error(ComputeError.self) { _ = try UNetNetwork(architecture: arch, weights: provider(prefix: "unet.", short: name)) }
            #expect(e?.message.hasPrefix("UNet weight \(name): ") == true, "\(String(describing: e))")
        }
        let text = try #require(CLIPTextArchitecture(config: try TextEncoderConfig(base: base)))
        _ = try CLIPTextNetwork(architecture: text, weights: provider(prefix: "text_encoder."))
        for name in ["text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.1.mlp.fc2.bias", "text_model.final_layer_norm.weight"] {
            #expect(throws: ProviderError(name: name)) { _ = try CLIPTextNetwork(architecture: text, weights: provider(prefix: "text_encoder.", missing: name)) }
            let e = error(ComputeError.self) { _ = try CLIPTextNetwork(architecture: text, weights: provider(prefix: "text_encoder.", short: name)) }
            #expect(e?.message.hasPrefix("text encoder weight \(name): ") == true, "\(String(describing: e))")
        }
    }

    /// Writes `base` to `path` with config fields replaced, tensors dropped, and tensors with one
    /// row fewer.
    static func rewrite(_ base: BaseModel, to path: String, configs: [(String, String, JSONValue)] = [],
                        drop: Set<String> = [], shorten: Set<String> = []) throws {
        var md = base.metadata
        for (component, key, value) in configs {
            let comps = try #require(md["components"]), comp = try #require(comps[component]), cfg = try #require(comp["config"])
            md = md.setting("components", comps.setting(component, comp.setting("config", cfg.setting(key, value))))
        }
        var sources: [TensorSource] = []
        for t in base.file.tensors where !drop.contains(t.name) {
            let bytes = try base.file.tensorBytes(t.name)
            if shorten.contains(t.name), let rows = t.shape.first, rows > 1 {
                var shape = t.shape
                shape[0] = rows - 1
                let all = Array(bytes.bytes)
                sources.append(.array(TensorInfo(name: t.name, dtype: t.dtype, shape: shape), Array(all[0..<(all.count / rows * (rows - 1))])))
            } else {
                sources.append(.bytes(t, bytes))
            }
        }
        try LidbWriter.write(to: path, kind: "base", metadata: md, tensors: sources)
    }

    /// From a base: the same refusals as the inference models (the file and the field or tensor named).
    @Test func hostileBasesAreRefusedLikeTheInferenceModels() throws {
        let (base, dir) = try NetworkFixtures.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/bad.lidb"
        // A config outside its range.
        try Self.rewrite(base, to: path, configs: [("unet", "attention_head_dim", .int(0))])
        var bad = try BaseModel(path: path)
        let e1 = error(TensorFileError.self) { _ = try UNetNetwork(base: bad) }
        let ref1 = error(TensorFileError.self) { _ = try StableDiffusion(base: bad) }
        #expect(e1 != nil && e1 == ref1, "\(String(describing: e1))")
        #expect(e1?.file == path && e1?.description.contains("components.unet.config.attention_head_dim") == true)
        try Self.rewrite(base, to: path, configs: [("text_encoder", "hidden_act", .string("relu"))])
        bad = try BaseModel(path: path)
        let e2 = error(TensorFileError.self) { _ = try CLIPTextNetwork(base: bad) }
        #expect(e2 != nil && e2 == error(TensorFileError.self) { _ = try CLIPTextEncoder(base: bad) }, "\(String(describing: e2))")
        // A missing weight, and one of another size.
        for name in ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", "unet.up_blocks.2.resnets.0.conv_shortcut.weight",
                     "text_encoder.text_model.final_layer_norm.bias", "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight"] {
            let isUNet = name.hasPrefix("unet.")
            func make(_ b: BaseModel) throws { if isUNet { _ = try UNetNetwork(base: b) } else { _ = try CLIPTextNetwork(base: b) } }
            try Self.rewrite(base, to: path, drop: [name])
            bad = try BaseModel(path: path)
            let missing = error(TensorFileError.self) { try make(bad) }
            #expect(missing == TensorFileError(file: path, tensor: name, .tensorNotFound), "\(String(describing: missing))")
            try Self.rewrite(base, to: path, shorten: [name])
            bad = try BaseModel(path: path)
            let short = error(TensorFileError.self) { try make(bad) }
            #expect(short?.file == path && short?.tensor == name, "\(String(describing: short))")
            if case .invalidShape = short?.problem {} else { Issue.record("\(name): \(String(describing: short))") }
        }
    }

    /// Inputs of the wrong shape or value, and terms that do not fit.
    @Test func hostileInputsAndTerms() throws {
        let (base, dir) = try NetworkFixtures.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var unet = try UNetNetwork(base: base), text = try CLIPTextNetwork(base: base)
        let x = try Compute.FeatureMap(c: 4, h: 8, w: 8, data: testValues(256, seed: 1))
        let ctx = try Matrix(rows: 77, cols: 32, data: testValues(77 * 32, seed: 2))
        func expectMessage(_ fragment: String, _ body: () throws -> Void) {
            let e = error(ComputeError.self, body)
            #expect(e?.message.contains(fragment) == true, "\(fragment): \(String(describing: e))")
        }
        expectMessage("UNet context: 24 features, expected 32") {
            _ = try unet.forward(x, timestep: 10, context: try Matrix(rows: 77, cols: 24, data: testValues(77 * 24, seed: 3)))
        }
        expectMessage("UNet sample: 3 channels, expected 4") { _ = try unet.forward(try Compute.FeatureMap(zerosC: 3, h: 8, w: 8), timestep: 10, context: ctx) }
        expectMessage("UNet sample: 0 × 5 has no positions") { _ = try unet.forward(try Compute.FeatureMap(zerosC: 4, h: 0, w: 5), timestep: 10, context: ctx) }
        expectMessage("UNet context: no text tokens") { _ = try unet.forward(x, timestep: 10, context: try Matrix(zeros: 0, cols: 32)) }
        expectMessage("UNet timestep nan is not finite") { _ = try unet.forward(x, timestep: .nan, context: ctx) }
        expectMessage("UNet output gradient: 8 × 4 for a sample of 8 × 8") {
            _ = try unet.backward(gradOutput: try Compute.FeatureMap(zerosC: 4, h: 8, w: 4), sample: x, timestep: 10, context: ctx, contextGradient: true)
        }
        expectMessage("UNet output gradient: 5 channels, expected 4") {
            _ = try unet.backward(gradOutput: try Compute.FeatureMap(zerosC: 5, h: 8, w: 8), sample: x, timestep: 10, context: ctx, contextGradient: true)
        }
        var broken = x
        broken.data.removeLast()
        expectMessage("UNet sample: 4 × 8 × 8 needs 256 values, got 255") { _ = try unet.forward(broken, timestep: 10, context: ctx) }
        let ids = Array(repeating: 5, count: 77)
        expectMessage("text encoder: 0 tokens, expected 1…77") { _ = try text.forward(ids: []) }
        expectMessage("text encoder: 78 tokens, expected 1…77") { _ = try text.forward(ids: ids + [5]) }
        expectMessage("token id 614 at position 3 is outside the vocabulary (614)") { _ = try text.forward(ids: [1, 2, 3, 614]) }
        expectMessage("token id -1 at position 0") { _ = try text.forward(ids: [-1]) }
        expectMessage("text encoder output gradient: 76 rows for 77 tokens") { try text.backward(gradOutput: try Matrix(zeros: 76, cols: 32), ids: ids) }
        expectMessage("text encoder output gradient: 24 features, expected 32") { try text.backward(gradOutput: try Matrix(zeros: 77, cols: 24), ids: ids) }
        // Terms: an unknown layer, a term of another shape.
        let lora = try LowRankTerm.lora(down: testValues(8, seed: 4), up: testValues(8, seed: 5), out: 4, in: 4, rank: 2, alpha: 2)
        expectMessage("UNet: no linear layer named 'down_blocks.0.attentions.0.transformer_blocks.0.attn3.to_q'") {
            try unet.attach(lora, to: "down_blocks.0.attentions.0.transformer_blocks.0.attn3.to_q")
        }
        expectMessage("UNet: no linear layer named 'unet.conv_in'") { try unet.attach(lora, to: "unet.conv_in") }
        expectMessage("UNet layer mid_block.attentions.0.transformer_blocks.0.attn1.to_q: linear [8 × 8]: a delta term of shape [4 × 4]") {
            try unet.attach(lora, to: "mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
        }
        expectMessage("text encoder: no linear layer named 'text_model.encoder.layers.2.mlp.fc1'") { try text.attach(lora, to: "text_model.encoder.layers.2.mlp.fc1") }
        expectMessage("text encoder layer text_model.encoder.layers.0.mlp.fc1: linear [37 × 32]: a delta term of shape [4 × 4]") {
            try text.attach(lora, to: "text_model.encoder.layers.0.mlp.fc1")
        }
        // Nothing was attached by the refused calls; a fitting term attaches and detaches.
        #expect(unet.linearNames.allSatisfy { unet.linear(named: $0)?.terms.isEmpty == true })
        try unet.attach(lora, to: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
        #expect(unet.linear(named: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")?.terms.count == 1)
        unet.detachAllTerms()
        #expect(unet.linearNames.allSatisfy { unet.linear(named: $0)?.terms.isEmpty == true })
    }
}
