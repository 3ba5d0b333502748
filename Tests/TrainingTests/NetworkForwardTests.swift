import Compute
import Diffusion
import Foundation
import Testing

/// The networks with delta terms compute what diffusers and transformers computed for the
/// gradient fixtures.
@Suite(.serialized) struct NetworkForwardTests {
    // The runtime's inference models are these networks (Diffusion's pipeline runs them), so
    // their parity with diffusers and transformers without terms is DiffusionTests' (UNetTests,
    // TextEncoderTests, VAEDepthTests for latent sides the down path does not divide).

    /// With the fixture's LiDB terms attached: the text encoder's output against transformers'
    /// `encoder_hidden_states` and the UNet's against diffusers' `pred` (both with the terms).
    @Test(arguments: ["sd1", "sd2", "sd1-cond"])
    func outputsWithTermsMatchTheFixtures(model: String) throws {
        let (base, dir) = try NetworkFixtures.base(model)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var unet = try UNetNetwork(base: base), text = try CLIPTextNetwork(base: base)
        _ = try FixtureTerms.attach(model: model, variant: "lidb", unet: &unet, text: &text)
        let f = try FixtureFile("\(model).safetensors")
        let ids = try f.int64s("input_ids").map { Int($0) }
        let states = try text.forward(ids: ids)
        let refStates = try f.floats("encoder_hidden_states")
        let eText = relativeError(states.data, refStates)
        #expect(eText <= 1e-5, "\(model) encoder_hidden_states: \(eText)")
        // The UNet on the fixture's own text states, so its error is its own.
        let context = try Matrix(rows: 77, cols: unet.architecture.contextDim, data: refStates)
        let pred = try unet.forward(try Compute.FeatureMap(c: 4, h: 8, w: 8, data: try f.floats("noisy")),
                                    timestep: Float(try f.int64s("timestep")[0]), context: context)
        let eUNet = relativeError(pred.data, try f.floats("pred"))
        #expect(eUNet <= 1e-5, "\(model) pred: \(eUNet)")
        // Without the terms the outputs differ (the terms were applied).
        unet.detachAllTerms()
        text.detachAllTerms()
        #expect(relativeError(try text.forward(ids: ids).data, refStates) > 1e-4)
        print("\(model) with LiDB terms: encoder_hidden_states \(eText), pred \(eUNet)")
    }

    /// Every layer the `paper` target set names exists, under the base's name without its prefix.
    @Test func linearNamesCoverThePaperTargets() throws {
        let (base, dir) = try NetworkFixtures.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let unet = try UNetNetwork(base: base), text = try CLIPTextNetwork(base: base)
        let unetNames = Set(unet.linearNames), textNames = Set(text.linearNames)
        for row in try NetworkFixtures.layerTable("sd1") {
            if row.name.hasPrefix("unet.") {
                let n = String(row.name.dropFirst(5))
                #expect(unetNames.contains(n), "\(n)")
                #expect(unet.linear(named: n).map { ($0.outFeatures, $0.inFeatures) } ?? (0, 0) == (row.out, row.in))
            } else {
                let n = String(row.name.dropFirst("text_encoder.".count))
                #expect(textNames.contains(n), "\(n)")
                #expect(text.linear(named: n).map { ($0.outFeatures, $0.inFeatures) } ?? (0, 0) == (row.out, row.in))
            }
        }
        #expect(unetNames.contains("time_embedding.linear_1") && unetNames.contains("mid_block.resnets.1.time_emb_proj"))
        #expect(unetNames.contains("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"))
        #expect(unet.linearNames.count == unetNames.count && text.linearNames.count == 12)
    }
}
