import TensorFile

// Reading a tokenizer's vocabulary: `vocab.json` + `merges.txt` (transformers < 5), or the
// `tokenizers` serialisation `tokenizer.json` (the only file transformers ≥ 5 saves).
//
// transformers ≥ 5 builds `CLIPTokenizer` from a `tokenizer.json` by taking the BPE model's
// `vocab` and `merges` (either spelling) and, when `tokenizer_config.json` has no
// `added_tokens_decoder`, the `added_tokens`; the text pipeline (normaliser, pre-tokeniser, BPE
// options, post-processor) is CLIP's own whatever the file says. lidb does the same, and refuses a
// file whose stated pipeline is not CLIP's, since `tokenizers` itself would follow the file and
// the ids would then depend on the reader.

extension CLIPTokenizer {
    /// At most this many vocabulary entries (CLIP has 49,408).
    public static let maxVocabularySize = 1 << 20
    /// At most this many merge rules (CLIP has 48,894).
    public static let maxMerges = 1 << 20
    /// At most this many added tokens.
    public static let maxAddedTokens = 1 << 16
    /// At most this many bytes in one tokenizer file (CLIP's tokenizer.json is 3.6 MB).
    public static let maxFileSize = 32 << 20

    /// Builds the tokenizer from a `tokenizer.json`, with the special-token configuration of
    /// `tokenizer_config.json` / `special_tokens_map.json` when present (see `Config`).
    public convenience init(tokenizerJSON: [UInt8], tokenizerConfigJSON: [UInt8]? = nil, specialTokensMapJSON: [UInt8]? = nil) throws(TensorFileError) {
        let parsed = try TokenizerJSON(tokenizerJSON)
        let config = try Config(tokenizerConfigJSON: tokenizerConfigJSON, specialTokensMapJSON: specialTokensMapJSON,
                                tokenizerJSONAddedTokens: parsed.addedTokens.map { ($0.id, $0.token) })
        try self.init(vocabulary: parsed.vocabulary, config: config, declaredAddedTokens: parsed.addedTokens)
    }
}

/// Refuses a tokenizer file over `CLIPTokenizer.maxFileSize` bytes before reading it.
func checkSize(_ bytes: [UInt8], file: String) throws(TensorFileError) {
    guard bytes.count <= CLIPTokenizer.maxFileSize else {
        throw TensorFileError(file: file, .limitExceeded(what: "file size \(bytes.count)", limit: UInt64(CLIPTokenizer.maxFileSize)))
    }
}

/// A text shown inside a one-line message: control characters escaped, at most 60 scalars.
func shown(_ s: String) -> String {
    var out = ""
    for (i, u) in s.unicodeScalars.enumerated() {
        if i >= 60 { out += "…"; break }
        switch u.value {
        case 0x0A: out += "\\n"
        case 0x0D: out += "\\r"
        case 0x09: out += "\\t"
        case 0..<0x20, 0x7F, 0x85, 0x2028, 0x2029: out += "\\u{\(String(u.value, radix: 16))}"
        default: out.unicodeScalars.append(u)
        }
    }
    return out
}

/// A BPE vocabulary and its merge rules, before the special-token configuration.
struct BPEVocabulary {
    var vocab: [String: Int32] = [:]
    var idToToken: [Int32: String] = [:]
    /// Merge rules in rank order; `place` is the line number (merges.txt) or the index in the array.
    var merges: [(a: String, b: String, place: Int)] = []
    /// The file the merges come from, and the field within it (nil for merges.txt).
    var mergesFile = "merges.txt"
    var mergesField: String?

    func mergePlace(_ p: Int) -> String { mergesField.map { "\($0)[\(p)]" } ?? "line \(p)" }

    /// `vocab.json`: `{"token": id, …}`.
    init(vocabJSON: [UInt8]) throws(TensorFileError) {
        try checkSize(vocabJSON, file: "vocab.json")
        guard let pairs = try JSONValue.parse(vocabJSON, file: "vocab.json").objectValue else {
            throw TensorFileError(file: "vocab.json", .wrongType(field: "(top level)", expected: "an object of token ids"))
        }
        try self.init(entries: pairs, file: "vocab.json", field: nil)
    }

    /// The entries of a vocabulary object; `field` names it inside its file (nil: the whole file).
    init(entries pairs: [(String, JSONValue)], file: String, field: String?) throws(TensorFileError) {
        let whole = field ?? "the vocabulary"
        guard !pairs.isEmpty else { throw TensorFileError(file: file, .invalidArgument("\(whole) is empty")) }
        guard pairs.count <= CLIPTokenizer.maxVocabularySize else {
            throw TensorFileError(file: file, .limitExceeded(what: "\(whole): \(pairs.count) tokens", limit: UInt64(CLIPTokenizer.maxVocabularySize)))
        }
        vocab.reserveCapacity(pairs.count)
        idToToken.reserveCapacity(pairs.count)
        for (token, v) in pairs {
            guard let id = v.int64Value, id >= 0, id < Int64(Int32.max) else {
                let name = field.map { "\($0)['\(shown(token))']" } ?? "id of '\(shown(token))'"
                throw TensorFileError(file: file, .wrongType(field: name, expected: "an integer in [0, 2^31-1)"))
            }
            if let other = idToToken[Int32(id)] {
                throw TensorFileError(file: file, .invalidArgument("\(whole): id \(id) is given to both '\(shown(other))' and '\(shown(token))'"))
            }
            vocab[token] = Int32(id)
            idToToken[Int32(id)] = token
        }
    }

    /// `merges.txt`: `#version` lines skipped, every other line "left right".
    mutating func readMerges(_ mergesText: [UInt8]) throws(TensorFileError) {
        try checkSize(mergesText, file: "merges.txt")
        guard String(validating: mergesText, as: UTF8.self) != nil else {
            throw TensorFileError(file: "merges.txt", .invalidArgument("merges.txt is not valid UTF-8"))
        }
        // Lines and fields are cut at bytes (a Character split would join "\r\n" or a space
        // followed by a combining mark).
        var lines = mergesText.split(separator: 0x0A, omittingEmptySubsequences: false)
        // A final newline ends the last line; it does not start an empty one.
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard lines.count <= CLIPTokenizer.maxMerges + 1 else {
            throw TensorFileError(file: "merges.txt", .limitExceeded(what: "\(lines.count) lines", limit: UInt64(CLIPTokenizer.maxMerges + 1)))
        }
        let versionPrefix = Array("#version".utf8)
        merges.reserveCapacity(lines.count)
        for (index, rawLine) in lines.enumerated() {
            let lineNumber = index + 1
            let line = rawLine.last == 0x0D ? rawLine.dropLast() : rawLine
            if line.starts(with: versionPrefix) { continue }
            let parts = line.split(separator: 0x20, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                let text = String(decoding: line.prefix(80), as: UTF8.self)
                throw TensorFileError(file: "merges.txt", .invalidArgument("line \(lineNumber): expected two symbols separated by one space, found '\(shown(text))'"))
            }
            merges.append((String(decoding: parts[0], as: UTF8.self), String(decoding: parts[1], as: UTF8.self), lineNumber))
        }
        guard merges.count <= CLIPTokenizer.maxMerges else {
            throw TensorFileError(file: "merges.txt", .limitExceeded(what: "\(merges.count) merges", limit: UInt64(CLIPTokenizer.maxMerges)))
        }
        mergesFile = "merges.txt"
        mergesField = nil
    }
}

/// A `tokenizer.json` of a CLIP tokenizer, read strictly: every error names `tokenizer.json` and
/// the field.
struct TokenizerJSON {
    /// One entry of `added_tokens`, with its index in the array and the id it declares.
    struct DeclaredToken {
        var index: Int
        var id: Int
        var token: CLIPTokenizer.AddedToken
    }

    static let file = "tokenizer.json"
    /// The pre-tokeniser pattern of transformers' CLIPTokenizer, and the one its CLIPConverter
    /// wrote into transformers 4 tokenizer.json files (without the two special tokens).
    /// transformers ≥ 5 applies the first whatever the file says, and so does lidb.
    static let splitPatterns = [
        #"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"#,
        #"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"#,
    ]

    var vocabulary: BPEVocabulary
    var addedTokens: [DeclaredToken] = []

    init(_ bytes: [UInt8]) throws(TensorFileError) {
        let file = Self.file
        func wrong(_ field: String, _ expected: String) -> TensorFileError { TensorFileError(file: file, .wrongType(field: field, expected: expected)) }
        func missing(_ field: String) -> TensorFileError { TensorFileError(file: file, .missingField(field)) }
        try checkSize(bytes, file: file)
        let root = try JSONValue.parse(bytes, file: file)
        guard root.objectValue != nil else { throw wrong("(top level)", "an object") }
        if let v = root["version"], v.stringValue == nil { throw wrong("version", "a string") }
        for key in ["truncation", "padding", "post_processor", "decoder"] {
            // Replaced by the caller's settings and CLIP's own processing (as transformers does).
            if let v = root[key], v != .null, v.objectValue == nil { throw wrong(key, "null or an object") }
        }

        // The model: CLIP's byte-level BPE with "</w>" word ends.
        guard let model = root["model"] else { throw missing("model") }
        guard model.objectValue != nil else { throw wrong("model", "an object") }
        guard let type = model["type"] else { throw missing("model.type") }
        guard type.stringValue == "BPE" else { throw wrong("model.type", "\"BPE\" (CLIP's byte-pair encoding), not \(shown(type.serializedString))") }
        guard model["end_of_word_suffix"]?.stringValue == "</w>" else { throw wrong("model.end_of_word_suffix", "\"</w>\" (CLIP's word-end marker)") }
        func absentOr(_ key: String, _ allowed: [JSONValue], _ expected: String) throws(TensorFileError) {
            if let v = model[key], !allowed.contains(v) { throw wrong("model." + key, expected) }
        }
        try absentOr("continuing_subword_prefix", [.null, .string("")], "null or \"\"")
        try absentOr("dropout", [.null], "null (no BPE dropout)")
        try absentOr("fuse_unk", [.bool(false)], "false")
        try absentOr("byte_fallback", [.bool(false)], "false")
        try absentOr("ignore_merges", [.bool(false)], "false")
        if let u = model["unk_token"], u != .null, u.stringValue == nil { throw wrong("model.unk_token", "null or a string") }
        guard let vocabValue = model["vocab"] else { throw missing("model.vocab") }
        guard let entries = vocabValue.objectValue else { throw wrong("model.vocab", "an object of token ids") }
        vocabulary = try BPEVocabulary(entries: entries, file: file, field: "model.vocab")
        guard let mergesValue = model["merges"] else { throw missing("model.merges") }
        guard let merges = mergesValue.arrayValue else { throw wrong("model.merges", "an array") }
        guard merges.count <= CLIPTokenizer.maxMerges else {
            throw TensorFileError(file: file, .limitExceeded(what: "model.merges: \(merges.count) merges", limit: UInt64(CLIPTokenizer.maxMerges)))
        }
        vocabulary.merges.reserveCapacity(merges.count)
        for (i, m) in merges.enumerated() {
            // "left right" (tokenizers < 0.20) or ["left", "right"].
            var pair: (String, String)?
            if let s = m.stringValue {
                let parts = s.utf8.split(separator: 0x20, omittingEmptySubsequences: false)
                if parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty {
                    pair = (String(decoding: parts[0], as: UTF8.self), String(decoding: parts[1], as: UTF8.self))
                }
            } else if let a = m.arrayValue, a.count == 2, let l = a[0].stringValue, let r = a[1].stringValue, !l.isEmpty, !r.isEmpty {
                pair = (l, r)
            }
            guard let (l, r) = pair else {
                throw wrong("model.merges[\(i)]", "\"left right\" (one space) or [\"left\", \"right\"], not \(shown(m.serializedString))")
            }
            vocabulary.merges.append((l, r, i))
        }
        vocabulary.mergesFile = file
        vocabulary.mergesField = "model.merges"

        // CLIP's normaliser and pre-tokeniser (which lidb implements; see Tokenizer+Text.swift).
        guard let normalizer = root["normalizer"] else { throw missing("normalizer") }
        guard Self.isCLIPNormalizer(normalizer) else {
            throw wrong("normalizer", "CLIP's normaliser (Sequence of NFC, Replace \\s+ by \" \", Lowercase)")
        }
        guard let pre = root["pre_tokenizer"] else { throw missing("pre_tokenizer") }
        guard Self.isCLIPPreTokenizer(pre) else {
            throw wrong("pre_tokenizer", "CLIP's pre-tokeniser (Sequence of Split on CLIP's pattern, behavior Removed, invert true; ByteLevel without prefix space)")
        }

        // Added tokens.
        guard let addedValue = root["added_tokens"] else { throw missing("added_tokens") }
        guard let added = addedValue.arrayValue else { throw wrong("added_tokens", "an array") }
        guard added.count <= CLIPTokenizer.maxAddedTokens else {
            throw TensorFileError(file: file, .limitExceeded(what: "added_tokens: \(added.count) tokens", limit: UInt64(CLIPTokenizer.maxAddedTokens)))
        }
        var seenIDs: [Int: String] = [:], seenContents = Set<String>()
        for (i, t) in added.enumerated() {
            let f = "added_tokens[\(i)]"
            guard t.objectValue != nil else { throw wrong(f, "an object") }
            guard let idValue = t["id"] else { throw missing(f + ".id") }
            guard let id64 = idValue.int64Value, id64 >= 0, id64 < Int64(Int32.max) else { throw wrong(f + ".id", "an integer in [0, 2^31-1)") }
            guard let contentValue = t["content"] else { throw missing(f + ".content") }
            guard let content = contentValue.stringValue, !content.isEmpty else { throw wrong(f + ".content", "a non-empty string") }
            func flag(_ name: String, _ def: Bool) throws(TensorFileError) -> Bool {
                guard let v = t[name] else { return def }
                guard let b = v.boolValue else { throw wrong(f + "." + name, "a boolean") }
                return b
            }
            let special = try flag("special", false)
            let token = CLIPTokenizer.AddedToken(content, singleWord: try flag("single_word", false), lstrip: try flag("lstrip", false),
                                                 rstrip: try flag("rstrip", false), normalized: try flag("normalized", !special))
            let id = Int(id64)
            if let other = seenIDs[id] {
                throw TensorFileError(file: file, .invalidArgument("\(f): id \(id) is given to both '\(shown(other))' and '\(shown(content))'"))
            }
            guard seenContents.insert(content).inserted else {
                throw TensorFileError(file: file, .invalidArgument("\(f): '\(shown(content))' is listed twice"))
            }
            seenIDs[id] = content
            if let v = vocabulary.vocab[content], Int(v) != id {
                throw TensorFileError(file: file, .invalidArgument("\(f): '\(shown(content))' declares id \(id), but model.vocab gives it \(v)"))
            }
            if vocabulary.vocab[content] == nil, let other = vocabulary.idToToken[Int32(id)] {
                throw TensorFileError(file: file, .invalidArgument("\(f): '\(shown(content))' declares id \(id), which model.vocab gives to '\(shown(other))'"))
            }
            addedTokens.append(DeclaredToken(index: i, id: id, token: token))
        }
    }

    static func isCLIPNormalizer(_ n: JSONValue) -> Bool {
        guard n["type"]?.stringValue == "Sequence", let list = n["normalizers"]?.arrayValue, list.count == 3 else { return false }
        return list[0]["type"]?.stringValue == "NFC"
            && list[1]["type"]?.stringValue == "Replace" && list[1]["pattern"]?["Regex"]?.stringValue == #"\s+"#
            && list[1]["content"]?.stringValue == " "
            && list[2]["type"]?.stringValue == "Lowercase"
    }

    static func isCLIPPreTokenizer(_ p: JSONValue) -> Bool {
        guard p["type"]?.stringValue == "Sequence", let list = p["pretokenizers"]?.arrayValue, list.count == 2 else { return false }
        let split = list[0], byteLevel = list[1]
        guard split["type"]?.stringValue == "Split", let pattern = split["pattern"]?["Regex"]?.stringValue, splitPatterns.contains(pattern),
              split["behavior"]?.stringValue == "Removed", split["invert"]?.boolValue == true else { return false }
        guard byteLevel["type"]?.stringValue == "ByteLevel", byteLevel["add_prefix_space"]?.boolValue == false else { return false }
        if let r = byteLevel["use_regex"], r != .bool(true) { return false }
        return true
    }
}
