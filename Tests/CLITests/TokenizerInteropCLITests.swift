import Foundation
import Testing
@testable import TensorFile

/// The tokenizer through the CLI: single-file checkpoints convert to complete bases (lidb's
/// built-in CLIP tokenizer) and generate; transformers-5 folders (tokenizer.json only) convert,
/// tokenize as transformers does, and generate; bases without a tokenizer are announced loudly.
@Suite(.serialized) struct TokenizerInteropCLITests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let tokenizerFixtures = repo + "/Tests/DiffusionTests/Fixtures/tokenizer"
    static let clipVocabularySize = 49_408

    static func json(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    /// The LDM fixture `name` with its token embedding grown to `rows` rows (row i is the
    /// original's row i mod n), as every released SD 1.x/2.x checkpoint has 49,408.
    static func singleFile(_ name: String, rows: Int = clipVocabularySize, to path: String) throws {
        let src = try SafetensorsFile(path: baseFixtures + "/\(name)/ldm.safetensors")
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

    /// `lidb tokenize --json` of `texts`.
    static func tokenize(_ base: String, _ texts: [String]) throws -> [[Int]] {
        let r = try CLI.run(["tokenize", "--model", base, "--json", "--"] + texts)
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(rows.count == texts.count)
        return rows.map { $0["ids"] as? [Int] ?? [] }
    }

    static func generate(_ base: String, _ out: String) throws -> CLI.Result {
        try CLI.run(["generate", "--model", base, "--prompt", "a photo of sks cat, it's 4K!", "--negative-prompt", "blurry",
                     "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "-o", out])
    }

    static func isPNG(_ path: String) -> Bool {
        (try? Data(contentsOf: URL(fileURLWithPath: path)))?.starts(with: [0x89, 0x50, 0x4E, 0x47]) == true
    }

    @Test(arguments: ["sd1", "sd2"])
    func singleFileConvertsToACompleteBase(name: String) throws {
        let s = Scratch()
        try Self.singleFile(name, to: s.file("model.safetensors"))
        let r = try CLI.run(["convert", s.file("model.safetensors"), "-o", s.file("base.lidb")])
        #expect(r.status == 0 && !r.stderr.contains("warning"), "\(r.stderr)")
        // The ids are transformers' CLIPTokenizer's for the released SD 1 / SD 2 tokenizer folders
        // (SD 2 splits "!" out as its pad token): a sample of the fixture texts, every 40th, plus
        // every text with "!" among the first 400.
        let cases = try #require(try Self.json(Self.tokenizerFixtures + "/cases.json")["cases"] as? [[String: Any]])
        var texts: [String] = [], expected: [[Int]] = []
        for (i, c) in cases.enumerated() {
            guard let text = c["text"] as? String, let ids = c["ids"] as? [String: [Int]], !text.contains("\u{0}") else { continue }
            guard i % 40 == 0 || (i < 400 && text.contains("!")) else { continue }
            texts.append(text)
            expected.append(try #require(ids[name] ?? ids["sd1"]))
        }
        #expect(texts.count >= 60)
        let got = try Self.tokenize(s.file("base.lidb"), texts)
        for (i, t) in texts.enumerated() where got[i] != expected[i] {
            Issue.record("\(t.debugDescription): expected \(expected[i]), got \(got[i])")
        }
        #expect(s.contents == ["base.lidb", "model.safetensors"])
    }

    @Test(arguments: ["sd1", "sd2"])
    func singleFileWithTheBuiltInTokenizerGenerates(name: String) throws {
        // The tiny fixtures use 2 groups in their group norms and 2-channel attention heads, which
        // no tensor shape shows (released checkpoints use the released values lidb assumes), so
        // their configuration comes from a folder; that folder has no tokenizer/, so the tokenizer
        // is lidb's own, and the text encoder's vocabulary is CLIP's 49,408 tokens.
        let s = Scratch()
        try Self.singleFile(name, to: s.file("model.safetensors"))
        let config = s.file("config")
        try FileManager.default.copyItem(atPath: baseFixtures + "/\(name)/diffusers-safetensors", toPath: config)
        try FileManager.default.removeItem(atPath: config + "/tokenizer")
        var text = try Self.json(config + "/text_encoder/config.json")
        text["vocab_size"] = Self.clipVocabularySize
        try JSONSerialization.data(withJSONObject: text).write(to: URL(fileURLWithPath: config + "/text_encoder/config.json"))
        var r = try CLI.run(["convert", s.file("model.safetensors"), "--config", config, "-o", s.file("base.lidb")])
        #expect(r.status == 0 && r.stderr.contains("using lidb's built-in CLIP tokenizer") && !r.stderr.contains("has no tokenizer, so"), "\(r.stderr)")
        r = try CLI.run(["inspect", s.file("base.lidb"), "--json"])
        #expect(r.stdout.contains("\"origin\":\"built-in\""), "\(r.stdout.prefix(300))")
        r = try Self.generate(s.file("base.lidb"), s.file("out.png"))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Self.isPNG(s.file("out.png")))
        #expect(s.contents == ["base.lidb", "config", "model.safetensors", "out.png"])
    }

    @Test func singleFileWhoseVocabularyDoesNotFitIsAnnouncedLoudly() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", baseFixtures + "/sd1/ldm.safetensors", "-o", s.file("base.lidb")])
        #expect(r.status == 0)
        let warnings = r.stderr.split(separator: "\n").filter { $0.hasPrefix("lidb: warning: ") }
        #expect(warnings.contains { $0.contains("has no tokenizer, so") && $0.contains("614 tokens") && $0.contains("--config") }, "\(r.stderr)")
        // Tokenizing needs nothing but the tokenizer (generating would first refuse this tiny
        // checkpoint's inferred UNet config: its head count does not divide its channels).
        r = try CLI.run(["tokenize", "--model", s.file("base.lidb"), "a photo of sks face"])
        #expect(r.status == 2 && r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("no tokenizer"), "\(r.stderr)")
        #expect(s.contents == ["base.lidb"])
        // Re-converting that base cannot complete it either (the vocabulary still does not fit), and says so.
        r = try CLI.run(["convert", s.file("base.lidb"), "-o", s.file("again.lidb")])
        #expect(r.status == 0 && r.stderr.contains("has no tokenizer, so"), "\(r.stderr)")
    }

    @Test func configFolderStillOverridesTheBuiltInTokenizer() throws {
        let s = Scratch()
        try Self.singleFile("sd1", to: s.file("model.safetensors"))
        let folder = baseFixtures + "/sd1/diffusers-safetensors"
        let r = try CLI.run(["convert", s.file("model.safetensors"), "--config", folder, "-o", s.file("base.lidb")])
        #expect(r.status == 0 && !r.stderr.contains("warning"), "\(r.stderr)")
        let tiny = try #require(try Self.json(Self.tokenizerFixtures + "/tiny.json")["sd1"] as? [String: Any])
        let cases = try #require(tiny["cases"] as? [[String: Any]])
        let texts = cases.compactMap { $0["text"] as? String }
        #expect(try Self.tokenize(s.file("base.lidb"), texts) == cases.compactMap { $0["ids"] as? [Int] })
    }

    /// A copy of the tiny diffusers fixture whose tokenizer/ holds only what transformers 5 saves.
    static func transformers5Folder(_ tokenizer: String, in s: Scratch) throws -> String {
        let name = tokenizer.hasPrefix("sd2") ? "sd2" : "sd1"
        let folder = s.file("pipeline")
        try FileManager.default.copyItem(atPath: baseFixtures + "/\(name)/diffusers-safetensors", toPath: folder)
        try FileManager.default.removeItem(atPath: folder + "/tokenizer")
        try FileManager.default.copyItem(atPath: Self.tokenizerFixtures + "/tiny-json/" + tokenizer, toPath: folder + "/tokenizer")
        return folder
    }

    @Test(arguments: ["sd1", "sd1-strings", "sd2", "sd2-strings"])
    func transformers5FolderConvertsTokenizesAndGenerates(tokenizer: String) throws {
        let s = Scratch()
        let folder = try Self.transformers5Folder(tokenizer, in: s)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder + "/tokenizer").sorted() == ["tokenizer.json", "tokenizer_config.json"])
        var r = try CLI.run(["convert", folder, "-o", s.file("base.lidb")])
        #expect(r.status == 0 && !r.stderr.contains("warning"), "\(r.stderr)")
        let entry = try #require(try Self.json(Self.tokenizerFixtures + "/tiny.json")[String(tokenizer.prefix(3)) + "-json"] as? [String: Any])
        let cases = try #require(entry["cases"] as? [[String: Any]])
        let texts = cases.compactMap { $0["text"] as? String }
        #expect(texts.count >= 20)
        #expect(try Self.tokenize(s.file("base.lidb"), texts) == cases.compactMap { $0["ids"] as? [Int] })
        r = try Self.generate(s.file("base.lidb"), s.file("out.png"))
        #expect(r.status == 0 && Self.isPNG(s.file("out.png")), "\(r.stderr)")
        // The diffusers export gives the tokenizer back as it came.
        r = try CLI.run(["export", s.file("base.lidb"), "--format", "diffusers", "-o", s.file("export")])
        #expect(r.status == 0, "\(r.stderr)")
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            #expect(FileManager.default.contentsEqual(atPath: s.file("export/tokenizer/" + f), andPath: folder + "/tokenizer/" + f))
        }
        #expect(!FileManager.default.fileExists(atPath: s.file("export/tokenizer/vocab.json")))
    }

    @Test func malformedTokenizerJSONIsRefusedWithOneLineAndNoOutput() throws {
        let mutations: [(String, (inout [String: Any]) -> Void)] = [
            ("model.type", { j in var m = j["model"] as! [String: Any]; m["type"] = "WordPiece"; j["model"] = m }),
            ("model.vocab['a']", { j in var m = j["model"] as! [String: Any]; var v = m["vocab"] as! [String: Any]; v["a"] = 1.5; m["vocab"] = v; j["model"] = m }),
            ("missing field 'model.vocab'", { j in var m = j["model"] as! [String: Any]; m["vocab"] = nil; j["model"] = m }),
            ("is given to both", { j in var m = j["model"] as! [String: Any]; var v = m["vocab"] as! [String: Any]; v["a"] = v["b"]; m["vocab"] = v; j["model"] = m }),
            ("model.merges[0]", { j in var m = j["model"] as! [String: Any]; m["merges"] = [["a", "b", "c"]]; j["model"] = m }),
            ("'normalizer'", { j in j["normalizer"] = NSNull() }),
        ]
        for (word, mutate) in mutations {
            let s = Scratch()
            let folder = try Self.transformers5Folder("sd1", in: s)
            let path = folder + "/tokenizer/tokenizer.json"
            var j = try Self.json(path)
            mutate(&j)
            try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: path))
            let r = try CLI.run(["convert", folder, "-o", s.file("base.lidb")])
            #expect(r.status == 2, "\(word): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(path) && r.stderr.contains(word), "\(r.stderr)")
            #expect(s.contents == ["pipeline"], "\(word): \(s.contents)")
        }
    }
}
