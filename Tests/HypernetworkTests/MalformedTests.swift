import Foundation
import Testing
@testable import Checkpoint
@testable import Hypernetwork
@testable import SubjectDelta
@testable import TensorFile

/// Malformed hypernetwork files and configs are refused with typed errors naming the problem.
@Suite struct MalformedTests {
    func problem(_ name: String = "clip", config: (JSONValue) -> JSONValue = { $0 },
                 tensors: ([TensorSource]) -> [TensorSource] = { $0 }) throws -> HypernetworkError.Problem? {
        let tmp = TempDir()
        try writeHypernetwork(name, to: tmp.file("h.lidb"), config: config, tensors: tensors)
        return loadError(tmp.file("h.lidb"))?.problem
    }

    func invalidField(_ p: HypernetworkError.Problem?) -> String? {
        if case let .invalidConfig(field, _) = p { return field }
        return nil
    }

    @Test func intactFixtureLoads() throws {
        #expect(try problem() == nil)
        #expect(try problem("vit") == nil)
    }

    @Test func missingExtraAndMisShapedTensors() throws {
        let missing = "image_encoder.encoder.layers.1.mlp.fc2.bias"
        #expect(try problem(tensors: { $0.filter { $0.info.name != missing } }) == .missingTensor(missing))
        #expect(try problem(tensors: { $0 + [.array(TensorInfo(name: "heads.140.weight", dtype: .F32, shape: [1]), [0, 0, 0, 0])] })
                == .unexpectedTensor("heads.140.weight"))
        // Same bytes, wrong shape: the transposed projection.
        #expect(try problem(tensors: { $0.map { s in
            guard s.info.name == "image_proj.weight" else { return s }
            var t = s; t.info.shape = [s.info.shape[1], s.info.shape[0]]; return t
        } }) == .wrongShape(tensor: "image_proj.weight", expected: [32, 48], actual: [48, 32]))
        #expect(try problem(tensors: { $0.map { s in
            guard s.info.name == "weight_pos" else { return s }
            var t = s; t.info.dtype = .I32; return t
        } }) == .unsupportedDType(tensor: "weight_pos", dtype: "I32"))
    }

    @Test func inconsistentConfigs() throws {
        #expect(invalidField(try problem(config: { $0.setting(path: ["encoder", "num_attention_heads"], .int(5)) })) == "encoder.num_attention_heads")
        #expect(invalidField(try problem(config: { $0.setting(path: ["decoder", "num_heads"], .int(3)) })) == "decoder.num_heads")
        #expect(invalidField(try problem(config: { $0.setting(path: ["encoder", "num_hidden_layers"], .int(0)) })) == "encoder.num_hidden_layers")
        #expect(invalidField(try problem(config: { $0.setting(path: ["decoder", "num_layers"], .int(0)) })) == "decoder.num_layers")
        #expect(invalidField(try problem(config: { $0.setting(path: ["decoder", "iterations"], .int(0)) })) == "decoder.iterations")
        #expect(invalidField(try problem(config: { $0.setting(path: ["decoder", "weight_tokens"], .int(139)) })) == "decoder.weight_tokens")
        #expect(invalidField(try problem(config: { $0.setting(path: ["encoder", "patch_size"], .int(5)) })) == "encoder.patch_size")
        #expect(invalidField(try problem(config: { $0.setting(path: ["encoder", "hidden_act"], .string("relu")) })) == "encoder.hidden_act")
        #expect(invalidField(try problem(config: { $0.setting(path: ["subject", "rank"], .int(0)) })) == "subject.rank")
        #expect(invalidField(try problem(config: { $0.setting(path: ["targets", "fingerprint"], .string(String(repeating: "0", count: 64))) })) == "targets.fingerprint")
        #expect(try problem(config: { $0.setting("lidb_hypernetwork", .int(2)) }) == .unsupportedSchema("2"))
        // A config that is consistent in itself but describes another model: its tensors do not fit.
        #expect(try problem(config: { $0.setting(path: ["decoder", "intermediate_size"], .int(65)) })
                == .wrongShape(tensor: "decoder.layers.0.linear1.weight", expected: [65, 32], actual: [64, 32]))
        #expect(try problem(config: { $0.setting(path: ["encoder", "num_hidden_layers"], .int(3)) })
                == .missingTensor("image_encoder.encoder.layers.2.self_attn.q_proj.weight"))
    }

    @Test func badPreprocessing() throws {
        func isPreprocessing(_ p: HypernetworkError.Problem?) -> Bool { if case .invalidPreprocessing = p { return true }; return false }
        let cases: [(JSONValue) -> JSONValue] = [
            { $0.setting("preprocessing", .string("clip")) },
            { $0.setting(path: ["preprocessing", "do_flip"], .bool(true)) },
            { $0.setting("preprocessing", $0["preprocessing"]!.removing("image_std")) },
            { $0.setting(path: ["preprocessing", "resample"], .string("nearest")) },
            { $0.setting(path: ["preprocessing", "image_mean"], .array([.double(0.5), .double(0.5)])) },
            { $0.setting(path: ["preprocessing", "image_std"], .array([.double(0.5), .double(0), .double(0.5)])) },
            { $0.setting(path: ["preprocessing", "rescale_factor"], .double(1)) },
            { $0.setting(path: ["preprocessing", "crop_size"], .object([("height", .int(64)), ("width", .int(64))])) },
            // Shortest edge without a crop has no fixed output size.
            { $0.setting(path: ["preprocessing", "crop_size"], .null) },
        ]
        for (i, edit) in cases.enumerated() {
            let p = try problem(config: edit)
            #expect(isPreprocessing(p), "case \(i): \(String(describing: p))")
        }
        // The plain-ViT preset: fixed height × width, no crop, is valid.
        #expect(try problem("vit") == nil)
    }

    @Test func wrongKindAndDamagedFile() throws {
        let tmp = TempDir()
        let src = try SafetensorsFile(path: Fixtures.path("clip/hyper.safetensors"))
        try LidbWriter.write(to: tmp.file("t.lidb"), kind: "tensors", metadata: try fixtureConfig("clip"),
                             tensors: try src.tensors.map { .bytes($0, try src.tensorBytes($0.name)) })
        #expect(loadError(tmp.file("t.lidb"))?.problem == .wrongKind("tensors"))
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: tmp.file("t.lidb"))))
        bytes[bytes.count - 3] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: tmp.file("d.lidb")))
        guard case let .file(e) = loadError(tmp.file("d.lidb"))?.problem, case .tensorChecksumMismatch = e.problem else {
            Issue.record("a flipped bit must be reported as a checksum mismatch"); return
        }
    }

    @Test func converterRefusesMismatchesAndWritesNothing() throws {
        let tmp = TempDir()
        let cfg = try fixtureConfig("clip").setting(path: ["decoder", "iterations"], .int(0))
        try Data(cfg.serializedString.utf8).write(to: URL(fileURLWithPath: tmp.file("bad.json")))
        func convertError(_ json: String) -> HypernetworkError? {
            do throws(HypernetworkError) {
                _ = try HypernetworkConverter.convert(weights: Fixtures.path("clip/hyper.safetensors"), config: json, to: tmp.file("out.lidb"))
                return nil
            } catch { return error }
        }
        #expect(convertError(tmp.file("bad.json"))?.problem == .invalidConfig(field: "decoder.iterations", reason: "0 is outside 1…64"))
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out.lidb")))
        // Weights of the other configuration do not fit this config.
        let other = try fixtureConfig("vit")
        try Data(other.serializedString.utf8).write(to: URL(fileURLWithPath: tmp.file("vit.json")))
        if case .unexpectedTensor = convertError(tmp.file("vit.json"))?.problem {} else { Issue.record("clip weights with the vit config must be refused") }
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out.lidb")))
        try Data("{\"lidb_hypernetwork\": 1,".utf8).write(to: URL(fileURLWithPath: tmp.file("broken.json")))
        if case .file = convertError(tmp.file("broken.json"))?.problem {} else { Issue.record("invalid JSON must be refused") }
    }

    @Test func targetTableMustMatchTheBase() throws {
        let tmp = TempDir()
        let base = try BaseModel(path: try tinyBase(tmp))
        func bindingProblem(_ edit: @escaping (JSONValue) -> JSONValue) throws -> HypernetworkError.Problem? {
            try writeHypernetwork("clip", to: tmp.file("h.lidb"), config: edit)
            let h = try Hypernetwork(path: tmp.file("h.lidb"))
            do throws(HypernetworkError) { try h.checkTargets(against: base); return nil } catch { return error.problem }
        }
        #expect(try bindingProblem { $0 } == nil)
        // Edit layer 7 of the table (name or shape; clamped sizes unchanged) and re-fingerprint it.
        func editLayer(_ json: JSONValue, at index: Int = 7, _ f: (TargetLayer) -> TargetLayer) -> JSONValue {
            let rows = json["targets"]!["layers"]!.arrayValue!
            var layers = rows.map { row -> TargetLayer in
                let shape = row["shape"]!.arrayValue!
                return TargetLayer(name: row["name"]!.stringValue!, out: Int(shape[0].int64Value!), in: Int(shape[1].int64Value!))
            }
            layers[index] = f(layers[index])
            let newRows: [JSONValue] = layers.map { .object([("name", .string($0.name)), ("shape", .array([.int($0.out), .int($0.inDim)]))]) }
            return json.setting(path: ["targets", "layers"], .array(newRows)).setting(path: ["targets", "fingerprint"], .string(layers.tableFingerprint))
        }
        let original = try fixtureConfig("clip")["targets"]!["layers"]!.arrayValue![7]["name"]!.stringValue!
        let renamed = try bindingProblem { editLayer($0) { l in TargetLayer(name: l.name + "x", out: l.out, in: l.inDim) } }
        #expect(renamed == .targetsMismatch(layer: original + "x", reason: "layer 7 of the base's table is '\(original)'"))
        // A layer wide enough that a and b stay clamped the same (its head keeps its shape).
        let rows = try fixtureConfig("clip")["targets"]!["layers"]!.arrayValue!
        let wide = rows.firstIndex { $0["shape"]!.arrayValue!.allSatisfy { $0.int64Value! >= 8 } }!
        let wideName = rows[wide]["name"]!.stringValue!
        let reshaped = try bindingProblem { editLayer($0, at: wide) { l in TargetLayer(name: l.name, out: l.out + 1, in: l.inDim) } }
        if case let .targetsMismatch(layer, reason) = reshaped {
            #expect(layer == wideName)
            #expect(reason.contains("the base has"))
        } else { Issue.record("shape change not refused: \(String(describing: reshaped))") }
        #expect(try bindingProblem { $0.setting(path: ["targets", "architecture"], .string("sd2")) } == .architectureMismatch(hypernetwork: "sd2", base: "sd1"))
        // A subject is not built for a base that does not match.
        try writeHypernetwork("clip", to: tmp.file("h2.lidb"), config: { $0.setting(path: ["targets", "architecture"], .string("sd2")) })
        let h = try Hypernetwork(path: tmp.file("h2.lidb"))
        let preds = h.config.layers.enumerated().map { i, t in
            LayerPrediction(target: t, rank: 1, a: h.config.layerDims[i].a, b: h.config.layerDims[i].b,
                            downTrain: .init(repeating: 0, count: h.config.layerDims[i].down), upTrain: .init(repeating: 0, count: h.config.layerDims[i].up))
        }
        do throws(HypernetworkError) {
            _ = try h.subject(from: preds, for: base, provenance: SubjectProvenance(imageSHA256: String(repeating: "0", count: 64)))
            Issue.record("subject built for a mismatching base")
        } catch { #expect(error.problem == .architectureMismatch(hypernetwork: "sd2", base: "sd1")) }
    }

    @Test func badInputs() throws {
        let tmp = TempDir()
        try writeHypernetwork("vit", to: tmp.file("h.lidb"))
        let h = try Hypernetwork(path: tmp.file("h.lidb"))
        func inputProblem(_ pixels: [Float]) -> HypernetworkError.Problem? {
            do throws(HypernetworkError) { _ = try h.predict(pixels: pixels); return nil } catch { return error.problem }
        }
        if case .invalidInput = inputProblem([Float](repeating: 0, count: 10)) {} else { Issue.record("wrong pixel count accepted") }
        var nan = [Float](repeating: 0, count: 3 * 28 * 28); nan[5] = .nan
        if case .invalidInput = inputProblem(nan) {} else { Issue.record("NaN pixels accepted") }
    }
}
