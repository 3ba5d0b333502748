import Crypto
import Foundation
import Testing
@testable import Checkpoint
@testable import Hypernetwork
@testable import SubjectDelta
@testable import TensorFile

/// The runtime against the PyTorch reference (converters/fixtures/make_hyper_fixtures.py:
/// transformers' CLIPVisionModel / ViTModel and torch.nn.TransformerDecoderLayer, random weights).
@Suite struct ParityTests {
    static func converted(_ name: String, _ tmp: TempDir) throws -> Hypernetwork {
        let out = tmp.file("\(name).lidb")
        let s = try HypernetworkConverter.convert(weights: Fixtures.path("\(name)/hyper.safetensors"), config: Fixtures.path("\(name)/hyper.json"), to: out, zstd: true)
        #expect(s.layers == 140)
        return try Hypernetwork(path: out)
    }

    @Test(arguments: ["clip", "vit"])
    func predictionsMatchPyTorch(name: String) throws {
        let tmp = TempDir()
        let h = try Self.converted(name, tmp)
        let expected = try SafetensorsFile(path: Fixtures.path("\(name)/expected.safetensors"))
        let pixels = try floats(expected, "pixel_values")
        let feats = try h.features(pixels: pixels)
        let fe = relativeError(feats, try floats(expected, "features"))
        let preds = try h.predict(pixels: pixels)
        #expect(preds.count == 140)
        let down = preds.flatMap(\.downTrain), up = preds.flatMap(\.upTrain)
        let de = relativeError(down, try floats(expected, "down_train")), ue = relativeError(up, try floats(expected, "up_train"))
        print("\(name): image tokens \(fe), down_train \(de), up_train \(ue) (max |error| / max |reference|)")
        #expect(fe <= 1e-5)
        #expect(de <= 1e-4)
        #expect(ue <= 1e-4)
        // Clamping to the layer: a 4 × 4 layer gets a' = b' = min(a or b, 4).
        let small = try #require(preds.first { $0.target.out == 4 && $0.target.inDim == 4 })
        #expect(small.a == min(h.config.subject.a, 4) && small.b == min(h.config.subject.b, 4))
        #expect(small.downTrain.count == h.config.subject.rank * small.a)
    }

    @Test func subjectFromPredictionsMergesIntoTheTinyBase() throws {
        let tmp = TempDir()
        let h = try Self.converted("clip", tmp)
        let expected = try SafetensorsFile(path: Fixtures.path("clip/expected.safetensors"))
        let preds = try h.predict(pixels: try floats(expected, "pixel_values"))
        let basePath = try tinyBase(tmp)
        let base = try BaseModel(path: basePath)
        let sha = String(repeating: "ab", count: 32)
        let s = try h.subject(from: preds, for: base, provenance: SubjectProvenance(name: "test", trigger: "sks", className: "face", imageSHA256: sha))
        try s.write(to: tmp.file("s.lidb"), dtype: .f32)
        let back = try Subject(path: tmp.file("s.lidb"))
        #expect(back.layers.count == 140)
        #expect(back.basis == .seed(1234))
        #expect(back.targets == "paper")
        #expect(back.info["provenance"]?["hypernetwork"]?.stringValue == h.fingerprint)
        #expect(back.info["provenance"]?["image_sha256"]?.stringValue == sha)
        #expect(back.info["trigger"]?.stringValue == "sks")
        #expect(back.layers.map { $0.lidb!.downTrain } == preds.map(\.downTrain))
        try back.check(against: base, subjectPath: tmp.file("s.lidb"))
        let summary = try Merger.merge(base: base, subjects: [AppliedSubject(subject: back, weight: 1, path: tmp.file("s.lidb"))], to: tmp.file("merged.lidb"))
        #expect(summary.touchedLayers == 140)
        // The merged weights differ from the base exactly in the target layers.
        let merged = try LidbFile(path: tmp.file("merged.lidb"))
        let name = preds[0].target.weightName
        #expect(try floats(merged, name) != floats(base.file, name))
    }

    @Test func halfPrecisionFileRunsInF32() throws {
        // Weights stored as F16 are widened to f32 on load; predictions move by the weights' rounding only.
        let tmp = TempDir()
        _ = try HypernetworkConverter.convert(weights: Fixtures.path("vit/hyper.safetensors"), config: Fixtures.path("vit/hyper.json"),
                                              to: tmp.file("h16.lidb"), dtype: .F16)
        #expect(try LidbFile(path: tmp.file("h16.lidb")).tensors.allSatisfy { $0.dtype == .F16 })
        let h = try Hypernetwork(path: tmp.file("h16.lidb"))
        let expected = try SafetensorsFile(path: Fixtures.path("vit/expected.safetensors"))
        let preds = try h.predict(pixels: try floats(expected, "pixel_values"))
        let err = relativeError(preds.flatMap(\.downTrain), try floats(expected, "down_train"))
        print("vit with F16 weights: down_train \(err)")
        #expect(err > 0 && err <= 2e-2)
    }

    @Test func fingerprintIsTheHeaderDigest() throws {
        let tmp = TempDir()
        let h = try Self.converted("clip", tmp), v = try Self.converted("vit", tmp)
        let l = try LidbFile(path: tmp.file("clip.lidb"))
        let header = UnsafeRawBufferPointer(rebasing: l.map.bytes[64..<(64 + Int(l.layout.headerStoredLength))])
        #expect(h.fingerprint == SHA256.hash(data: header).map { String(format: "%02x", $0) }.joined())
        #expect(h.fingerprint.count == 64 && h.fingerprint != v.fingerprint)
    }

    @Test func cliConvertGivesTheSameFile() throws {
        // The converter keeps the tensors bit for bit: the file's weights equal the safetensors'.
        let tmp = TempDir()
        _ = try Self.converted("vit", tmp)
        let l = try LidbFile(path: tmp.file("vit.lidb"))
        let s = try SafetensorsFile(path: Fixtures.path("vit/hyper.safetensors"))
        #expect(l.kind == "hypernetwork")
        #expect(l.tensors.map(\.name) == s.tensors.map(\.name))
        for t in s.tensors { #expect(try l.tensorBytes(t.name).array == s.tensorBytes(t.name).array) }
    }
}
