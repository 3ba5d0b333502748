import Foundation
import Testing
@testable import Checkpoint
@testable import TensorFile

/// CLIP's tokenizer compiled into lidb: single-file checkpoints (which carry none) convert to bases
/// with a tokenizer when their text encoder has CLIP's 49,408-token vocabulary.
@Suite struct EmbeddedTokenizerTests {
    static let samples = Fixtures.repo + "/samples/clip-tokenizer"
    static let layouts = Fixtures.repo + "/Tests/DiffusionTests/Fixtures/tokenizer"

    static func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    /// The LDM fixture `name` (sd1, sd2) with its token embedding grown to `rows` rows (row i is
    /// the original's row i mod n), as every released SD 1.x/2.x checkpoint has 49,408.
    static func singleFile(_ name: String, rows: Int = EmbeddedTokenizer.vocabularySize, to path: String) throws {
        let src = try SafetensorsFile(path: Fixtures.path(name + "/ldm.safetensors"))
        let key = name == "sd2" ? "cond_stage_model.model.token_embedding.weight"
                                : "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
        var sources: [TensorSource] = []
        for t in src.tensors {
            let data = try src.tensorBytes(t.name)
            guard t.name == key else { sources.append(.bytes(t, data)); continue }
            let n = t.shape[0], rowBytes = data.count / n
            var info = t
            info.shape[0] = rows
            let owned = OwnedBytes(count: rows * rowBytes)
            for i in 0..<rows {
                let from = UnsafeRawBufferPointer(rebasing: data.bytes[(i % n * rowBytes)..<((i % n + 1) * rowBytes)])
                UnsafeMutableRawBufferPointer(rebasing: owned.buffer[(i * rowBytes)..<((i + 1) * rowBytes)]).copyMemory(from: from)
            }
            sources.append(.bytes(info, TensorBytes(owned: owned)))
        }
        try #require(sources.contains { $0.info.name == key })
        try SafetensorsWriter.write(to: path, tensors: sources, metadata: nil)
    }

    @Test func embeddedFilesAreTheSamples() throws {
        #expect(try EmbeddedTokenizer.vocabJSON() == Self.bytes(Self.samples + "/vocab.json"))
        #expect(try EmbeddedTokenizer.mergesText() == Self.bytes(Self.samples + "/merges.txt"))
        // The configurations are the released pipelines' (the generator's sd1/sd2 layouts, whose ids
        // transformers gave): SD 1 pads with <|endoftext|>, SD 2 with "!".
        for family in [Architecture.Family.sd1, .sd2] {
            let dir = Self.layouts + "/" + family.rawValue
            #expect(EmbeddedTokenizer.tokenizerConfigJSON(family) == (try Self.bytes(dir + "/tokenizer_config.json")))
            #expect(EmbeddedTokenizer.specialTokensMapJSON(family) == (try Self.bytes(dir + "/special_tokens_map.json")))
        }
    }

    @Test(arguments: ["sd1", "sd2"])
    func singleFileGetsTheEmbeddedTokenizer(name: String) throws {
        let tmp = TempDir()
        try Self.singleFile(name, to: tmp.file("model.safetensors"))
        let plan = try BaseConverter.plan(input: tmp.file("model.safetensors"))
        #expect(plan.warnings.isEmpty, "\(plan.warnings)")
        #expect(plan.tokenizerOrigin == "built-in")
        let family = try #require(Architecture.Family(rawValue: name))
        #expect(try plan.tokenizerFiles == EmbeddedTokenizer.files(family))
        _ = try BaseConverter.write(plan, to: tmp.file("base.lidb"), dtype: nil)
        let base = try BaseModel(path: tmp.file("base.lidb"))
        #expect(try base.tokenizerFile("vocab.json") == Self.bytes(Self.samples + "/vocab.json"))
        #expect(try base.tokenizerFile("tokenizer_config.json") == EmbeddedTokenizer.tokenizerConfigJSON(family))
        let component = base.file.metadata["components"]?["tokenizer"]
        #expect(component?["origin"]?.stringValue == "built-in")
        #expect(component?["files"]?.arrayValue?.count == 4)
        // Tokenizer files sit after the weights, before the extras (spec/base.md §1).
        let names = base.file.tensors.map(\.name)
        let firstTokenizer = try #require(names.firstIndex { $0.hasPrefix("tokenizer.") })
        #expect(names[..<firstTokenizer].allSatisfy { !$0.hasPrefix("extra.") })
        #expect(names[firstTokenizer...].allSatisfy { $0.hasPrefix("tokenizer.") || $0.hasPrefix("extra.") })
    }

    @Test func aVocabularyOfAnotherSizeGetsNoTokenizerAndAWarning() throws {
        // The tiny fixture's text encoder has 614 tokens: CLIP's ids would run past its embedding.
        let plan = try BaseConverter.plan(input: Fixtures.path("sd1/ldm.safetensors"))
        #expect(!plan.tensorNames.contains { $0.hasPrefix("tokenizer.") })
        #expect(plan.tokenizerOrigin == nil)
        let w = plan.warnings.joined(separator: "\n")
        #expect(w.contains("has no tokenizer, so") && w.contains("614 tokens") && w.contains("49408") && w.contains("--config"), "\(w)")
        let tmp = TempDir()
        try Self.singleFile("sd1", rows: EmbeddedTokenizer.vocabularySize + 1, to: tmp.file("bigger.safetensors"))
        let bigger = try BaseConverter.plan(input: tmp.file("bigger.safetensors"))
        #expect(bigger.tokenizerOrigin == nil && bigger.warnings.contains { $0.contains("49409 tokens") })
    }

    @Test func configFolderStillOverrides() throws {
        let tmp = TempDir()
        try Self.singleFile("sd1", to: tmp.file("model.safetensors"))
        let folder = Fixtures.path("sd1/diffusers-safetensors")
        let plan = try BaseConverter.plan(input: tmp.file("model.safetensors"), options: .init(configFolder: folder))
        #expect(plan.warnings.isEmpty && plan.tokenizerOrigin == nil)
        #expect(try plan.tokenizerFiles["vocab.json"] == Self.bytes(folder + "/tokenizer/vocab.json"))
        // A --config folder without a tokenizer: the built-in one, with a note saying so.
        let noTokenizer = tmp.file("config")
        try FileManager.default.copyItem(atPath: folder, toPath: noTokenizer)
        try FileManager.default.removeItem(atPath: noTokenizer + "/tokenizer")
        let fallback = try BaseConverter.plan(input: tmp.file("model.safetensors"), options: .init(configFolder: noTokenizer))
        #expect(fallback.tokenizerOrigin == "built-in")
        #expect(fallback.warnings.contains { $0.contains("has no tokenizer files") } && fallback.warnings.contains { $0.contains("built-in CLIP tokenizer") })
        // An incomplete tokenizer/ is named, not stored half.
        try FileManager.default.createDirectory(atPath: noTokenizer + "/tokenizer", withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: folder + "/tokenizer/vocab.json", toPath: noTokenizer + "/tokenizer/vocab.json")
        let partial = try BaseConverter.plan(input: tmp.file("model.safetensors"), options: .init(configFolder: noTokenizer))
        #expect(partial.warnings.contains { $0.contains("has vocab.json but neither tokenizer.json nor vocab.json with merges.txt") })
        #expect(try partial.tokenizerFiles == EmbeddedTokenizer.files(.sd1))
    }

    @Test func diffusersFolderWithoutTokenizerWarns() throws {
        let tmp = TempDir()
        let folder = tmp.file("pipeline")
        try FileManager.default.copyItem(atPath: Fixtures.path("sd2/diffusers-safetensors"), toPath: folder)
        try FileManager.default.removeItem(atPath: folder + "/tokenizer")
        let plan = try BaseConverter.plan(input: folder)
        #expect(plan.tokenizerOrigin == nil && !plan.tensorNames.contains { $0.hasPrefix("tokenizer.") })
        #expect(plan.warnings.contains { $0.contains("/tokenizer has no tokenizer files") })
        #expect(plan.warnings.contains { $0.contains("has no tokenizer, so") && $0.contains("614 tokens") })
    }

    @Test func rebasingABaseWithoutTokenizerAddsTheEmbeddedOne() throws {
        // A base converted before lidb embedded the vocabulary: re-converting it completes it and
        // keeps its fingerprints.
        let tmp = TempDir()
        try Self.singleFile("sd2", to: tmp.file("model.safetensors"))
        var plan = try BaseConverter.plan(input: tmp.file("model.safetensors"))
        plan.tensors.removeAll { $0.info.name.hasPrefix("tokenizer.") }
        plan.metadata = plan.metadata.setting("components", (plan.metadata["components"] ?? .null).removing("tokenizer"))
        let old = try BaseConverter.write(plan, to: tmp.file("old.lidb"), dtype: nil)
        let rebased = try BaseConverter.plan(input: tmp.file("old.lidb"))
        #expect(rebased.tokenizerOrigin == "built-in" && rebased.warnings.isEmpty)
        let new = try BaseConverter.write(rebased, to: tmp.file("new.lidb"), dtype: nil)
        #expect(new.layerTableFingerprint == old.layerTableFingerprint && new.contentFingerprint == old.contentFingerprint)
        let base = try BaseModel(path: tmp.file("new.lidb"))
        #expect(try base.tokenizerFile("special_tokens_map.json") == EmbeddedTokenizer.specialTokensMapJSON(.sd2))
        let names = base.file.tensors.map(\.name)
        let lastTokenizer = try #require(names.lastIndex { $0.hasPrefix("tokenizer.") })
        #expect(names[(lastTokenizer + 1)...].allSatisfy { $0.hasPrefix("extra.") })
    }
}
