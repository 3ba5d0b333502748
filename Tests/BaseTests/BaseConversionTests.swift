import Foundation
import Testing
@testable import Checkpoint
@testable import TensorFile

/// Tiny SD 1.x / 2.x pipelines saved by diffusers (converters/fixtures/make_base_fixtures.py).
@Suite(.serialized) struct BaseConversionTests {
    static let safetensorsFolders = ["sd1/diffusers-safetensors", "sd2/diffusers-safetensors", "sd1-inpaint/diffusers-safetensors"]
    /// The same pipelines with PyTorch `.bin` weights (read by the non-executing pickle reader).
    static let allFolders = safetensorsFolders + ["sd1/diffusers-bin", "sd2/diffusers-bin"]

    /// `component.name` → sha256 of the tensor bytes computed by torch.
    static func expectedTensors(_ folder: String) throws -> [String: (dtype: String, shape: [Int], sha: String)] {
        let e = try Fixtures.json(folder + "/expected.json")
        var out: [String: (String, [Int], String)] = [:]
        for (comp, v) in e["components"] as! [String: Any] {
            guard let w = (v as? [String: Any])?["weights"] as? [String: Any], let rows = w["tensors"] as? [[String: Any]] else { continue }
            for r in rows {
                let name = BaseConverter.normalisedComponentName(comp, r["name"] as! String)
                out[comp + "." + name] = (r["dtype"] as! String, r["shape"] as! [Int], r["sha256"] as! String)
            }
        }
        return out
    }

    func convert(_ input: String, _ out: String, options: BaseConvertOptions = .init(), dtype: DType? = nil) throws -> BaseWriteSummary {
        try BaseConverter.write(BaseConverter.plan(input: input, options: options), to: out, dtype: dtype)
    }

    @Test(arguments: allFolders)
    func diffusersFolderConvertsBitExactly(folder: String) throws {
        let tmp = TempDir()
        _ = try convert(Fixtures.path(folder), tmp.file("base.lidb"))
        let base = try BaseModel(path: tmp.file("base.lidb"))
        let expected = try Self.expectedTensors(folder)
        let weights = base.file.tensors.filter { Fingerprint.isFingerprinted($0.name) || $0.name.hasPrefix("vae.") }
        #expect(weights.count == expected.count)
        for t in weights {
            let e = try #require(expected[t.name], "unexpected tensor \(t.name)")
            #expect(t.dtype.name == e.dtype && t.shape == e.shape)
            #expect(sha256Hex(try base.file.tensorBytes(t.name).bytes) == e.sha, "\(t.name)")
        }
        #expect(base.architecture.family == (folder.hasPrefix("sd2") ? .sd2 : .sd1))
        #expect(base.architecture.isInpainting == folder.contains("inpaint"))
        #expect(base.predictionType == (folder.hasPrefix("sd2") ? "v_prediction" : "epsilon"))
        // The tokenizer travels with the base, byte for byte.
        let vocab = try readFile(Fixtures.path(folder + "/tokenizer/vocab.json"))
        #expect(try base.tokenizerFile("vocab.json") == vocab)
        #expect(try LidbFile(path: tmp.file("base.lidb"), checksums: .always).verify().isEmpty)
    }

    @Test(arguments: safetensorsFolders)
    func exportToDiffusersGivesTheOriginalWeights(folder: String) throws {
        let tmp = TempDir()
        _ = try convert(Fixtures.path(folder), tmp.file("base.lidb"))
        try BaseExporter.exportDiffusers(try BaseModel(path: tmp.file("base.lidb")), to: tmp.file("out"))
        let expected = try Self.expectedTensors(folder)
        let reread = try DiffusersCollection(path: tmp.file("out"))
        #expect(reread.tensors.count == expected.count)
        for t in reread.tensors {
            #expect(sha256Hex(try reread.tensorBytes(t.name).bytes) == expected[t.name]?.sha, "\(t.name)")
        }
        for f in ["tokenizer/vocab.json", "tokenizer/merges.txt"] {
            #expect(try readFile(tmp.file("out/" + f)) == (try readFile(Fixtures.path(folder + "/" + f))))
        }
        // An existing non-empty folder is refused, and nothing is left behind on failure.
        #expect(throws: TensorFileError.self) { try BaseExporter.exportDiffusers(try BaseModel(path: tmp.file("base.lidb")), to: tmp.file("out")) }
    }

    @Test(arguments: ["sd1/diffusers-safetensors", "sd2/diffusers-safetensors"])
    func singleFileRoundTripKeepsEveryTensor(folder: String) throws {
        let tmp = TempDir()
        let a = try convert(Fixtures.path(folder), tmp.file("a.lidb"))
        try BaseExporter.exportSingleFile(try BaseModel(path: tmp.file("a.lidb")), to: tmp.file("ldm.safetensors"))
        let ldm = try SafetensorsFile(path: tmp.file("ldm.safetensors"))
        #expect(ldm.tensors.allSatisfy { $0.name.hasPrefix("model.diffusion_model.") || $0.name.hasPrefix("first_stage_model.") || $0.name.hasPrefix("cond_stage_model.") })
        let b = try convert(tmp.file("ldm.safetensors"), tmp.file("b.lidb"), options: .init(configFolder: Fixtures.path(folder)))
        #expect(a.contentFingerprint == b.contentFingerprint && a.layerTableFingerprint == b.layerTableFingerprint)
        let fa = try LidbFile(path: tmp.file("a.lidb")), fb = try LidbFile(path: tmp.file("b.lidb"))
        #expect(fa.tensors == fb.tensors)
        for t in fa.tensors { #expect(try fa.tensorBytes(t.name).array == fb.tensorBytes(t.name).array, "\(t.name)") }
    }

    @Test func castingToF16KeepsTheContentFingerprint() throws {
        let tmp = TempDir()
        let folder = Fixtures.path("sd1/diffusers-safetensors")
        let f32 = try convert(folder, tmp.file("a.lidb"))
        let f16 = try convert(folder, tmp.file("b.lidb"), dtype: .F16)
        #expect(f16.cast > 900)
        #expect(f32.contentFingerprint == f16.contentFingerprint)
        // Re-encoding the f16 base as f32 again: same fingerprint, same layer table.
        let back = try convert(tmp.file("b.lidb"), tmp.file("c.lidb"), dtype: .F32)
        #expect(back.contentFingerprint == f32.contentFingerprint && back.layerTableFingerprint == f32.layerTableFingerprint)
        let base = try BaseModel(path: tmp.file("b.lidb"))
        #expect(base.file.tensors.filter { $0.name.hasPrefix("unet.") }.allSatisfy { $0.dtype == .F16 })
        #expect(base.file.entry("tokenizer.vocab.json")?.encoding == .zstd)
    }

    @Test func detectionNamesWhatIsNotSupported() throws {
        func detect(_ names: [String]) -> String {
            let infos = names.map { TensorInfo(name: $0, dtype: .F32, shape: [4, 4, 3, 3]) }
            do { _ = try Architecture.detectLDM(infos, file: "x.safetensors"); return "ok" } catch { return "\(error)" }
        }
        #expect(detect(["conditioner.embedders.0.transformer.text_model.embeddings.position_ids", "model.diffusion_model.input_blocks.0.0.weight"]).contains("not supported yet: SDXL"))
        #expect(detect(["model.diffusion_model.joint_blocks.0.x"]).contains("not supported yet: SD3"))
        #expect(detect(["foo.weight"]).contains("not a Stable Diffusion checkpoint"))
        #expect(detect(["unet.conv_in.weight"]).contains("diffusers names"))
        #expect(detect(["model.diffusion_model.input_blocks.0.0.weight"]).contains("no text encoder"))
    }

    @Test func brokenFoldersAreRefusedWithTheirProblem() throws {
        let tmp = TempDir()
        let fm = FileManager.default
        try fm.copyItem(atPath: Fixtures.path("sd1/diffusers-safetensors"), toPath: tmp.file("p"))
        try fm.removeItem(atPath: tmp.file("p/unet/diffusion_pytorch_model.safetensors"))
        #expect { _ = try BaseConverter.plan(input: tmp.file("p")) } throws: { e in
            "\(e)".contains("unet") && "\(e)".contains("no weights")
        }
        try fm.createDirectory(atPath: tmp.file("q"), withIntermediateDirectories: true)
        #expect { _ = try BaseConverter.plan(input: tmp.file("q")) } throws: { e in "\(e)".contains("model_index.json") }
    }
}

/// Single-file checkpoints in the LDM layout (written from the same pipelines and checked with
/// diffusers' own `from_single_file` by the fixture generator).
@Suite(.serialized) struct SingleFileConversionTests {
    static let cases: [(file: String, expected: String, folder: String)] = [
        ("sd1/ldm.safetensors", "sd1/ldm.expected.json", "sd1/diffusers-safetensors"),
        ("sd1/ldm.ckpt", "sd1/ldm-ckpt.expected.json", "sd1/diffusers-safetensors"),
        ("sd2/ldm.safetensors", "sd2/ldm.expected.json", "sd2/diffusers-safetensors"),
        ("sd1-inpaint/ldm.safetensors", "sd1-inpaint/ldm.expected.json", "sd1-inpaint/diffusers-safetensors"),
    ]

    func convert(_ input: String, _ out: String, _ options: BaseConvertOptions) throws -> BaseWriteSummary {
        try BaseConverter.write(BaseConverter.plan(input: input, options: options), to: out, dtype: nil)
    }

    @Test(arguments: 0..<4)
    func singleFileGivesTheDiffusersTensors(index: Int) throws {
        let c = Self.cases[index]
        let tmp = TempDir()
        let fromFolder = try convert(Fixtures.path(c.folder), tmp.file("a.lidb"), .init())
        let fromFile = try convert(Fixtures.path(c.file), tmp.file("b.lidb"), .init(configFolder: Fixtures.path(c.folder)))
        #expect(fromFile.contentFingerprint == fromFolder.contentFingerprint)
        #expect(fromFile.layerTableFingerprint == fromFolder.layerTableFingerprint)
        let a = try LidbFile(path: tmp.file("a.lidb")), b = try LidbFile(path: tmp.file("b.lidb"))
        for t in a.tensors {
            #expect(try b.tensorBytes(t.name).array == a.tensorBytes(t.name).array, "\(t.name)")
        }
        // Everything else in the file is kept aside, byte for byte, under its own name.
        let expected = try Fixtures.json(c.expected)
        for row in expected["tensors"] as! [[String: Any]] where row["base"] is NSNull {
            let name = row["name"] as! String
            if name.hasPrefix("model_ema.") { continue }
            #expect(sha256Hex(try b.tensorBytes("extra." + name).bytes) == row["sha256"] as! String, "\(name)")
        }
        #expect(b.tensors.filter { $0.name.hasPrefix("model_ema.") || $0.name.hasPrefix("extra.model_ema.") }.isEmpty)
    }

    @Test(arguments: [0, 2])
    func exportGivesBackTheOriginalFile(index: Int) throws {
        let c = Self.cases[index]
        let tmp = TempDir()
        _ = try convert(Fixtures.path(c.file), tmp.file("b.lidb"), .init(configFolder: Fixtures.path(c.folder)))
        try BaseExporter.exportSingleFile(try BaseModel(path: tmp.file("b.lidb")), to: tmp.file("x.safetensors"))
        #expect(try readFile(tmp.file("x.safetensors")) == (try readFile(Fixtures.path(c.file))))
    }

    @Test func emaWeightsAreTakenWhenAsked() throws {
        let tmp = TempDir()
        let s = try convert(Fixtures.path("sd1/ldm.ckpt"), tmp.file("e.lidb"), .init(ema: true, configFolder: Fixtures.path("sd1/diffusers-safetensors")))
        let ema = (try Fixtures.json("sd1/ldm-ckpt.expected.json"))["ema_unet"] as! [String: String]
        let f = try LidbFile(path: tmp.file("e.lidb"))
        let unet = f.tensors.filter { $0.name.hasPrefix("unet.") }
        #expect(unet.count == ema.count)
        for t in unet {
            #expect(sha256Hex(try f.tensorBytes(t.name).bytes) == ema[String(t.name.dropFirst("unet.".count))], "\(t.name)")
        }
        #expect(!s.contentFingerprint.isEmpty)
        #expect(try BaseModel(path: tmp.file("e.lidb")).metadata["source"]?["ema"] == .bool(true))
        // A file without EMA weights refuses --ema.
        #expect { _ = try BaseConverter.plan(input: Fixtures.path("sd1/ldm.safetensors"), options: .init(ema: true)) } throws: { "\($0)".contains("no EMA") }
    }

    @Test func configsAreReadOffTheTensorsWithoutAFolder() throws {
        let tmp = TempDir()
        let withFolder = try convert(Fixtures.path("sd1/ldm.safetensors"), tmp.file("a.lidb"), .init(configFolder: Fixtures.path("sd1/diffusers-safetensors")))
        let bare = try convert(Fixtures.path("sd1/ldm.safetensors"), tmp.file("b.lidb"), .init())
        #expect(bare.contentFingerprint == withFolder.contentFingerprint)
        let base = try BaseModel(path: tmp.file("b.lidb"))
        let reference = try Fixtures.json("sd1/diffusers-safetensors/unet/config.json")
        #expect(base.config("unet")?["block_out_channels"]?.arrayValue?.compactMap(\.int64Value).map(Int.init) == reference["block_out_channels"] as? [Int])
        #expect(base.config("unet")?["cross_attention_dim"]?.int64Value.map(Int.init) == reference["cross_attention_dim"] as? Int)
        #expect(base.config("text_encoder")?["num_hidden_layers"]?.int64Value == 2)
        let sd2 = try BaseConverter.plan(input: Fixtures.path("sd2/ldm.safetensors"))
        #expect(sd2.metadata["prediction_type"]?.stringValue == "v_prediction")
        #expect(sd2.metadata["components"]?["unet"]?["config"]?["use_linear_projection"] == .bool(true))
    }

    @Test func anotherVAECanReplaceTheCheckpoints() throws {
        let tmp = TempDir()
        // A VAE-only file with bare LDM names (like the community VAE files).
        let ldm = try SafetensorsFile(path: Fixtures.path("sd1/ldm.safetensors"))
        let vae = ldm.tensors.filter { $0.name.hasPrefix("first_stage_model.") }.map { t -> TensorSource in
            var info = t
            info.name = String(t.name.dropFirst("first_stage_model.".count))
            return .bytes(info, try! ldm.tensorBytes(t.name))
        }
        try SafetensorsWriter.write(to: tmp.file("vae.safetensors"), tensors: vae, metadata: nil)
        let folder = Fixtures.path("sd1/diffusers-safetensors")
        let plain = try convert(folder, tmp.file("a.lidb"), .init())
        let swapped = try convert(folder, tmp.file("b.lidb"), .init(vae: tmp.file("vae.safetensors")))
        let fromDir = try convert(folder, tmp.file("c.lidb"), .init(vae: folder + "/vae"))
        #expect(plain.contentFingerprint == swapped.contentFingerprint && plain.contentFingerprint == fromDir.contentFingerprint)
        let a = try LidbFile(path: tmp.file("a.lidb")), b = try LidbFile(path: tmp.file("b.lidb"))
        for t in a.tensors where t.name.hasPrefix("vae.") { #expect(try a.tensorBytes(t.name).array == b.tensorBytes(t.name).array) }
        // A VAE that does not fit is refused, naming the problem: a missing tensor, a wrong shape.
        try SafetensorsWriter.write(to: tmp.file("short.safetensors"), tensors: Array(vae.dropLast()), metadata: nil)
        #expect { _ = try BaseConverter.plan(input: folder, options: .init(vae: tmp.file("short.safetensors"))) } throws: { "\($0)".contains("does not match the model") }
        var reshaped = vae
        let last = reshaped.removeLast()
        var info = last.info
        info.shape = [info.elementCount]
        reshaped.append(.bytes(info, try ldm.tensorBytes("first_stage_model." + last.info.name)))
        try SafetensorsWriter.write(to: tmp.file("shape.safetensors"), tensors: reshaped, metadata: nil)
        #expect { _ = try BaseConverter.plan(input: folder, options: .init(vae: tmp.file("shape.safetensors"))) } throws: { "\($0)".contains("where the model has") }
    }
}
