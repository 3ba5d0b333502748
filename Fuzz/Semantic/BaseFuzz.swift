import Checkpoint
import Compute
import Diffusion
import Foundation
import TensorFile

/// (b) Base configs: the tiny base's tensors with its component configs (UNet, VAE, text
/// encoder, scheduler, tokenizer config) rewritten with hostile numbers, arrays and types; opened
/// for running, its schedulers built and stepped, and — when everything is accepted — one short
/// generation at a tiny size whose image must be finite before it becomes a PNG.
enum BaseFuzz {
    static let unetKeys = ["block_out_channels", "layers_per_block", "attention_head_dim", "num_attention_heads", "cross_attention_dim",
                           "norm_eps", "norm_num_groups", "in_channels", "out_channels", "sample_size", "down_block_types", "up_block_types",
                           "use_linear_projection", "flip_sin_to_cos", "freq_shift", "transformer_layers_per_block", "mid_block_scale_factor",
                           "conv_in_kernel", "conv_out_kernel", "time_embedding_type", "upcast_attention", "only_cross_attention", "act_fn"]
    static let vaeKeys = ["block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels", "norm_num_groups",
                          "scaling_factor", "shift_factor", "sample_size", "down_block_types", "up_block_types", "force_upcast",
                          "use_post_quant_conv", "use_quant_conv", "mid_block_add_attention", "latents_mean", "latents_std"]
    static let textKeys = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "max_position_embeddings",
                           "vocab_size", "hidden_act", "layer_norm_eps", "projection_dim", "bos_token_id", "eos_token_id", "pad_token_id"]
    static let schedulerKeys = ["num_train_timesteps", "trained_betas", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                                "steps_offset", "timestep_spacing", "clip_sample", "clip_sample_range", "set_alpha_to_one", "skip_prk_steps",
                                "solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas",
                                "final_sigmas_type", "lambda_min_clipped", "sigma_min", "sigma_max", "interpolation_type", "timestep_type",
                                "rescale_betas_zero_snr", "thresholding", "_class_name", "variance_type", "sample_max_value"]
    static let tokenizerKeys = ["model_max_length", "bos_token", "eos_token", "pad_token", "unk_token", "do_lower_case", "added_tokens_decoder"]
    static let topKeys = ["prediction_type", "architecture", "lidb_base", "variant"]

    static func run(_ c: inout Choices, _ fx: FuzzFixtures) {
        let path = fx.path("b.lidb")
        // How far to go: 0 the scheduler config alone (no file: cheap), 1 the base opened and its
        // schedulers built, 2 also the models loaded, 3 also one short generation.
        let depth = c.int(0...3)
        guard let (metadata, tensors) = edited(&c, fx) else { return }
        let steps = c.pick([1, 2, 3, 10, 25, 50, 1000])
        if depth == 0 {
            schedulers(metadata["components"]?["scheduler"]?["config"], &c, steps: steps)
            return
        }
        do { try LidbWriter.write(to: path, kind: "base", metadata: metadata, tensors: tensors) } catch {
            trace("base: the writer refused the file: \(error)")
            return
        }
        let base: BaseModel
        do { base = try BaseModel(path: path) } catch { trace("base: refused: \(error)"); return }
        schedulers(base.config("scheduler"), &c, steps: steps)
        guard depth >= 2 else { return }
        let sd: StableDiffusion
        do { sd = try StableDiffusion(base: base) } catch { trace("StableDiffusion: \(error)"); return }
        trace("StableDiffusion: loaded")
        guard depth >= 3 else { return }
        generate(sd, options(&c))
    }

    /// A config value: structure-aware for the arrays, hostile literals for numbers, any JSON otherwise.
    static func value(for key: String, current: JSONValue?, _ c: inout Choices) -> JSONValue {
        if c.rarely(8) { return Hostile.json(&c) }
        if let a = current?.arrayValue ?? (key == "trained_betas" ? [] : nil) {
            let lengths = [a.count, 0, 1, 2, 3, 5, 8, 999, 1000, 1001]
            let n = c.orHostile(a.count, lengths, threshold: 128)
            if key == "trained_betas" {
                let n2 = n == 0 ? c.pick([1000, 10, 1, 999, 1001]) : n
                return .array((0..<n2).map { i in Hostile.double(&c, 0.00085 + 0.01 * Double(i) / Double(max(n2, 1))) })
            }
            return .array((0..<min(n, 64)).map { i in
                let cur = a.isEmpty ? nil : a[min(i, a.count - 1)]
                if let s = cur?.stringValue { return .string(c.orHostile(s, ["CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", ""])) }
                if let v = cur?.int64Value { return Hostile.integer(&c, Int(v)) }
                return Hostile.json(&c)
            })
        }
        if let cur = current, cur.isInteger, let v = cur.int64Value { return Hostile.integer(&c, Int(v) &+ c.pick([0, 1, -1, 2, -2])) }
        if let d = current?.doubleValue { return Hostile.double(&c, d) }
        if current?.boolValue != nil { return .bool(c.bool()) }
        return Hostile.json(&c)
    }

    static func edit(_ config: JSONValue, keys: [String], _ c: inout Choices) -> JSONValue {
        if c.rarely(64) { return Hostile.json(&c) }
        var out = config
        for _ in 0..<(1 + c.int(0...2)) {
            let key = c.pick(keys)
            if c.rarely(16) { out = out.removing(key); continue }
            out = out.setting(key, value(for: key, current: out[key], &c))
        }
        return out
    }

    /// The base's metadata with the chosen edits, and its tensors (a tokenizer file possibly replaced).
    static func edited(_ c: inout Choices, _ fx: FuzzFixtures) -> (JSONValue, [TensorSource])? {
        var md = fx.base.metadata
        var comps = md["components"] ?? .object([])
        let edits = 1 + c.int(0...2)
        var tokenizerConfig: [UInt8]? = nil
        func component(_ name: String, _ keys: [String], _ c: inout Choices) {
            comps = comps.setting(name, (comps[name] ?? .object([])).setting("config", edit(comps[name]?["config"] ?? .object([]), keys: keys, &c)))
        }
        for _ in 0..<edits {
            switch c.int(0...5) {
            case 0: component("scheduler", schedulerKeys, &c)
            case 1: component("unet", unetKeys, &c)
            case 2: component("vae", vaeKeys, &c)
            case 3: component("text_encoder", textKeys, &c)
            case 4:
                let name = "tokenizer.tokenizer_config.json"
                guard let b = try? fx.base.file.tensorBytes(name).array, let j = try? JSONValue.parse(b, file: name) else { break }
                tokenizerConfig = edit(j, keys: tokenizerKeys, &c).serialized()
            default:
                let k = c.pick(topKeys)
                md = md.setting(k, value(for: k, current: md[k], &c))
            }
        }
        md = md.setting("components", comps)
        if tracing {
            // Only what differs from the fixture: the edits that make this input.
            let original = fx.base.metadata["components"] ?? .object([])
            for k in ["unet", "vae", "text_encoder", "scheduler"] {
                let was = original[k]?["config"], now = comps[k]?["config"]
                guard was != now else { continue }
                guard let pairs = now?.objectValue, was?.objectValue != nil else { trace("base: \(k).config = " + (now?.serializedString ?? "(removed)")); continue }
                for (key, v) in pairs where was?[key] != v { trace("base: \(k).\(key) = " + v.serializedString.prefix(400)) }
                for (key, _) in was?.objectValue ?? [] where now?[key] == nil { trace("base: \(k).\(key) removed") }
            }
            if let tc = tokenizerConfig { trace("base: tokenizer_config.json " + String(decoding: tc, as: UTF8.self)) }
            for k in topKeys where md[k] != fx.base.metadata[k] { trace("base: \(k) = " + (md[k]?.serializedString ?? "(removed)")) }
        }
        var tensors = fx.baseTensors
        if let tc = tokenizerConfig, let i = tensors.firstIndex(where: { $0.info.name == "tokenizer.tokenizer_config.json" }) {
            tensors[i] = .array(TensorInfo(name: tensors[i].info.name, dtype: .U8, shape: [tc.count]), tc)
        }
        return (md, tensors)
    }

    static func options(_ c: inout Choices) -> GenerateOptions {
        var o = GenerateOptions(prompt: c.pick(["a photo of sks dog", "", String(repeating: "a ", count: 100)]))
        o.steps = 1 + c.int(0...1)
        o.cfg = c.orHostile(Float(1), [7.5, 0, -1, 1e30, 3e38, .nan, .infinity], threshold: 200)
        o.width = 8 * c.orHostile(8, [1, 2, 3, 9])
        o.height = 8 * c.orHostile(8, [1, 2, 3, 9])
        o.seed = UInt64(c.byte())
        o.karras = c.rarely(4)
        o.sampler = c.pick(Sampler.allCases)
        return o
    }

    /// Every scheduler from the (edited) scheduler config: built, scheduled and stepped on a
    /// small finite latent. Refusals are fine; traps and unbounded allocations are findings.
    static func schedulers(_ json: JSONValue?, _ c: inout Choices, steps: Int) {
        guard let sc = json, let config = try? SchedulerConfig(json: sc) else { return }
        let kinds: [SchedulerKind?] = c.bool() ? [nil] : SchedulerKind.allCases
        for k in kinds {
            guard var s = try? makeScheduler(k, config: config) else { continue }
            trace("scheduler: \(k?.rawValue ?? "from _class_name"), \(steps) steps")
            do { try s.setTimesteps(steps) } catch { trace("scheduler: \(error)"); continue }
            var sample = (0..<16).map { Float($0 % 5) - 2 }
            var noise = TorchGenerator(seed: 1)
            for t in s.timesteps.prefix(4) {
                let input = s.scaleModelInput(sample, timestep: t)
                sample = s.step(modelOutput: input.map { $0 * 0.5 }, timestep: t, sample: sample, noise: &noise)
            }
        }
    }

    /// A generation either fails with an error or returns an image whose values are finite (so it can become a PNG).
    static func generate(_ sd: StableDiffusion, _ o: GenerateOptions) {
        let images: [FeatureMap]
        trace("generate: \(o.sampler.rawValue), \(o.steps) step(s), cfg \(o.cfg), \(o.width)×\(o.height)")
        do { images = try sd.generate(o) } catch { trace("generate: \(error)"); return }
        for img in images {
            oracle("generate-finite", img.data.allSatisfy { $0.isFinite }, "generate returned a non-finite image (cfg \(o.cfg), sampler \(o.sampler.rawValue), \(o.width)×\(o.height))")
            let rgb = PNGWriter.rgb8(img)
            _ = try? PNGWriter.encode(rgb: rgb, width: img.w, height: img.h, text: [("parameters", "fuzz")])
        }
    }
}
