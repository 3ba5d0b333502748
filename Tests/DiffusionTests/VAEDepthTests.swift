import Foundation
import Testing
import Compute
@testable import Checkpoint
@testable import Diffusion
@testable import TensorFile

/// Latent sizes derived from the VAE as diffusers derives them (`2 ** (len(block_out_channels) - 1)`),
/// and latent sides the UNet's down path does not divide, against diffusers' pipeline
/// (converters/fixtures/make_vae_depth_fixtures.py).
@Suite(.serialized) struct VAEDepthTests {
    static func cases() throws -> [[String: Any]] { try DiffusionFixtures.json("vae_depth/cases.json") as! [[String: Any]] }

    /// The tiny SD 1.x test pipeline with its VAE replaced by the fixture's 2-block one, converted.
    static func twoBlockBase() throws -> (BaseModel, String) {
        let dir = NSTemporaryDirectory() + "lidb-vae2-" + UUID().uuidString
        let fm = FileManager.default
        try fm.copyItem(atPath: DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/sd1/diffusers-safetensors", toPath: dir + "/pipeline")
        try fm.removeItem(atPath: dir + "/pipeline/vae")
        try fm.copyItem(atPath: DiffusionFixtures.path("vae_depth/vae"), toPath: dir + "/pipeline/vae")
        _ = try BaseConverter.write(BaseConverter.plan(input: dir + "/pipeline"), to: dir + "/base.lidb", dtype: nil)
        return (try BaseModel(path: dir + "/base.lidb"), dir)
    }

    func floats(_ f: SafetensorsFile, _ name: String) throws -> [Float] {
        try f.tensorBytes(name).bytes.withMemoryRebound(to: Float.self) { Array($0) }
    }

    @Test func scaleFactorComesFromTheVAEConfig() throws {
        let (two, dir) = try Self.twoBlockBase()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (sd1, dir1) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir1) }
        let want = Dictionary(try Self.cases().map { ($0["pipeline"] as! String, $0["vae_scale_factor"] as! Int) }, uniquingKeysWith: { a, _ in a })
        #expect(try PipelineConfigs(base: two).vae.scaleFactor == want["vae2"])
        #expect(try PipelineConfigs(base: sd1).vae.scaleFactor == want["sd1"])
        #expect(try VAEDecoder(base: two).scaleFactor == 2 && VAEEncoder(base: two).scaleFactor == 2)
        // Width and height are checked against the base's factor, not a fixed 8.
        var o = GenerateOptions(prompt: "x")
        (o.width, o.height) = (34, 32)
        #expect(throws: Never.self) { try o.validate(for: PipelineConfigs(base: two), file: "b") }
        let e = firstError { try o.validate(for: PipelineConfigs(base: sd1), file: "b") }
        #expect(e?.file == "--width" && "\(e!)".contains("multiples of 8"))
        (o.width, o.height) = (33, 32)
        #expect(firstError { try o.validate(for: PipelineConfigs(base: two), file: "b") }?.file == "--width")
    }

    @Test func imagesMatchDiffusers() throws {
        let (two, dir) = try Self.twoBlockBase()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (sd1, dir1) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir1) }
        let pipelines = ["vae2": try StableDiffusion(base: two), "sd1": try StableDiffusion(base: sd1)]
        let ref = try SafetensorsFile(path: DiffusionFixtures.path("vae_depth/reference.safetensors"))
        var checked = 0
        for c in try Self.cases() {
            let sd = pipelines[c["pipeline"] as! String]!
            let key = c["key"] as! String
            var o = GenerateOptions(prompt: c["prompt"] as! String)
            o.negativePrompt = c["negative_prompt"] as! String
            o.steps = c["steps"] as! Int
            o.cfg = Float(c["cfg"] as! Double)
            o.seed = UInt64(c["seed"] as! Int)
            o.sampler = .ddim
            o.height = c["height"] as! Int
            o.width = c["width"] as! Int
            let f = c["vae_scale_factor"] as! Int
            let latents = try sd.denoise(o)
            let wantLatents = try floats(ref, key + ".latents")
            #expect(latents.count == 4 * (o.height / f) * (o.width / f) && latents.count == wantLatents.count, "\(key)")
            let lerr = zip(latents, wantLatents).map { abs($0 - $1) }.max()! / wantLatents.map(abs).max()!
            let img = try sd.generate(o)[0]
            #expect(img.h == o.height && img.w == o.width, "\(key): \(img.w)×\(img.h)")
            let want = try floats(ref, key + ".image")  // [H, W, 3] in [0, 1]
            var worst: Float = 0
            for y in 0..<o.height { for x in 0..<o.width { for ch in 0..<3 {
                let ours = min(max(img.data[(ch * o.height + y) * o.width + x] / 2 + 0.5, 0), 1)
                worst = max(worst, abs(ours - want[(y * o.width + x) * 3 + ch]))
            } } }
            print("\(key): latents max |error| / max |latent| = \(lerr), max |pixel difference| = \(worst)")
            #expect(lerr < 1e-4 && worst < 2e-4, "\(key)")
            checked += 1
        }
        #expect(checked == 3)
    }

    @Test func encoderMatchesDiffusers() throws {
        let (two, dir) = try Self.twoBlockBase()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let enc = try VAEEncoder(base: two)
        let ref = try SafetensorsFile(path: DiffusionFixtures.path("vae_depth/reference.safetensors"))
        let (mean, logvar) = try enc.encode(try FeatureMap(c: 3, h: 40, w: 48, data: floats(ref, "encoder.image")))
        #expect(mean.h == 20 && mean.w == 24 && mean.c == 4)
        let wm = try floats(ref, "encoder.mean"), wl = try floats(ref, "encoder.logvar")
        let em = zip(mean.data, wm).map { abs($0 - $1) }.max()! / wm.map(abs).max()!
        let el = zip(logvar.data, wl).map { abs($0 - $1) }.max()! / wl.map(abs).max()!
        #expect(em < 1e-4 && el < 1e-4, "mean \(em), logvar \(el)")
        // Sizes the VAE cannot encode to a whole latent are refused, naming the side.
        let e = firstError { _ = try enc.encode(try FeatureMap(zerosC: 3, h: 40, w: 47)) }
        #expect(e.map { "\($0)".contains("width 47") } == true)
        #expect(firstError { _ = try enc.encode(try FeatureMap(zerosC: 1, h: 40, w: 48)) } != nil)
    }
}
