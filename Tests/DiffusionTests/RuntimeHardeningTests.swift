import Foundation
import Testing
import Compute
@testable import Checkpoint
@testable import Diffusion
@testable import TensorFile

/// Hostile bases and requests for the runtime: every refusal is a typed error naming the field or
/// option, raised before the value sizes an allocation; nothing traps.
enum HostileBase {
    /// Writes `base` to `path` with config fields replaced (`(component, key, value)`) and, for
    /// each `(tensor, edit)`, the tensor's f32 values edited.
    static func write(_ base: BaseModel, to path: String, configs: [(String, String, JSONValue)] = [],
                      tensors: [(String, (inout [Float]) -> Void)] = []) throws {
        var md = base.metadata
        for (component, key, value) in configs {
            let comps = md["components"]!
            let comp = comps[component]!
            md = md.setting("components", comps.setting(component, comp.setting("config", comp["config"]!.setting(key, value))))
        }
        let edits = Dictionary(tensors, uniquingKeysWith: { a, _ in a })
        let sources = try base.file.tensors.map { (t) throws -> TensorSource in
            guard let edit = edits[t.name] else { return TensorSource.bytes(t, try base.file.tensorBytes(t.name)) }
            precondition(t.dtype == .F32, "test fixture tensors are F32")
            var values = try base.file.tensorBytes(t.name).bytes.withMemoryRebound(to: Float.self) { Array($0) }
            edit(&values)
            return TensorSource.array(t, values.withUnsafeBytes { Array($0) })
        }
        try LidbWriter.write(to: path, kind: "base", metadata: md, tensors: sources)
    }

    static func ints(_ v: [Int]) -> JSONValue { .array(v.map { .int($0) }) }
}

@Suite(.serialized) struct BaseConfigRangeTests {
    /// Numbers outside spec/base.md §2.1's ranges, each refused naming its component and field.
    static let cases: [(String, String, JSONValue, String)] = [
        ("unet", "block_out_channels", HostileBase.ints([4, 6, 8, 100_000]), "block_out_channels[3]"),
        ("unet", "block_out_channels", HostileBase.ints(Array(repeating: 8, count: 9)), "block_out_channels"),
        ("unet", "norm_eps", .int(-1), "norm_eps"),
        ("unet", "norm_eps", .int(2), "norm_eps"),
        ("unet", "attention_head_dim", .int(0), "attention_head_dim"),
        ("unet", "freq_shift", .int(4), "freq_shift"),
        ("unet", "transformer_layers_per_block", .int(2), "transformer_layers_per_block"),
        ("unet", "down_block_types", .array(["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D"].map { .string($0) }),
         "down_block_types[3]"),
        ("unet", "cross_attention_dim", .int(48), "cross_attention_dim"),
        ("unet", "out_channels", .int(3), "out_channels"),
        ("vae", "scaling_factor", .int(0), "scaling_factor"),
        ("vae", "scaling_factor", .number("1e300"), "scaling_factor"),
        ("vae", "block_out_channels", HostileBase.ints([2, 4, 6, 1_000_000]), "block_out_channels[3]"),
        ("vae", "norm_num_groups", .int(4), "norm_num_groups"),
        ("vae", "shift_factor", .double(0.5), "shift_factor"),
        ("vae", "out_channels", .int(1), "out_channels"),
        ("text_encoder", "layer_norm_eps", .double(-1e-5), "layer_norm_eps"),
        ("text_encoder", "vocab_size", .int(1_000_000_000_000), "vocab_size"),
        ("text_encoder", "hidden_act", .string("relu"), "hidden_act"),
        ("text_encoder", "max_position_embeddings", .int(16), "max_position_embeddings"),
        ("scheduler", "num_train_timesteps", .int(1_000_000_000_000), "num_train_timesteps"),
        ("scheduler", "num_train_timesteps", .number("1e12"), "num_train_timesteps"),
        ("scheduler", "trained_betas", .array((0..<10).map { _ in .double(0.01) }), "trained_betas"),
        ("scheduler", "trained_betas", .array((0..<1000).map { .double($0 == 3 ? 1.5 : 0.01) }), "trained_betas[3]"),
        ("scheduler", "beta_end", .int(2), "beta_end"),
        ("scheduler", "steps_offset", .int(5000), "steps_offset"),
    ]

    @Test func configNumbersOutsideTheirRangesAreNamed() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (component, key, value, field) in Self.cases {
            let path = dir + "/bad.lidb"
            try HostileBase.write(base, to: path, configs: [(component, key, value)])
            let bad = try BaseModel(path: path)
            let e = firstError { _ = try PipelineConfigs(base: bad) }
            #expect(e?.file == path, "\(component).\(key)")
            #expect(e?.problem.isWrongType(field: "components.\(component).config.\(field)") == true, "\(component).\(key): \(String(describing: e))")
            // The model that reads the component refuses it too, before loading weights.
            let direct: TensorFileError?
            switch component {
            case "unet": direct = firstError { _ = try UNetNetwork(base: bad) }
            case "vae": direct = firstError { _ = try VAEDecoder(base: bad) }
            case "text_encoder": direct = firstError { _ = try CLIPTextEncoder(base: bad) }
            default: direct = firstError { _ = try StableDiffusion(base: bad) }
            }
            #expect(direct != nil, "\(component).\(key)")
        }
    }

    /// Structural counts bound the name maps' loops: refused when the base is opened.
    @Test func structuralCountsAreCheckedOnOpen() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (component, key, value) in [("unet", "layers_per_block", JSONValue.int(1_000_000_000_000)), ("vae", "layers_per_block", .int(100)),
                                        ("text_encoder", "num_hidden_layers", .int(100_000)), ("unet", "in_channels", .int(5))] {
            try HostileBase.write(base, to: dir + "/bad.lidb", configs: [(component, key, value)])
            let e = firstError { _ = try BaseModel(path: dir + "/bad.lidb") }
            #expect(e?.problem.isWrongType(field: "components.\(component).config.\(key)") == true, "\(key): \(String(describing: e))")
        }
    }

    /// Every scheduler refuses a schedule whose trained betas do not match its length (this was a
    /// precondition failure in DDIM) or one of a trillion timesteps (terabytes of betas).
    @Test func schedulersRefuseImpossibleSchedules() throws {
        let mismatched = try SchedulerConfig(json: .object([("num_train_timesteps", .int(1000)), ("trained_betas", .array((0..<10).map { _ in .double(0.01) }))]))
        let huge = try SchedulerConfig(json: .object([("num_train_timesteps", .int(1_000_000_000_000))]))
        for kind in SchedulerKind.allCases {
            for (config, word) in [(mismatched, "trained_betas"), (huge, "num_train_timesteps")] {
                let c = kind == .pndm ? config.setting("skip_prk_steps", .bool(true)) : config
                do {
                    _ = try makeScheduler(kind, config: c)
                    Issue.record("\(kind) accepted \(word)")
                } catch let e as SchedulerError {
                    #expect(e.description.contains(word), "\(kind): \(e)")
                }
            }
        }
    }
}

extension TensorFileError.Problem {
    func isWrongType(field: String) -> Bool {
        if case let .wrongType(f, _) = self { return f == field }
        return false
    }
}

@Suite(.serialized) struct NonFiniteGenerationTests {
    static func options(cfg: Float = 7.5) -> GenerateOptions {
        var o = GenerateOptions(prompt: "a photo of a cat")
        (o.steps, o.width, o.height, o.cfg) = (2, 64, 64, cfg)
        return o
    }

    @Test func optionsOutOfRangeNameTheOption() {
        let bad: [(String, (inout GenerateOptions) -> Void)] = [
            ("--cfg", { $0.cfg = .infinity }), ("--cfg", { $0.cfg = .nan }), ("--cfg", { $0.cfg = -1 }), ("--cfg", { $0.cfg = 1e30 }),
            ("--steps", { $0.steps = 0 }), ("--batch", { $0.batch = 0 }), ("--width", { $0.width = 0 }),
            ("--width", { $0.width = 100_000 }), ("--height", { $0.height = -8 }),
        ]
        for (option, edit) in bad {
            var o = Self.options()
            edit(&o)
            let e = firstError { try o.validate() }
            #expect(e?.file == option, "\(option): \(String(describing: e))")
        }
        #expect(firstError { try Self.options().validate() } == nil)
    }

    /// NaN weights in the UNet (as a NaN subject factor merged into them would give): the loop
    /// stops after the first step with an error naming it.
    @Test func nonFiniteLatentsStopAtTheStep() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try HostileBase.write(base, to: dir + "/nan.lidb", tensors: [("unet.conv_out.bias", { $0[0] = .nan })])
        let sd = try StableDiffusion(base: BaseModel(path: dir + "/nan.lidb"))
        let e = firstError { _ = try sd.generate(Self.options()) }
        #expect(e.map { "\($0)".contains("sampler step 1 of 2") } == true, "\(String(describing: e))")
        // A term with NaN values, attached live on a clean base (LowRankTerm refuses NaN factors,
        // and a merge refuses non-finite results; a term of another kind may still produce them).
        let clean = try StableDiffusion(base: base)
        let name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        let c = try #require(base.file.entry("unet." + name + ".weight")).info.shape
        #expect(throws: ComputeError.self) { try clean.unet.addWeightDeltas([NaNTerm(out: c[0], in: c[1])], to: name) }
        try clean.unet.attach(NaNTerm(out: c[0], in: c[1]), to: name)
        do {
            let l = try clean.denoise(Self.options(cfg: 1))
            Issue.record("no error; \(l.prefix(4))")
        } catch {
            #expect("\(error)".contains("sampler step 1 of 2"), "\(error)")
        }
    }

    @Test func nonFinitePixelsAreRefused() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try HostileBase.write(base, to: dir + "/nan-vae.lidb", tensors: [("vae.decoder.conv_out.bias", { $0[1] = .infinity })])
        let sd = try StableDiffusion(base: BaseModel(path: dir + "/nan-vae.lidb"))
        let e = firstError { _ = try sd.generate(Self.options()) }
        #expect(e.map { "\($0)".contains("VAE decoder produced non-finite pixels") } == true, "\(String(describing: e))")
    }

    /// A NaN score makes its attention row NaN, as in PyTorch (the vectorised exp used to clamp
    /// NaN to a finite value, hiding it from the per-step check).
    @Test func attentionPropagatesNaN() throws {
        var q = [Float](repeating: 0.5, count: 16 * 4)
        q[5 * 4] = .nan
        let k = [Float](repeating: 0.25, count: 16 * 4), v = (0..<(16 * 4)).map { Float($0) / 64 }
        let out = try ScaledDotProductAttention.forward(q: try Matrix(rows: 16, cols: 4, data: q), k: try Matrix(rows: 16, cols: 4, data: k),
                                                        v: try Matrix(rows: 16, cols: 4, data: v), heads: 1).data
        #expect(out[(5 * 4)..<(6 * 4)].allSatisfy { $0.isNaN })
        #expect(out[0..<(5 * 4)].allSatisfy { $0.isFinite } && out[(6 * 4)...].allSatisfy { $0.isFinite })
        var x: [Float] = [1, .nan, -2, 3, .nan, 0, 4, 5, 6]
        Activation.silu.apply(&x)
        #expect(x[1].isNaN && x[4].isNaN && x[0].isFinite)
    }

    @Test func pngConversionNeverTraps() throws {
        let map = try FeatureMap(c: 3, h: 1, w: 2, data: [.nan, .infinity, -.infinity, .nan, 1, -1])
        #expect(PNGWriter.rgb8(map) == [0, 0, 255, 255, 0, 0])
        #expect(PNGWriter.rgb8(try FeatureMap(c: 1, h: 1, w: 1, data: [1])) == [255, 0, 0])
        #expect(throws: TensorFileError.self) { _ = try PNGWriter.encode(rgb: [], width: Int.max / 2, height: 4) }
    }
}

@Suite(.serialized) struct MemoryLimitTests {
    @Test func sizesParse() {
        #expect(ByteCount(parsing: "16G")?.value == 16 << 30 && ByteCount(parsing: "512MiB")?.value == 512 << 20)
        #expect(ByteCount(parsing: "1.5k")?.value == 1536 && ByteCount(parsing: "2000")?.value == 2000)
        for bad in ["", "-1G", "nan", "inf", "1e30T", "12X", "0"] { #expect(ByteCount(parsing: bad) == nil, "\(bad)") }
        #expect(ByteCount(UInt64.max).description == "more than 16 EiB")
    }

    @Test func estimatesRefuseOversizedRequests() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let configs = try PipelineConfigs(base: base)
        func estimate(_ w: Int, _ h: Int, _ b: Int) -> MemoryEstimate {
            MemoryEstimate.generation(base: base, configs: configs, width: w, height: h, batch: b, guidance: true)
        }
        let small = estimate(64, 64, 1), wide = estimate(16384, 16384, 1), many = estimate(64, 64, Int.max)
        #expect(small.total < wide.total && small.total < many.total)
        #expect(many.total == ByteCount(UInt64.max))
        #expect(firstError { try small.check(limit: ByteCount(1 << 30), what: "x", file: "b") } == nil)
        let e = firstError { try wide.check(limit: ByteCount(1 << 30), what: "generating 1 × 16384×16384", file: "b") }
        #expect(e.map { "\($0)".contains("would need about") && "\($0)".contains("the limit is 1.0 GiB") } == true, "\(String(describing: e))")
        #expect(firstError { try many.check(limit: ByteCount(UInt64.max - 1), what: "x", file: "b") }.map { "\($0)".contains("more than 16 EiB") } == true)
        // The pipeline checks before it computes anything.
        let sd = try StableDiffusion(base: base)
        sd.memoryLimit = ByteCount(1 << 20)
        #expect(firstError { _ = try sd.denoise(NonFiniteGenerationTests.options()) }.map { "\($0)".contains("would need about") } == true)
    }
}

/// A dense delta term whose ΔW is NaN everywhere.
final class NaNTerm: DeltaTerm, @unchecked Sendable {
    let outFeatures: Int, inFeatures: Int
    var trainable: Bool { false }
    init(out: Int, in inDim: Int) { outFeatures = out; inFeatures = inDim }
    func forward(_ x: Matrix, into y: inout Matrix) throws(ComputeError) { for i in y.data.indices { y.data[i] = .nan } }
    func addInputGradient(gradOutput: Matrix, into gradInput: inout Matrix) throws(ComputeError) {}
    func accumulateGradients(gradOutput: Matrix, input x: Matrix) throws(ComputeError) {}
    func weightDelta() -> [Float] { [Float](repeating: .nan, count: outFeatures * inFeatures) }
}
