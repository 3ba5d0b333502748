import Foundation
import Testing
@testable import Checkpoint
@testable import SubjectDelta
@testable import TensorFile

/// LoRA files written by diffusers/peft (converters/fixtures/make_lora_fixtures.py) and their
/// weights fused by diffusers' `fuse_lora`.
@Suite(.serialized) struct LoRATests {
    func floats(_ c: TensorCollection, _ n: String) throws -> [Float] { try LoRAInterop.floats(c, n) }

    /// Imports `file`, merges it with `weight` into the tiny SD 1 base and compares every touched
    /// weight with diffusers' fused weights.
    func mergeAndCompare(_ subject: Subject, weight: Float, fused: String, tmp: TempDir, basePath: String) throws -> Float {
        _ = try Merger.merge(base: BaseModel(path: basePath), subjects: [AppliedSubject(subject: subject, weight: weight, path: "lora")], to: tmp.file("m.lidb"))
        let merged = try LidbFile(path: tmp.file("m.lidb")), base = try LidbFile(path: basePath)
        let want = try SafetensorsFile(path: Fixtures.path("lora/" + fused))
        var worst: Float = 0
        #expect(want.tensors.count == subject.layers.count)
        for t in want.tensors {
            let g = try floats(merged, t.name), w = try floats(want, t.name), b = try floats(base, t.name)
            let scale = zip(w, b).map { abs($0 - $1) }.max()! + 1e-30
            for (x, y) in zip(g, w) { worst = max(worst, abs(x - y) / scale) }
        }
        return worst
    }

    @Test(arguments: ["peft.safetensors", "kohya.safetensors"])
    func importedLoRAsMergeLikeFuseLora(file: String) throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp)
        let (subject, report, unknown) = try LoRAInterop.importLoRA(path: Fixtures.path("lora/" + file), base: BaseModel(path: basePath))
        #expect(unknown.isEmpty && report.layers == 136 && report.rank == 4)
        #expect(subject.layers.allSatisfy { $0.lora?.alpha == 8 })
        let e1 = try mergeAndCompare(subject, weight: 1, fused: "fused.safetensors", tmp: tmp, basePath: basePath)
        let e2 = try mergeAndCompare(subject, weight: 0.5, fused: "fused-0.5.safetensors", tmp: tmp, basePath: basePath)
        print("\(file): merged vs diffusers fuse_lora, max |error| / max |ΔW|: \(e1) (scale 1), \(e2) (scale 0.5)")
        #expect(e1 <= 1e-6 && e2 <= 1e-6)
        // Through a subject file and back: the same.
        try subject.write(to: tmp.file("s.lidb"), dtype: .f32)
        let again = try Subject(path: tmp.file("s.lidb"))
        #expect(try mergeAndCompare(again, weight: 1, fused: "fused.safetensors", tmp: tmp, basePath: basePath) <= 1e-6)
    }

    @Test(arguments: LoRAInterop.Format.allCases)
    func exportedLoRAsImportToTheSameWeights(format: LoRAInterop.Format) throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp)
        let (subject, _, _) = try LoRAInterop.importLoRA(path: Fixtures.path("lora/peft.safetensors"), base: BaseModel(path: basePath))
        try LoRAInterop.export(subject, format: format, to: tmp.file("out.safetensors"))
        let (back, report, unknown) = try LoRAInterop.importLoRA(path: tmp.file("out.safetensors"), base: BaseModel(path: basePath))
        #expect(unknown.isEmpty && report.layers == 136)
        #expect(try mergeAndCompare(back, weight: 1, fused: "fused.safetensors", tmp: tmp, basePath: basePath) <= 1e-6)
    }

    @Test func kohyaNamingVariantsAreAccepted() throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp)
        let src = try SafetensorsFile(path: Fixtures.path("lora/kohya.safetensors"))
        for (from, to) in [("lora_te_text_model_", "lora_te1_text_model_"), ("lora_te_text_model_", "lora_te1_"), ("lora_te_text_model_", "lora_te_")] {
            let sources = src.tensors.map { t -> TensorSource in
                var i = t
                if i.name.hasPrefix(from) { i.name = to + i.name.dropFirst(from.count) }
                return .bytes(i, try! src.tensorBytes(t.name))
            }
            try SafetensorsWriter.write(to: tmp.file("v.safetensors"), tensors: sources, metadata: nil)
            let (s, r, _) = try LoRAInterop.importLoRA(path: tmp.file("v.safetensors"), base: BaseModel(path: basePath))
            #expect(r.layers == 136, "\(to)")
            #expect(try mergeAndCompare(s, weight: 1, fused: "fused.safetensors", tmp: tmp, basePath: basePath) <= 1e-6)
        }
    }

    @Test func unknownKeysAreListed() throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp)
        let src = try SafetensorsFile(path: Fixtures.path("lora/kohya.safetensors"))
        var sources = src.tensors.map { TensorSource.bytes($0, try! src.tensorBytes($0.name)) }
        sources.append(.array(TensorInfo(name: "lora_unet_conv_in.lora_down.weight", dtype: .F32, shape: [1]), [0, 0, 0, 0]))
        try SafetensorsWriter.write(to: tmp.file("x.safetensors"), tensors: sources, metadata: nil)
        #expect { _ = try LoRAInterop.importLoRA(path: tmp.file("x.safetensors"), base: BaseModel(path: basePath)) } throws: {
            "\($0)".contains("lora_unet_conv_in.lora_down.weight") && "\($0)".contains("match no layer")
        }
        let (_, r, unknown) = try LoRAInterop.importLoRA(path: tmp.file("x.safetensors"), base: BaseModel(path: basePath), ignoreUnknown: true)
        #expect(r.layers == 136 && unknown == ["lora_unet_conv_in.lora_down.weight"])
    }

    @Test func projectionOntoLiDBBases() throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp)
        let base = try BaseModel(path: basePath)
        // A LoRA that lies in the span of the bases projects with (almost) no error…
        let layers = TargetSet.paper.layers(in: base.file.tensors)
        let lidb = Subject.initialise(layers: layers, rank: 2, a: 3, b: 3, basisSeed: 77, std: 0.3, factorSeed: 4, targetSet: "paper", architecture: "sd1")
        try LoRAInterop.export(lidb, format: .kohya, to: tmp.file("in-span.safetensors"))
        let (imported, _, _) = try LoRAInterop.importLoRA(path: tmp.file("in-span.safetensors"), base: base)
        let (projected, errors) = try LoRAInterop.project(imported, seed: 77, a: 3, b: 3)
        #expect(errors.count == layers.count && errors.allSatisfy { $0.1 < 1e-3 })
        #expect(projected.layers.allSatisfy { $0.lidb != nil && $0.lora == nil })
        // …and a random LoRA onto small bases loses most of its energy, reported per layer.
        let (peft, _, _) = try LoRAInterop.importLoRA(path: Fixtures.path("lora/peft.safetensors"), base: base)
        let (_, errs) = try LoRAInterop.project(peft, seed: 1, a: 2, b: 2)
        #expect(errs.allSatisfy { $0.1 > 0.1 && $0.1 <= 1 })
    }
}
