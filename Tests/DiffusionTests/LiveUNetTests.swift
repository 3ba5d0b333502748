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
