import Foundation
import Testing
@testable import Checkpoint
@testable import Diffusion
@testable import SubjectDelta
@testable import TensorFile

/// Whole generations compared with diffusers' StableDiffusionPipeline from the same seed
/// (converters/fixtures/make_pipeline_fixtures.py): tokenizer, text encoder, torch-compatible
/// latents, scheduler, classifier-free guidance, UNet and VAE together.
@Suite(.serialized) struct PipelineTests {
    static func cases() throws -> [[String: Any]] { try DiffusionFixtures.json("pipeline/cases.json") as! [[String: Any]] }

    @Test(arguments: ["sd1", "sd2"])
    func imagesMatchDiffusers(pipeline: String) throws {
        let (base, dir) = try TextEncoderTests.base(pipeline)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sd = try StableDiffusion(base: base)
        let ref = try SafetensorsFile(path: DiffusionFixtures.path("pipeline/\(pipeline).safetensors"))
        var checked = 0
        for c in try Self.cases() where c["pipeline"] as? String == pipeline {
            let sched = c["scheduler"] as! String
            var o = GenerateOptions(prompt: c["prompt"] as! String)
            o.negativePrompt = c["negative_prompt"] as! String
            o.steps = c["steps"] as! Int
            o.cfg = Float(c["cfg"] as! Double)
            o.seed = UInt64(c["seed"] as! Int)
            o.sampler = Sampler(rawValue: sched == "dpmpp_2m_karras" ? "dpmpp_2m" : sched)!
            o.karras = sched == "dpmpp_2m_karras"
            o.width = 64
            o.height = 64
            let latents = try sd.denoise(o)
            let wantLatents = try ref.tensorBytes(c["key"] as! String + ".latents").bytes.withMemoryRebound(to: Float.self) { Array($0) }
            let lscale = wantLatents.map(abs).max()!
            let lerr = zip(latents, wantLatents).map { abs($0 - $1) }.max()! / lscale
            print("\(pipeline) \(c["key"]!): latents max |error| / max |latent| = \(lerr)")
            #expect(lerr < 1e-4, "\(pipeline) \(c["key"]!) latents")
            let img = try sd.generate(o)[0]
            let want = try ref.tensorBytes(c["key"] as! String + ".image").bytes.withMemoryRebound(to: Float.self) { Array($0) }  // [64, 64, 3] in [0, 1]
            var worst: Float = 0
            for y in 0..<64 { for x in 0..<64 { for ch in 0..<3 {
                let ours = min(max(img.data[(ch * 64 + y) * 64 + x] / 2 + 0.5, 0), 1)
                worst = max(worst, abs(ours - want[(y * 64 + x) * 3 + ch]))
            } } }
            print("\(pipeline) \(c["key"]!): max |pixel difference| = \(worst) (of 1.0)")
            #expect(worst < 2e-4, "\(pipeline) \(c["key"]!)")
            checked += 1
        }
        #expect(checked == 12)
    }
}
