import Foundation
import Testing
@testable import Checkpoint
import Compute
@testable import Diffusion
@testable import TensorFile

/// diffusers' UNet2DConditionModel and AutoencoderKL decoder outputs for the tiny pipelines
/// (converters/fixtures/make_unet_fixtures.py), computed by the runtime's models: `Compute`'s
/// `UNetNetwork` and the VAE built from `Compute`'s layers.
@Suite(.serialized) struct UNetTests {
    func tensor(_ f: SafetensorsFile, _ n: String) throws -> [Float] {
        try f.tensorBytes(n).bytes.withMemoryRebound(to: Float.self) { Array($0) }
    }

    @Test(arguments: ["sd1", "sd2", "sd1-inpaint"])
    func unetMatchesDiffusers(name: String) throws { try unetMatchesDiffusers(name: name, algorithm: .automatic) }

    func unetMatchesDiffusers(name: String, algorithm: ConvAlgorithm) throws {
        let (base, dir) = try TextEncoderTests.base(name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var unet = try UNetNetwork(base: base)
        unet.convolutionAlgorithm = algorithm
        let f = try SafetensorsFile(path: DiffusionFixtures.path("unet/\(name).safetensors"))
        let sample = try tensor(f, "sample"), context = try tensor(f, "context"), want = try tensor(f, "out")
        let ts = try f.tensorBytes("timesteps").bytes.withMemoryRebound(to: Int64.self) { Array($0) }
        let cin = unet.architecture.inChannels, ctxDim = unet.architecture.contextDim
        let per = cin * 64, outPer = 4 * 64, ctxPer = 77 * ctxDim
        var worst: Float = 0
        for b in 0..<2 {
            let x = try FeatureMap(c: cin, h: 8, w: 8, data: Array(sample[(b * per)..<((b + 1) * per)]))
            let ctx = try Matrix(rows: 77, cols: ctxDim, data: Array(context[(b * ctxPer)..<((b + 1) * ctxPer)]))
            let y = try unet.forward(x, timestep: Float(ts[b]), context: ctx)
            let ref = want[(b * outPer)..<((b + 1) * outPer)]
            let scale = ref.map(abs).max()!
            for (g, r) in zip(y.data, ref) { worst = max(worst, abs(g - r) / scale) }
        }
        print("\(name) UNet vs diffusers (\(algorithm) convolutions): max |error| / max |output| = \(worst)")
        #expect(worst < 1e-4)
    }

    @Test(arguments: ["sd1", "sd2"])
    func vaeDecoderMatchesDiffusers(name: String) throws { try vaeDecoderMatchesDiffusers(name: name, algorithm: .automatic) }

    func vaeDecoderMatchesDiffusers(name: String, algorithm: ConvAlgorithm) throws {
        let (base, dir) = try TextEncoderTests.base(name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var vae = try VAEDecoder(base: base)
        vae.convolutionAlgorithm = algorithm
        let f = try SafetensorsFile(path: DiffusionFixtures.path("unet/\(name).safetensors"))
        let y = try vae(try FeatureMap(c: 4, h: 8, w: 8, data: try tensor(f, "latents")))
        let want = try tensor(f, "decoded")
        #expect(y.c == 3 && y.h == 64 && y.w == 64)
        let scale = want.map(abs).max()!
        let worst = zip(y.data, want).map { abs($0 - $1) / scale }.max()!
        print("\(name) VAE decoder vs diffusers (\(algorithm) convolutions): max |error| / max |output| = \(worst)")
        #expect(worst < 1e-4)
    }
}

/// The same references with every 3×3 convolution through Winograd F(2×2, 3×3) and its fused
/// group norm + SiLU and upsampling (the small models' channel counts are below the size from
/// which the runtime picks it by itself).
@Suite(.serialized) struct WinogradModelTests {
    @Test(arguments: ["sd1", "sd2"])
    func modelsMatchDiffusersThroughWinograd(name: String) throws {
        try UNetTests().unetMatchesDiffusers(name: name, algorithm: .winograd)
        try UNetTests().vaeDecoderMatchesDiffusers(name: name, algorithm: .winograd)
    }
}

@Suite(.serialized) struct VAEEncoderTests {
    @Test(arguments: ["sd1", "sd2"])
    func encoderMatchesDiffusers(name: String) throws {
        let (base, dir) = try TextEncoderTests.base(name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let enc = try VAEEncoder(base: base)
        let f = try SafetensorsFile(path: DiffusionFixtures.path("unet/\(name).safetensors"))
        func t(_ n: String) throws -> [Float] { try f.tensorBytes(n).bytes.withMemoryRebound(to: Float.self) { Array($0) } }
        let (mean, logvar) = try enc(try FeatureMap(c: 3, h: 64, w: 64, data: try t("image")))
        let wm = try t("enc_mean"), wl = try t("enc_logvar")
        #expect(mean.c == 4 && mean.h == 8 && mean.w == 8)
        let em = zip(mean.data, wm).map { abs($0 - $1) }.max()! / wm.map(abs).max()!
        let el = zip(logvar.data, wl).map { abs($0 - $1) }.max()! / wl.map(abs).max()!
        print("\(name) VAE encoder vs diffusers: mean \(em), logvar \(el) (max |error| / max |value|)")
        #expect(em < 1e-4 && el < 1e-4)
    }
}

@Suite(.serialized) struct MissingWeightTests {
    /// A base missing a weight is refused when the model is built, naming the tensor — not a crash mid-generation.
    @Test func missingWeightsAreNamed() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for victim in ["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", "vae.decoder.up_blocks.2.resnets.1.conv2.bias",
                       "vae.encoder.mid_block.attentions.0.to_v.weight", "text_encoder.text_model.encoder.layers.1.mlp.fc2.bias"] {
            let sources = base.file.tensors.filter { $0.name != victim }.map { TensorSource.bytes($0, try! base.file.tensorBytes($0.name)) }
            try LidbWriter.write(to: dir + "/cut.lidb", kind: "base", metadata: base.metadata, tensors: sources)
            let cut = try BaseModel(path: dir + "/cut.lidb")
            let e = firstError {
                if victim.hasPrefix("unet.") { _ = try UNetNetwork(base: cut) }
                else if victim.hasPrefix("vae.decoder") { _ = try VAEDecoder(base: cut) }
                else if victim.hasPrefix("vae.encoder") { _ = try VAEEncoder(base: cut) }
                else { _ = try CLIPTextEncoder(base: cut) }
            }
            #expect(e?.tensor == victim && e?.problem == .tensorNotFound, "\(victim): \(String(describing: e))")
        }
    }
}

func firstError(_ body: () throws -> Void) -> TensorFileError? {
    do {
        try body()
        return nil
    } catch {
        return error as? TensorFileError
    }
}

@Suite(.serialized) struct InconsistentConfigTests {
    /// A base whose configs disagree with its weights is refused when the model is built.
    @Test func configsThatDoNotFitTheWeightsAreRefused() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func rewritten(_ component: String, _ key: String, _ value: JSONValue) throws -> BaseModel {
            let comps = base.metadata["components"]!
            let comp = comps[component]!
            let md = base.metadata.setting("components", comps.setting(component, comp.setting("config", comp["config"]!.setting(key, value))))
            let sources = base.file.tensors.map { TensorSource.bytes($0, try! base.file.tensorBytes($0.name)) }
            try LidbWriter.write(to: dir + "/bad.lidb", kind: "base", metadata: md, tensors: sources)
            return try BaseModel(path: dir + "/bad.lidb")
        }
        let wide = try rewritten("unet", "cross_attention_dim", .int(48))
        #expect(firstError { _ = try UNetNetwork(base: wide) }.map { "\($0)".contains("config needs") } == true)
        let groups = try rewritten("unet", "norm_num_groups", .int(0))
        #expect(firstError { _ = try UNetNetwork(base: groups) }.map { "\($0)".contains("norm_num_groups") } == true)
        let vae = try rewritten("vae", "latent_channels", .int(8))
        #expect(firstError { _ = try VAEDecoder(base: vae) }.map { "\($0)".contains("config needs") } == true)
        let heads = try rewritten("text_encoder", "num_attention_heads", .int(0))
        #expect(firstError { _ = try CLIPTextEncoder(base: heads) } != nil)
        let inter = try rewritten("text_encoder", "intermediate_size", .int(38))
        #expect(firstError { _ = try CLIPTextEncoder(base: inter) }.map { "\($0)".contains("config needs") } == true)
    }
}
