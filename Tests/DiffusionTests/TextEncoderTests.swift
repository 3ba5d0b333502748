import Foundation
import Testing
@testable import Checkpoint
import Compute
@testable import Diffusion
@testable import TensorFile

/// transformers' CLIPTextModel outputs for the tiny SD 1.x / 2.x pipelines
/// (converters/fixtures/make_text_encoder_fixtures.py).
@Suite(.serialized) struct TextEncoderTests {
    static func base(_ name: String, dtype: DType? = nil) throws -> (BaseModel, String) {
        let dir = NSTemporaryDirectory() + "lidb-te-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/base.lidb"
        _ = try BaseConverter.write(BaseConverter.plan(input: DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/\(name)/diffusers-safetensors"), to: path, dtype: dtype)
        return (try BaseModel(path: path), dir)
    }

    func tensor(_ f: SafetensorsFile, _ n: String) throws -> [Float] {
        try f.tensorBytes(n).bytes.withMemoryRebound(to: Float.self) { Array($0) }
    }

    @Test(arguments: ["sd1", "sd2"])
    func matchesTransformers(name: String) throws {
        let (base, dir) = try Self.base(name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let enc = try CLIPTextEncoder(base: base)
        let f = try SafetensorsFile(path: DiffusionFixtures.path("text_encoder/\(name).safetensors"))
        let ids = try f.tensorBytes("input_ids").bytes.withMemoryRebound(to: Int64.self) { $0.map(Int.init) }
        let last = try tensor(f, "last_hidden"), m2 = try tensor(f, "hidden_m2")
        let per = 77 * enc.hidden
        var worst: Float = 0, worstM2: Float = 0
        for row in 0..<3 {
            let got = try enc.encode(Array(ids[(row * 77)..<((row + 1) * 77)]))
            let gotM2 = try enc.encode(Array(ids[(row * 77)..<((row + 1) * 77)]), hiddenState: enc.layerCount - 1)
            let scale = last[(row * per)..<((row + 1) * per)].map(abs).max()!
            for i in 0..<per {
                worst = max(worst, abs(got[i] - last[row * per + i]) / scale)
                worstM2 = max(worstM2, abs(gotM2[i] - m2[row * per + i]) / scale)
            }
        }
        print("\(name) text encoder vs transformers: max |error| / max |output| = \(worst) (last), \(worstM2) (penultimate)")
        #expect(worst < 1e-5 && worstM2 < 1e-5)
    }

    @Test func badInputIsRefused() throws {
        let (base, dir) = try Self.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let enc = try CLIPTextEncoder(base: base)
        #expect(throws: TensorFileError.self) { _ = try enc.encode([Int](repeating: 0, count: 78)) }
        #expect(throws: TensorFileError.self) { _ = try enc.encode([enc.vocab]) }
    }
}

/// The pipeline frees the text encoder's weights after encoding; the next encode loads them
/// again, re-applies the merges (and attached terms) and gives the same result.
@Suite(.serialized) struct TextEncoderReleaseTests {
    @Test func releasedWeightsAreReloaded() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let enc = try CLIPTextEncoder(base: base)
        let ids = [1, 5, 7, 9, 2]
        let before = try enc.encode(ids)
        let name = "text_model.encoder.layers.0.mlp.fc1"
        let h = enc.hidden, inter = enc.intermediate
        let term = try LowRankTerm.lora(down: [Float](repeating: 0.02, count: h), up: [Float](repeating: 0.01, count: inter),
                                        out: inter, in: h, rank: 1, alpha: 1, trainable: false)
        try enc.addWeightDeltas([term], to: name)
        let merged = try enc.encode(ids)
        #expect(merged != before)
        enc.releaseWeights()
        #expect(enc.released)
        #expect(try enc.encode(ids) == merged)
        #expect(!enc.released)
        // An attached term is re-attached too; detaching leaves the merge.
        let live = try LowRankTerm.lora(down: [Float](repeating: 0.03, count: h), up: [Float](repeating: -0.02, count: h),
                                        out: h, in: h, rank: 1, alpha: 1, trainable: false)
        try enc.attach(live, to: "text_model.encoder.layers.1.self_attn.v_proj")
        let attached = try enc.encode(ids)
        #expect(attached != merged)
        enc.releaseWeights()
        #expect(try enc.encode(ids) == attached)
        enc.detachAllTerms()
        #expect(try enc.encode(ids) == merged)
        try enc.addWeightDeltas([term], to: name, sign: -1)
        enc.releaseWeights()
        let again = try enc.encode(ids)
        #expect(zip(again, before).map { abs($0 - $1) }.max()! < 1e-5)
        // Unknown layers are refused, naming them.
        #expect(throws: TensorFileError.self) { try enc.attach(live, to: "text_model.encoder.layers.99.mlp.fc1") }
    }
}
