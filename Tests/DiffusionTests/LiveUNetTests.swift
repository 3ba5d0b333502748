import Foundation
import Testing
@testable import Checkpoint
@testable import Diffusion
@testable import SubjectDelta
@testable import TensorFile

/// A subject applied live (ΔW·x added in the forward pass) gives the UNet output of the merged base.
@Suite(.serialized) struct LiveUNetTests {
    @Test func liveEqualsMerged() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let layers = TargetSet.unetAttn.layers(in: base.file.tensors)
        let subject = Subject.initialise(layers: layers, rank: 1, a: 3, b: 3, basisSeed: 8, std: 3.0, factorSeed: 2, targetSet: "unet-attn", architecture: "sd1")
        let applied = [AppliedSubject(subject: subject, weight: 0.8, path: "s")]
        _ = try Merger.merge(base: base, subjects: applied, to: dir + "/merged.lidb")
        let merged = try UNet(base: BaseModel(path: dir + "/merged.lidb"))
        let plain = try UNet(base: base)
        let live = LiveDelta(base: base)
        try live.activate(applied)
        plain.live = { name, x, rows, y in live.apply(weight: name, x: x, rows: rows, into: y) }
        var g = TorchGenerator(seed: 3)
        let sample = FeatureMap(c: 4, h: 8, w: 8, data: g.randn(count: 256))
        let ctx = g.randn(count: 77 * 32)
        let a = merged(sample, timestep: 500, context: ctx, contextTokens: 77)
        let b = plain(sample, timestep: 500, context: ctx, contextTokens: 77)
        plain.live = nil
        let c = plain(sample, timestep: 500, context: ctx, contextTokens: 77)
        let scale = a.data.map(abs).max()!
        let diff = zip(a.data, b.data).map { abs($0 - $1) }.max()! / scale
        let effect = zip(a.data, c.data).map { abs($0 - $1) }.max()! / scale
        print("live vs merged UNet output: max relative difference \(diff) (the subject itself changes the output by \(effect))")
        #expect(diff < 1e-5)
        #expect(effect > 100 * diff)
    }
}

/// An F16 base's UNet kept as F16 and converted layer by layer computes exactly what the UNet with
/// every weight converted to f32 at load computes (the conversion is exact), merged subjects included.
@Suite(.serialized) struct WeightResidencyTests {
    @Test func f16PerLayerEqualsF32() throws {
        let (base, dir) = try TextEncoderTests.base("sd1", dtype: .F16)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cached = try UNet(base: base, residency: .f32)
        let perLayer = try UNet(base: base, residency: .f16PerLayer, halfMinimum: 1)
        #expect(!perLayer.half.isEmpty && perLayer.w.keys.allSatisfy { perLayer.half[$0] == nil })
        #expect(cached.half.isEmpty)
        var g = TorchGenerator(seed: 5)
        let sample = FeatureMap(c: 4, h: 8, w: 8, data: g.randn(count: 256))
        let ctx = g.randn(count: 77 * 32)
        #expect(cached(sample, timestep: 300, context: ctx, contextTokens: 77).data == perLayer(sample, timestep: 300, context: ctx, contextTokens: 77).data)
        // A merged subject turns its layers into f32 in both, with the same values.
        let layers = TargetSet.unetAttn.layers(in: base.file.tensors)
        let subject = Subject.initialise(layers: layers, rank: 1, a: 3, b: 3, basisSeed: 8, std: 3.0, factorSeed: 2, targetSet: "unet-attn", architecture: "sd1")
        let cache = BasisCache()
        for unet in [cached, perLayer] {
            for l in subject.layers {
                let f = try subject.lowRankFactors(l, weight: 0.7, cache: cache)
                #expect(unet.addLowRank(weight: l.target.weightName, up: f.up, down: f.down, rank: f.rank))
            }
        }
        #expect(perLayer.half[String(layers[0].weightName.dropFirst(5))] == nil)
        let a = cached(sample, timestep: 300, context: ctx, contextTokens: 77).data
        #expect(a == perLayer(sample, timestep: 300, context: ctx, contextTokens: 77).data)
    }
}
