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

    @Test func oversizedFilesAreRefusedBeforeParsing() throws {
        let big = [UInt8](repeating: 0x20, count: CLIPTokenizer.maxFileSize + 1)
        let vocab = Array(#"{"a": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}"#.utf8)
        func limit(_ file: String, _ body: () throws(TensorFileError) -> Void) {
            do {
                try body()
                Issue.record("\(file): accepted")
            } catch {
                #expect(error.file == file)
                if case .limitExceeded = error.problem {} else { Issue.record("\(file): \(error)") }
            }
        }
        limit("vocab.json") { () throws(TensorFileError) in _ = try CLIPTokenizer(vocabJSON: big, merges: []) }
        limit("merges.txt") { () throws(TensorFileError) in _ = try CLIPTokenizer(vocabJSON: vocab, merges: big) }
        limit("tokenizer.json") { () throws(TensorFileError) in _ = try CLIPTokenizer(tokenizerJSON: big) }
        limit("tokenizer_config.json") { () throws(TensorFileError) in _ = try CLIPTokenizer.Config(tokenizerConfigJSON: big, specialTokensMapJSON: nil) }
        limit("special_tokens_map.json") { () throws(TensorFileError) in _ = try CLIPTokenizer.Config(tokenizerConfigJSON: nil, specialTokensMapJSON: big) }
        // A base whose stored tokenizer file is oversized: refused before its bytes are read.
        let dir = NSTemporaryDirectory() + "lidb-tok-big-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var plan = try BaseConverter.plan(input: DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/sd1/diffusers-safetensors")
        let owned = OwnedBytes(count: big.count)
        big.withUnsafeBytes { owned.buffer.copyMemory(from: $0) }
        let at = plan.tensors.firstIndex { $0.info.name.hasPrefix("tokenizer.") } ?? plan.tensors.count
        plan.tensors.insert(PlannedTensor(info: TensorInfo(name: "tokenizer.tokenizer.json", dtype: .U8, shape: [big.count]),
                                          fetch: { TensorBytes(owned: owned) }, isWeight: false, encodingHint: .zstd(level: 3)), at: at)
        _ = try BaseConverter.write(plan, to: dir + "/base.lidb", dtype: nil)
        do {
            _ = try CLIPTokenizer(base: BaseModel(path: dir + "/base.lidb"))
            Issue.record("expected an error")
        } catch {
            #expect(error.tensor == "tokenizer.tokenizer.json")
            if case .limitExceeded = error.problem {} else { Issue.record("\(error)") }
        }
    }

    @Test func duplicateVocabularyIDsAreRefused() {
        let e = Self.failure(vocab: #"{"a": 0, "b": 1, "ab": 1, "<|startoftext|>": 3, "<|endoftext|>": 4}"#)
        #expect(e?.file == "vocab.json")
        guard case let .invalidArgument(m)? = e?.problem else { Issue.record("unexpected \(String(describing: e))"); return }
        #expect(m.contains("id 1 is given to both 'b' and 'ab'"), "\(m)")
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

/// `tokenizer.json` (transformers ≥ 5 saves only that and tokenizer_config.json) and the tokenizer
/// compiled into lidb, against transformers' ids (converters/fixtures/make_tokenizer_fixtures.py).
@Suite struct TokenizerJSONTests {
    static let jsonLayouts = ["json-sd1", "json-sd2", "json-flags", "json-extra"]

    /// The merge lines of merges.txt as byte pairs (cut at bytes: a space may precede a combining mark).
    static let mergePairs: [(String, String)] = {
        var out: [(String, String)] = []
        for line in TokenizerTests.merges.split(separator: 0x0A) where !line.starts(with: Array("#version".utf8)) {
            let p = line.split(separator: 0x20, omittingEmptySubsequences: false)
            out.append((String(decoding: p[0], as: UTF8.self), String(decoding: p[1], as: UTF8.self)))
        }
        return out
    }()

    /// The tokenizer.json transformers saved for `layout`, rebuilt from its committed template and
    /// samples/clip-tokenizer (the generator checks that this gives the saved file), with the
    /// merges in the pair-array spelling or the "left right" string spelling.
    static func realTokenizerJSON(_ layout: String, strings: Bool) throws -> (json: [UInt8], config: [UInt8]) {
        let dir = DiffusionFixtures.path("tokenizer/json/" + layout.dropFirst("json-".count))
        let template = try JSONValue.parse(TokenizerTests.bytes(dir + "/tokenizer.template.json"), file: "template")
        let vocab = try JSONValue.parse(TokenizerTests.vocab, file: "vocab.json")
        let merges: [JSONValue] = mergePairs.map { strings ? .string($0.0 + " " + $0.1) : .array([.string($0.0), .string($0.1)]) }
        let model = try #require(template["model"])
        let json = template.setting("model", model.setting("vocab", vocab).setting("merges", .array(merges))).serialized()
        return (json, try TokenizerTests.bytes(dir + "/tokenizer_config.json"))
    }

    static func expect(_ tok: CLIPTokenizer, matches layout: String, every stride: Int = 1) throws {
        let (header, cases) = try TokenizerTests.cases()
        let info = try #require((header["layouts"] as? [String: Any])?[layout] as? [String: Int])
        #expect(tok.bosID == info["bos_id"] && tok.eosID == info["eos_id"] && tok.padID == info["pad_id"])
        var mismatches: [String] = []
        for c in cases.enumerated() where c.offset % stride == 0 {
            let text = c.element["text"] as! String
            let ids = c.element["ids"] as! [String: [Int]]
            let expected = ids[layout] ?? ids["sd1"]!
            if tok.encode(text) != expected { mismatches.append("\(text.debugDescription): expected \(expected), got \(tok.encode(text))") }
            let padded = expected + Array(repeating: info["pad_id"]!, count: max(0, 77 - expected.count))
            if tok.encodePadded(text) != padded { mismatches.append("padded \(text.debugDescription)") }
        }
        #expect(mismatches.isEmpty, "\(layout): \(mismatches.count) mismatches, first: \(mismatches.prefix(5).joined(separator: "\n"))")
    }

    @Test(arguments: jsonLayouts, [false, true])
    func matchesTransformers(layout: String, strings: Bool) throws {
        let (json, config) = try Self.realTokenizerJSON(layout, strings: strings)
        let tok = try CLIPTokenizer(tokenizerJSON: json, tokenizerConfigJSON: config)
        #expect(tok.vocabularyCount == 49_408 && tok.mergeCount == 48_894)
        // Both spellings are checked on every text for SD 1 and SD 2; the others on a third.
        try Self.expect(tok, matches: layout, every: layout == "json-sd1" || layout == "json-sd2" ? 1 : 3)
    }

    @Test func filesPreferTokenizerJSON() throws {
        // With vocab.json and merges.txt present too (transformers < 5 saves all three), tokenizer.json
        // gives the vocabulary, as in transformers ≥ 5: here its added tokens (the flags layout's) decide.
        let (json, config) = try Self.realTokenizerJSON("json-flags", strings: false)
        let tok = try CLIPTokenizer(files: ["tokenizer.json": json, "tokenizer_config.json": config,
                                            "vocab.json": TokenizerTests.vocab, "merges.txt": Array("not merges".utf8)])
        #expect(tok.encode("a <sks> b") == [49406, 320, 49408, 321, 49407])
    }

    @Test(arguments: [Architecture.Family.sd1, .sd2])
    func embeddedTokenizerMatchesTransformers(family: Architecture.Family) throws {
        let files = try EmbeddedTokenizer.files(family)
        #expect(files["vocab.json"] == TokenizerTests.vocab && files["merges.txt"] == TokenizerTests.merges)
        let tok = try CLIPTokenizer(files: files)
        #expect(tok.config == (try TokenizerTests.config(family.rawValue)))
        try Self.expect(tok, matches: family.rawValue)
    }

    // MARK: transformers-5 folders in bases

    /// A copy of a tiny diffusers fixture whose tokenizer/ holds only what transformers 5 saves.
    static func transformers5Folder(_ name: String, tokenizer: String, into dir: String) throws -> String {
        let fm = FileManager.default
        let folder = dir + "/pipeline"
        try fm.copyItem(atPath: DiffusionFixtures.repo + "/Tests/BaseTests/Fixtures/\(name)/diffusers-safetensors", toPath: folder)
        try fm.removeItem(atPath: folder + "/tokenizer")
        try fm.copyItem(atPath: DiffusionFixtures.path("tokenizer/tiny-json/" + tokenizer), toPath: folder + "/tokenizer")
        return folder
    }

    static let validate: @Sendable ([String: [UInt8]]) throws(TensorFileError) -> Void = { (files) throws(TensorFileError) in
        _ = try CLIPTokenizer(files: files)
    }

    @Test(arguments: ["sd1", "sd2"], [false, true])
    func baseFromTransformers5Folder(name: String, strings: Bool) throws {
        let dir = NSTemporaryDirectory() + "lidb-tokjson-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let folder = try Self.transformers5Folder(name, tokenizer: name + (strings ? "-strings" : ""), into: dir)
        let plan = try BaseConverter.plan(input: folder, options: .init(validateTokenizer: Self.validate))
        #expect(plan.warnings.isEmpty, "\(plan.warnings)")
        #expect(plan.tensorNames.filter { $0.hasPrefix("tokenizer.") } == ["tokenizer.tokenizer.json", "tokenizer.tokenizer_config.json"])
        _ = try BaseConverter.write(plan, to: dir + "/base.lidb", dtype: nil)
        let base = try BaseModel(path: dir + "/base.lidb")
        // Stored byte for byte.
        #expect(try base.tokenizerFile("tokenizer.json") == TokenizerTests.bytes(folder + "/tokenizer/tokenizer.json"))
        let tok = try CLIPTokenizer(base: base)
        let entry = try #require((try DiffusionFixtures.json("tokenizer/tiny.json") as? [String: Any])?[name + "-json"] as? [String: Any])
        #expect(tok.padID == entry["pad_id"] as? Int && tok.vocabularyCount == entry["vocab_size"] as? Int)
        let cases = try #require(entry["cases"] as? [[String: Any]])
        #expect(cases.count >= 20 && cases.contains { ($0["ids"] as? [Int])?.count == 77 })
        for c in cases {
            let text = c["text"] as! String
            #expect(tok.encode(text) == c["ids"] as! [Int], "\(text.debugDescription)")
            #expect(tok.encodePadded(text) == c["padded"] as! [Int], "\(text.debugDescription)")
        }
    }

    @Test func malformedTokenizerJSONInAFolderIsRefusedBeforeWriting() throws {
        let dir = NSTemporaryDirectory() + "lidb-tokjson-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let folder = try Self.transformers5Folder("sd1", tokenizer: "sd1", into: dir)
        let root = try Self.tiny()
        try Data(Self.mutateModel(root) { $0.setting("type", .string("WordPiece")) }.serialized())
            .write(to: URL(fileURLWithPath: folder + "/tokenizer/tokenizer.json"))
        do {
            _ = try BaseConverter.plan(input: folder, options: .init(validateTokenizer: Self.validate))
            Issue.record("expected an error")
        } catch {
            #expect(error.file == folder + "/tokenizer/tokenizer.json")
            #expect(error.problem.description.contains("model.type"), "\(error)")
        }
    }

    // MARK: Malformed tokenizer.json

    static func tiny() throws -> JSONValue {
        try JSONValue.parse(TokenizerTests.bytes(DiffusionFixtures.path("tokenizer/tiny-json/sd1/tokenizer.json")), file: "tokenizer.json")
    }

    static func mutateModel(_ root: JSONValue, _ f: (JSONValue) -> JSONValue) -> JSONValue {
        root.setting("model", f(root["model"] ?? .null))
    }

    /// The error for a tokenizer.json, which must name tokenizer.json; nil when it loads.
    static func error(_ root: JSONValue) -> TensorFileError? {
        error(bytes: root.serialized())
    }

    static func error(bytes: [UInt8]) -> TensorFileError? {
        do {
            _ = try CLIPTokenizer(tokenizerJSON: bytes)
            return nil
        } catch {
            #expect(error.file == "tokenizer.json", "\(error)")
            return error
        }
    }

    /// Expects an error whose message contains every one of `words`.
    static func refused(_ root: JSONValue, _ words: String..., sourceLocation: SourceLocation = #_sourceLocation) {
        guard let e = error(root) else { Issue.record("accepted", sourceLocation: sourceLocation); return }
        let m = e.problem.description
        for w in words { #expect(m.contains(w), "\(m) lacks \(w)", sourceLocation: sourceLocation) }
    }

    @Test func theTinyFileLoads() throws {
        #expect(Self.error(try Self.tiny()) == nil)
    }

    @Test func malformedTopLevelAndModel() throws {
        let root = try Self.tiny()
        if case .invalidJSON? = Self.error(bytes: Array(#"{"model": "#.utf8))?.problem {} else { Issue.record("truncated JSON") }
        Self.refused(.array([]), "(top level)", "an object")
        Self.refused(root.removing("model"), "missing field 'model'")
        Self.refused(root.setting("model", .string("BPE")), "'model'", "an object")
        Self.refused(Self.mutateModel(root) { $0.removing("type") }, "missing field 'model.type'")
        Self.refused(Self.mutateModel(root) { $0.setting("type", .string("WordPiece")) }, "model.type", "BPE", "WordPiece")
        Self.refused(Self.mutateModel(root) { $0.setting("type", .string("Unigram")) }, "model.type")
        Self.refused(Self.mutateModel(root) { $0.setting("end_of_word_suffix", .string("")) }, "model.end_of_word_suffix")
        Self.refused(Self.mutateModel(root) { $0.removing("end_of_word_suffix") }, "model.end_of_word_suffix")
        Self.refused(Self.mutateModel(root) { $0.setting("dropout", .double(0.1)) }, "model.dropout")
        Self.refused(Self.mutateModel(root) { $0.setting("continuing_subword_prefix", .string("##")) }, "model.continuing_subword_prefix")
        Self.refused(Self.mutateModel(root) { $0.setting("byte_fallback", .bool(true)) }, "model.byte_fallback")
        Self.refused(Self.mutateModel(root) { $0.setting("ignore_merges", .bool(true)) }, "model.ignore_merges")
        Self.refused(Self.mutateModel(root) { $0.setting("fuse_unk", .bool(true)) }, "model.fuse_unk")
        Self.refused(Self.mutateModel(root) { $0.setting("unk_token", .int(3)) }, "model.unk_token")
        Self.refused(root.setting("version", .int(1)), "'version'")
        Self.refused(root.setting("truncation", .string("yes")), "'truncation'")
        Self.refused(root.setting("post_processor", .array([])), "'post_processor'")
        // The size limit is checked before parsing.
        var big = root.serialized()
        big.append(contentsOf: repeatElement(0x20, count: CLIPTokenizer.maxFileSize))
        if case .limitExceeded? = Self.error(bytes: big)?.problem {} else { Issue.record("oversized file") }
    }

    @Test func malformedVocabulary() throws {
        let root = try Self.tiny()
        func vocab(_ f: (JSONValue) -> JSONValue) -> JSONValue { Self.mutateModel(root) { $0.setting("vocab", f($0["vocab"] ?? .null)) } }
        Self.refused(Self.mutateModel(root) { $0.removing("vocab") }, "missing field 'model.vocab'")
        Self.refused(vocab { _ in .array([.string("a")]) }, "'model.vocab'", "an object")
        Self.refused(vocab { _ in .object([]) }, "model.vocab is empty")
        Self.refused(vocab { $0.setting("a", .string("64")) }, "model.vocab['a']", "integer")
        Self.refused(vocab { $0.setting("a", .double(64.5)) }, "model.vocab['a']")
        Self.refused(vocab { $0.setting("a", .number("64.0")) }, "model.vocab['a']")
        Self.refused(vocab { $0.setting("a", .int(-1)) }, "model.vocab['a']")
        Self.refused(vocab { $0.setting("a", .int(Int64(1) << 40)) }, "model.vocab['a']")
        Self.refused(vocab { $0.setting("a", .null) }, "model.vocab['a']")
        let bID = try #require(root["model"]?["vocab"]?["b"]?.int64Value)
        Self.refused(vocab { $0.setting("a", .int(bID)) }, "model.vocab: id \(bID) is given to both")
        // A token with a control character is shown escaped, on one line.
        let e = Self.error(vocab { $0.setting("a\nb", .string("x")) })
        #expect(e?.problem.description.contains("a\\nb") == true && e?.problem.description.contains("\n") == false)
        // Duplicate tokens are a JSON error.
        var text = String(decoding: root.serialized(), as: UTF8.self)
        text = text.replacingOccurrences(of: #""vocab":{"#, with: #""vocab":{"a":64,"#)
        if case .duplicateKey? = Self.error(bytes: Array(text.utf8))?.problem {} else { Issue.record("duplicate token") }
    }

    @Test func malformedMerges() throws {
        let root = try Self.tiny()
        func merges(_ f: ([JSONValue]) -> [JSONValue]) -> JSONValue {
            Self.mutateModel(root) { $0.setting("merges", .array(f($0["merges"]?.arrayValue ?? []))) }
        }
        Self.refused(Self.mutateModel(root) { $0.removing("merges") }, "missing field 'model.merges'")
        Self.refused(Self.mutateModel(root) { $0.setting("merges", .string("a b")) }, "'model.merges'", "an array")
        for bad: JSONValue in [.string("a b c"), .string("ab"), .string("a  b"), .string(" a"), .string(""), .array([.string("a")]),
                               .array([.string("a"), .string("b"), .string("c")]), .array([.string("a"), .int(1)]), .array([.string(""), .string("b")]),
                               .int(5), .null] {
            Self.refused(merges { $0 + [bad] }, "model.merges[")
        }
        let count = root["model"]?["merges"]?.arrayValue?.count ?? 0
        Self.refused(merges { $0 + [.array([.string("zzzq"), .string("a")])] }, "model.merges[\(count)]", "'zzzq' is not in the vocabulary")
        Self.refused(merges { $0 + [.string("a zzzq")] }, "model.merges[\(count)]", "'zzzq' is not in the vocabulary")
        // Both spellings in one file are read alike.
        #expect(Self.error(merges { $0.enumerated().map { i, m in
            guard i % 2 == 0, let p = m.arrayValue, let l = p[0].stringValue, let r = p[1].stringValue else { return m }
            return .string(l + " " + r)
        } }) == nil)
    }

    @Test func textPipelineMustBeCLIPs() throws {
        let root = try Self.tiny()
        Self.refused(root.removing("normalizer"), "missing field 'normalizer'")
        Self.refused(root.setting("normalizer", .null), "'normalizer'", "CLIP's normaliser")
        let n = try #require(root["normalizer"])
        let list = try #require(n["normalizers"]?.arrayValue)
        Self.refused(root.setting("normalizer", n.setting("normalizers", .array(Array(list.prefix(2))))), "'normalizer'")
        Self.refused(root.setting("normalizer", n.setting("normalizers", .array([list[0], list[1], .object([("type", .string("Strip"))])]))), "'normalizer'")
        Self.refused(root.setting("normalizer", n.setting("normalizers", .array([list[0], list[1].setting("content", .string("_")), list[2]]))), "'normalizer'")
        Self.refused(root.removing("pre_tokenizer"), "missing field 'pre_tokenizer'")
        let p = try #require(root["pre_tokenizer"])
        let steps = try #require(p["pretokenizers"]?.arrayValue)
        Self.refused(root.setting("pre_tokenizer", p.setting("pretokenizers", .array([steps[1]]))), "'pre_tokenizer'")
        Self.refused(root.setting("pre_tokenizer", p.setting("pretokenizers", .array([steps[0].setting("invert", .bool(false)), steps[1]]))), "'pre_tokenizer'")
        Self.refused(root.setting("pre_tokenizer", p.setting("pretokenizers", .array([steps[0].setting("pattern", .object([("Regex", .string(#"\w+"#))])), steps[1]]))), "'pre_tokenizer'")
        Self.refused(root.setting("pre_tokenizer", p.setting("pretokenizers", .array([steps[0], steps[1].setting("add_prefix_space", .bool(true))]))), "'pre_tokenizer'")
        Self.refused(root.setting("pre_tokenizer", p.setting("pretokenizers", .array([steps[0], steps[1].setting("use_regex", .bool(false))]))), "'pre_tokenizer'")
        // The older converter's pattern (without the special tokens) is CLIP's too.
        let older = #"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"#
        #expect(Self.error(root.setting("pre_tokenizer", p.setting("pretokenizers", .array([steps[0].setting("pattern", .object([("Regex", .string(older))])), steps[1]])))) == nil)
    }

    @Test func malformedAddedTokens() throws {
        let root = try Self.tiny()
        let added = try #require(root["added_tokens"]?.arrayValue)
        let vocabSize = try #require(root["model"]?["vocab"]?.objectValue?.count)
        let aID = try #require(root["model"]?["vocab"]?["a"]?.int64Value)
        func with(_ extra: JSONValue) -> JSONValue { root.setting("added_tokens", .array(added + [extra])) }
        func token(_ id: JSONValue, _ content: JSONValue) -> JSONValue { .object([("id", id), ("content", content)]) }
        let n = added.count
        Self.refused(root.removing("added_tokens"), "missing field 'added_tokens'")
        Self.refused(root.setting("added_tokens", .object([])), "'added_tokens'", "an array")
        Self.refused(with(.string("<x>")), "added_tokens[\(n)]", "an object")
        Self.refused(with(.object([("content", .string("<x>"))])), "missing field 'added_tokens[\(n)].id'")
        Self.refused(with(token(.string("5"), .string("<x>"))), "added_tokens[\(n)].id")
        Self.refused(with(token(.double(614.5), .string("<x>"))), "added_tokens[\(n)].id")
        Self.refused(with(token(.int(-1), .string("<x>"))), "added_tokens[\(n)].id")
        Self.refused(with(.object([("id", .int(vocabSize))])), "missing field 'added_tokens[\(n)].content'")
        Self.refused(with(token(.int(vocabSize), .string(""))), "added_tokens[\(n)].content")
        Self.refused(with(token(.int(vocabSize), .int(1))), "added_tokens[\(n)].content")
        Self.refused(with(token(.int(vocabSize), .string("<x>")).setting("lstrip", .string("no"))), "added_tokens[\(n)].lstrip", "boolean")
        Self.refused(with(token(.int(vocabSize), .string("<x>")).setting("special", .int(1))), "added_tokens[\(n)].special")
        Self.refused(with(token(added[0]["id"] ?? .null, .string("<x>"))), "added_tokens[\(n)]", "is given to both")
        Self.refused(with(token(.int(vocabSize), added[0]["content"] ?? .null)), "added_tokens[\(n)]", "listed twice")
        Self.refused(with(token(.int(aID + 1), .string("a"))), "added_tokens[\(n)]", "model.vocab gives it \(aID)")
        Self.refused(with(token(.int(aID), .string("<x>"))), "added_tokens[\(n)]", "which model.vocab gives to 'a'")
        // A new token takes the first id after the vocabulary: a file declaring another contradicts itself.
        Self.refused(with(token(.int(vocabSize + 5), .string("<x>"))), "added_tokens[\(n)]", "declares id \(vocabSize + 5)", "its id is \(vocabSize)")
        let ok = try CLIPTokenizer(tokenizerJSON: with(token(.int(vocabSize), .string("<x>"))).serialized())
        #expect(ok.encode("a<x>b") == [ok.bosID] + ok.tokenize("a") + [vocabSize] + ok.tokenize("b") + [ok.eosID])
        #expect(ok.id(of: "<x>") == vocabSize)
        // At most maxAddedTokens entries.
        let many = (0...CLIPTokenizer.maxAddedTokens).map { token(.int(vocabSize + $0), .string("<t\($0)>")) }
        if case .limitExceeded? = Self.error(root.setting("added_tokens", .array(many)))?.problem {} else { Issue.record("too many added tokens") }
    }
}
