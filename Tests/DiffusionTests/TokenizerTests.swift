import Foundation
import Testing
import Checkpoint
import Diffusion
import TensorFile

/// transformers' CLIPTokenizer ids for CLIP's real vocabulary (samples/clip-tokenizer) and for the
/// tiny tokenizers of the base fixtures (converters/fixtures/make_tokenizer_fixtures.py).
@Suite struct TokenizerTests {
    static let layouts = ["sd1", "sd2", "sd1-decoder", "flags", "extra", "none"]

    static func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }
    static func optionalBytes(_ path: String) throws -> [UInt8]? {
        FileManager.default.fileExists(atPath: path) ? try bytes(path) : nil
    }

    static let vocab: [UInt8] = (try? bytes(DiffusionFixtures.repo + "/samples/clip-tokenizer/vocab.json")) ?? []
    static let merges: [UInt8] = (try? bytes(DiffusionFixtures.repo + "/samples/clip-tokenizer/merges.txt")) ?? []

    static func config(_ layout: String) throws -> CLIPTokenizer.Config {
        let dir = DiffusionFixtures.path("tokenizer/" + layout)
        return try CLIPTokenizer.Config(tokenizerConfigJSON: optionalBytes(dir + "/tokenizer_config.json"),
                                        specialTokensMapJSON: optionalBytes(dir + "/special_tokens_map.json"))
    }

    static func tokenizer(_ layout: String) throws -> CLIPTokenizer {
        try CLIPTokenizer(vocabJSON: vocab, merges: merges, config: config(layout))
    }

    static func cases() throws -> (header: [String: Any], cases: [[String: Any]]) {
        let root = try DiffusionFixtures.json("tokenizer/cases.json") as! [String: Any]
        return (root, root["cases"] as! [[String: Any]])
    }

    // MARK: Fixture cases

    @Test func realVocabulary() throws {
        let (header, _) = try Self.cases()
        let info = header["vocabulary"] as! [String: Any]
        let tok = try Self.tokenizer("sd1")
        #expect(tok.vocabularyCount == info["tokens"] as! Int)
        #expect(tok.mergeCount == info["merges"] as! Int)
        #expect(tok.token(of: tok.bosID) == "<|startoftext|>")
        #expect(tok.token(of: tok.eosID) == "<|endoftext|>")
        #expect(tok.id(of: "<|endoftext|>") == tok.eosID)
    }

    @Test(arguments: layouts)
    func matchesTransformers(layout: String) throws {
        let (header, cases) = try Self.cases()
        let tok = try Self.tokenizer(layout)
        let info = (header["layouts"] as! [String: Any])[layout] as! [String: Int]
        #expect(tok.bosID == info["bos_id"])
        #expect(tok.eosID == info["eos_id"])
        #expect(tok.padID == info["pad_id"])
        let maxLength = header["max_length"] as! Int
        #expect(maxLength == 77)
        var mismatches: [String] = []
        for c in cases {
            let text = c["text"] as! String
            let ids = c["ids"] as! [String: [Int]]
            let expected = ids[layout] ?? ids["sd1"]!
            let got = tok.encode(text)
            if got != expected { mismatches.append("\(text.debugDescription): expected \(expected), got \(got)") }
            // transformers' padded ids are the ids followed by the pad id (the generator checks this).
            let padded = expected + Array(repeating: info["pad_id"]!, count: max(0, maxLength - expected.count))
            let gotPadded = tok.encodePadded(text, length: maxLength)
            if gotPadded != padded { mismatches.append("padded \(text.debugDescription): expected \(padded), got \(gotPadded)") }
        }
        #expect(cases.count >= 2_100)
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(5).joined(separator: "\n"))")
    }

    @Test func padConventions() throws {
        let sd1 = try Self.tokenizer("sd1"), sd2 = try Self.tokenizer("sd2")
        #expect(sd1.padID == sd1.eosID)
        #expect(sd2.padID == sd2.id(of: "!"))
        #expect(sd2.config.padToken.content == "!")
        let a = sd1.encodePadded("a photo of sks person"), b = sd2.encodePadded("a photo of sks person")
        #expect(a.count == 77 && b.count == 77)
        #expect(a.prefix(7) == b.prefix(7))
        #expect(a.suffix(70).allSatisfy { $0 == sd1.eosID } && b.suffix(70).allSatisfy { $0 == sd2.padID })
        // Other lengths truncate and pad the same way.
        let short = sd1.encodePadded(String(repeating: "cat ", count: 20), length: 8)
        #expect(short.count == 8 && short.first == sd1.bosID && short.last == sd1.eosID)
        #expect(sd1.encode("a b c d", maxLength: 3) == [sd1.bosID, sd1.encode("a")[1], sd1.eosID])
    }

    @Test func builtInConfigsMatchTheFixtureFiles() throws {
        let sd1 = try Self.config("sd1"), sd2 = try Self.config("sd2")
        #expect(sd1.padToken.content == CLIPTokenizer.Config.sd1.padToken.content)
        #expect(sd2.padToken.content == CLIPTokenizer.Config.sd2.padToken.content)
        #expect(sd1.modelMaxLength == 77)
        // A plain-string SD2 config and the SD2 files give the same ids.
        let plain = try CLIPTokenizer(vocabJSON: Self.vocab, merges: Self.merges, config: .sd2)
        let files = try Self.tokenizer("sd2")
        for text in ["hello!! world!", "a photo of a cat", "(masterpiece:1.2)!"] {
            #expect(plain.encodePadded(text) == files.encodePadded(text))
        }
    }

    @Test func concurrentUseAgrees() async throws {
        let tok = try Self.tokenizer("sd1")
        let (_, cases) = try Self.cases()
        let texts = cases.map { $0["text"] as! String }
        let reference = texts.map { tok.encode($0) }
        let results = await withTaskGroup(of: [[Int]].self) { group in
            for _ in 0..<4 { group.addTask { texts.map { tok.encode($0) } } }
            var all: [[[Int]]] = []
            for await r in group { all.append(r) }
            return all
        }
        for r in results { #expect(r == reference) }
    }

    // MARK: Loading from a base

    static func base(_ name: String, options: BaseConvertOptions = .init(), input: String? = nil) throws -> (BaseModel, String) {
        let dir = NSTemporaryDirectory() + "lidb-tok-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/base.lidb"
        let source = input ?? DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/\(name)/diffusers-safetensors"
        _ = try BaseConverter.write(BaseConverter.plan(input: source, options: options), to: path, dtype: nil)
        return (try BaseModel(path: path), dir)
    }

    @Test(arguments: ["sd1", "sd2"])
    func loadsFromBase(name: String) throws {
        let (base, dir) = try Self.base(name)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tok = try CLIPTokenizer(base: base)
        let tiny = (try DiffusionFixtures.json("tokenizer/tiny.json") as! [String: Any])[name] as! [String: Any]
        #expect(tok.padID == tiny["pad_id"] as! Int)
        #expect(tok.vocabularyCount == tiny["vocab_size"] as! Int)
        let cases = tiny["cases"] as! [[String: Any]]
        #expect(cases.count >= 10)
        for c in cases {
            let text = c["text"] as! String
            #expect(tok.encode(text) == c["ids"] as! [Int], "\(text.debugDescription)")
            #expect(tok.encodePadded(text) == c["padded"] as! [Int], "\(text.debugDescription)")
        }
    }

    @Test func baseWithoutTokenizerIsAnError() throws {
        // A single-file checkpoint converted without a config folder carries no tokenizer.
        let (base, dir) = try Self.base("sd1", input: DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/sd1/ldm.safetensors")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try base.tokenizerFile("vocab.json") == nil)
        do {
            _ = try CLIPTokenizer(base: base)
            Issue.record("expected an error")
        } catch {
            #expect(error.file == base.file.path)
            guard case let .unsupportedFormat(m) = error.problem else { Issue.record("unexpected \(error)"); return }
            #expect(m.contains("no tokenizer"))
        }
    }

    // MARK: Malformed input

    static func failure(vocab: String = #"{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4, "b</w>": 5}"#,
                        merges: [UInt8] = Array("#version: 0.2\na b\n".utf8),
                        config: CLIPTokenizer.Config = .init()) -> TensorFileError? {
        do {
            _ = try CLIPTokenizer(vocabJSON: Array(vocab.utf8), merges: merges, config: config)
            return nil
        } catch {
            return error
        }
    }

    @Test func vocabularyWithoutByteSymbols() throws {
        // Symbols missing from the vocabulary read as the unknown token.
        let mini = (try DiffusionFixtures.json("tokenizer/tiny.json") as! [String: Any])["mini"] as! [String: Any]
        let vocab = try JSONSerialization.data(withJSONObject: mini["vocab"]!)
        let tok = try CLIPTokenizer(vocabJSON: Array(vocab), merges: Array((mini["merges"] as! String).utf8))
        #expect(tok.padID == mini["pad_id"] as! Int)
        for c in mini["cases"] as! [[String: Any]] {
            let text = c["text"] as! String
            #expect(tok.encode(text) == c["ids"] as! [Int], "\(text.debugDescription)")
            #expect(tok.encodePadded(text) == c["padded"] as! [Int], "\(text.debugDescription)")
        }
    }

    @Test func malformedVocabularyGivesTypedErrors() {
        func problem(_ vocab: String) -> TensorFileError.Problem? {
            let e = Self.failure(vocab: vocab)
            #expect(e?.file == "vocab.json", "\(vocab)")
            return e?.problem
        }
        if case .invalidJSON = problem("{\"a\": 0,") {} else { Issue.record("truncated JSON") }
        if case .invalidJSON = problem("not json") {} else { Issue.record("not JSON") }
        if case .wrongType = problem("[1, 2]") {} else { Issue.record("array") }
        if case .wrongType = problem(#"{"a": "zero"}"#) {} else { Issue.record("string id") }
        if case .wrongType = problem(#"{"a": 1.5}"#) {} else { Issue.record("fractional id") }
        if case .wrongType = problem(#"{"a": -1}"#) {} else { Issue.record("negative id") }
        if case .wrongType = problem(#"{"a": 99999999999}"#) {} else { Issue.record("huge id") }
        if case .duplicateKey = problem(#"{"a": 0, "a": 1}"#) {} else { Issue.record("duplicate token") }
        if case .invalidArgument = problem("{}") {} else { Issue.record("empty vocabulary") }
        do {
            _ = try CLIPTokenizer(vocabJSON: [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x30, 0x7D], merges: [])
            Issue.record("expected an error for a vocabulary that is not UTF-8")
        } catch {
            #expect(error.file == "vocab.json")
        }
    }

    @Test func malformedMergesGiveTypedErrors() {
        func message(_ merges: String) -> String? {
            guard let e = Self.failure(merges: Array(merges.utf8)) else { return nil }
            #expect(e.file == "merges.txt")
            guard case let .invalidArgument(m) = e.problem else { Issue.record("unexpected \(e)"); return nil }
            return m
        }
        #expect(message("#version: 0.2\na b c\n")?.contains("line 2") == true)
        #expect(message("#version: 0.2\nab\n")?.contains("line 2") == true)
        #expect(message("#version: 0.2\na  b\n")?.contains("line 2") == true)
        #expect(message("#version: 0.2\n\na b\n")?.contains("line 2") == true)
        #expect(message("#version: 0.2\na x\n")?.contains("'x' is not in the vocabulary") == true)
        #expect(message("#version: 0.2\nb a\n")?.contains("'ba' is not in the vocabulary") == true)
        // CRLF line ends, a missing final newline and no version line are accepted.
        #expect(message("#version: 0.2\r\na b\r\n") == nil)
        #expect(message("a b") == nil)
        #expect(message("") == nil)
        let notUTF8 = Self.failure(merges: [0x61, 0x20, 0xFF, 0x0A])
        #expect(notUTF8?.file == "merges.txt")
    }

    @Test func malformedConfigGivesTypedErrors() {
        func error(_ config: String?, _ map: String? = nil) -> TensorFileError? {
            do {
                _ = try CLIPTokenizer.Config(tokenizerConfigJSON: config.map { Array($0.utf8) }, specialTokensMapJSON: map.map { Array($0.utf8) })
                return nil
            } catch { return error }
        }
        #expect(error(#"{"pad_token": "!"}"#) == nil)
        #expect(error("{")?.file == "tokenizer_config.json")
        #expect(error("[]")?.file == "tokenizer_config.json")
        #expect(error(#"{"bos_token": 5}"#)?.file == "tokenizer_config.json")
        #expect(error(#"{"bos_token": {"lstrip": true}}"#)?.file == "tokenizer_config.json")
        #expect(error(#"{"bos_token": {"content": "x", "lstrip": "yes"}}"#)?.file == "tokenizer_config.json")
        #expect(error(#"{"added_tokens_decoder": {"x": {"content": "a"}}}"#)?.file == "tokenizer_config.json")
        #expect(error(#"{"added_tokens_decoder": []}"#)?.file == "tokenizer_config.json")
        #expect(error(#"{"additional_special_tokens": "a"}"#)?.file == "tokenizer_config.json")
        #expect(error(nil, #"{"pad_token": 0}"#)?.file == "special_tokens_map.json")
        #expect(error(nil, "nope")?.file == "special_tokens_map.json")
        // An empty special token cannot be given an id.
        var empty = CLIPTokenizer.Config()
        empty.padToken = .init("")
        #expect(Self.failure(config: empty) != nil)
    }

    @Test func malformedTokenizerInBaseNamesTheStoredFile() throws {
        // A diffusers folder whose tokenizer merges are broken: the error names the base and the file.
        let src = DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/sd1/diffusers-safetensors"
        let dir = NSTemporaryDirectory() + "lidb-tok-bad-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: src, toPath: dir + "-src")
        defer { try? FileManager.default.removeItem(atPath: dir + "-src") }
        try Data("#version: 0.2\nnot a merge line\n".utf8).write(to: URL(fileURLWithPath: dir + "-src/tokenizer/merges.txt"))
        let (base, bdir) = try Self.base("sd1", input: dir + "-src")
        defer { try? FileManager.default.removeItem(atPath: bdir) }
        do {
            _ = try CLIPTokenizer(base: base)
            Issue.record("expected an error")
        } catch {
            #expect(error.file == base.file.path)
            #expect(error.tensor == "tokenizer.merges.txt")
            #expect("\(error)".contains("line 2"))
        }
    }

    // MARK: Speed (reported, not asserted)

    @Test func encodesAThousandPrompts() throws {
        let tok = try Self.tokenizer("sd1")
        let (_, cases) = try Self.cases()
        let texts = cases.map { $0["text"] as! String }
        var prompts: [String] = []
        for i in 0..<1000 { prompts.append("\(texts[i % texts.count]) \(i), photo of sks person, (masterpiece:1.2)") }
        let start = ContinuousClock.now
        var total = 0
        for p in prompts { total += tok.encodePadded(p).count }
        let elapsed = ContinuousClock.now - start
        #expect(total == 77_000)
        print("CLIPTokenizer: 1,000 prompts encoded and padded in \(elapsed)")
    }
}
