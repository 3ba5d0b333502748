import Foundation
import Testing
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
            case "unet": direct = firstError { _ = try UNet(base: bad) }
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
