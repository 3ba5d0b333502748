import Checkpoint
import Synchronization
import TensorFile

/// The CLIP byte-level BPE tokenizer: the ids of transformers' `CLIPTokenizer` for the same
/// `vocab.json`, `merges.txt` and special-token configuration.
///
/// The pipeline is the one transformers builds on `tokenizers`:
/// 1. added tokens (`<|startoftext|>`, `<|endoftext|>`, the pad token, …) are split out of the
///    text first: unnormalised ones in the raw text, normalised ones in the normalised text;
/// 2. the rest is normalised (NFC, whitespace runs to one space, lower case) and cut into words
///    by CLIP's pattern, then by the byte-level (GPT-2) pattern;
/// 3. each word's UTF-8 bytes become byte symbols (`bytes_to_unicode`), the last one with the
///    `</w>` suffix, and merges are applied lowest rank first (leftmost first among equal ranks)
///    with a priority queue;
/// 4. `<|startoftext|>` and `<|endoftext|>` go around the ids; truncation keeps the first
///    `length - 2` ids, padding appends the pad token's id.
///
/// Instances are immutable apart from a bounded word cache behind a lock, and may be shared.
public final class CLIPTokenizer: Sendable {
    public let config: Config
    public let bosID: Int
    public let eosID: Int
    public let unkID: Int
    public let padID: Int
    /// Entries of `vocab.json`.
    public let vocabularyCount: Int
    /// Merge rules (distinct pairs of `merges.txt`).
    public var mergeCount: Int { merges.count }

    let vocab: [String: Int32]
    let idToToken: [Int32: String]
    /// (left id, right id) → (rank, merged id), keyed `left << 32 | right`.
    let merges: [UInt64: Merge]
    /// Initial symbol id of each byte: `[0, 256)` inside a word, `[256, 512)` with `</w>`.
    let byteSymbols: [Int32]
    let rawPatterns: [TokenPattern]
    let normalizedPatterns: [TokenPattern]
    let cache = Mutex<[[UInt8]: [Int32]]>([:])

    struct Merge: Sendable {
        var rank: Int32
        var id: Int32
    }

    static let cacheCapacity = 10_000
    static let maxCachedWordBytes = 256

    /// Builds the tokenizer from the bytes of `vocab.json` and `merges.txt`.
    public convenience init(vocabJSON: [UInt8], merges mergesText: [UInt8], config: Config = Config()) throws(TensorFileError) {
        var vocabulary = try BPEVocabulary(vocabJSON: vocabJSON)
        try vocabulary.readMerges(mergesText)
        try self.init(vocabulary: vocabulary, config: config)
    }

    /// Builds the tokenizer from a parsed vocabulary and merge list. `declaredAddedTokens` are the
    /// `added_tokens` of a `tokenizer.json` (with the ids the file gives them), checked against
    /// the ids this tokenizer assigns when the configuration took its added tokens from them.
    init(vocabulary: BPEVocabulary, config: Config, declaredAddedTokens: [TokenizerJSON.DeclaredToken] = []) throws(TensorFileError) {
        self.config = config
        let vocab = vocabulary.vocab
        var idToToken = vocabulary.idToToken
        vocabularyCount = vocab.count

        // Added tokens: the id of a content in the vocabulary is its vocabulary id; others get new
        // ids after the vocabulary, in registration order. The last registration gives the flags.
        var addedIDs: [String: Int32] = [:]
        var flags: [String: AddedToken] = [:]
        var contentsInOrder: [String] = []
        for t in config.allAddedTokens where !t.content.isEmpty {
            if addedIDs[t.content] == nil {
                let id: Int32
                if let v = vocab[t.content] {
                    id = v
                } else {
                    let maxAdded = addedIDs.values.max()
                    id = maxAdded.map { $0 >= Int32(vocab.count) ? $0 + 1 : Int32(vocab.count) } ?? Int32(vocab.count)
                }
                addedIDs[t.content] = id
                idToToken[id] = idToToken[id] ?? t.content
                contentsInOrder.append(t.content)
            }
            flags[t.content] = t
        }
        if config.addedTokensFromTokenizerJSON {
            // transformers gives the tokens of tokenizer.json's `added_tokens` the ids above; a file
            // that declares others contradicts itself.
            for d in declaredAddedTokens {
                guard let id = addedIDs[d.token.content], Int(id) == d.id else {
                    let got = addedIDs[d.token.content].map { "\($0)" } ?? "none"
                    throw TensorFileError(file: "tokenizer.json", .invalidArgument(
                        "added_tokens[\(d.index)]: '\(shown(d.token.content))' declares id \(d.id), but its id is \(got) (a token of the vocabulary keeps its vocabulary id; the others take the ids after the vocabulary in id order)"))
                }
            }
        }
        func roleID(_ t: AddedToken, _ role: String) throws(TensorFileError) -> Int {
            guard let id = addedIDs[t.content] else {
                throw TensorFileError(file: "tokenizer_config.json", .invalidArgument("the \(role) token is empty"))
            }
            return Int(id)
        }
        bosID = try roleID(config.bosToken, "bos")
        eosID = try roleID(config.eosToken, "eos")
        unkID = try roleID(config.unkToken, "unk")
        padID = try roleID(config.padToken, "pad")
        guard config.modelMaxLength >= 2 else {
            throw TensorFileError(file: "tokenizer_config.json", .invalidArgument("model_max_length \(config.modelMaxLength) leaves no room for <|startoftext|> and <|endoftext|>"))
        }
        var raw: [TokenPattern] = [], normalized: [TokenPattern] = []
        for c in contentsInOrder {
            guard let t = flags[c], let id = addedIDs[c] else { continue }
            if t.normalized {
                let s = Array(c.unicodeScalars)
                let n = normalize(s[...])
                if !n.isEmpty { normalized.append(TokenPattern(scalars: n, id: id, token: t)) }
            } else {
                raw.append(TokenPattern(scalars: Array(c.unicodeScalars), id: id, token: t))
            }
        }
        rawPatterns = raw
        normalizedPatterns = normalized

        // Byte symbols; a symbol missing from the vocabulary reads as the unknown token.
        let unicodeOfByte = byteToUnicode()
        var symbols = [Int32](repeating: Int32(unkID), count: 512)
        for b in 0..<256 {
            let ch = String(unicodeOfByte[b])
            if let id = vocab[ch] { symbols[b] = id }
            if let id = vocab[ch + "</w>"] { symbols[256 + b] = id }
        }
        byteSymbols = symbols

        var merges: [UInt64: Merge] = [:]
        merges.reserveCapacity(vocabulary.merges.count)
        for (rank, m) in vocabulary.merges.enumerated() {
            func fail(_ what: String) -> TensorFileError {
                TensorFileError(file: vocabulary.mergesFile, .invalidArgument("\(vocabulary.mergePlace(m.place)): \(what)"))
            }
            guard let ia = vocab[m.a] else { throw fail("'\(shown(m.a))' is not in the vocabulary") }
            guard let ib = vocab[m.b] else { throw fail("'\(shown(m.b))' is not in the vocabulary") }
            guard let merged = vocab[m.a + m.b] else { throw fail("the merge '\(shown(m.a + m.b))' is not in the vocabulary") }
            // A pair listed twice keeps its last rank (as tokenizers' merge map does).
            merges[UInt64(UInt32(ia)) << 32 | UInt64(UInt32(ib))] = Merge(rank: Int32(rank), id: merged)
        }
        self.merges = merges
        self.vocab = vocab
        self.idToToken = idToToken
    }

    /// Loads the tokenizer stored in a base: `tokenizer.tokenizer.json` when present (as
    /// transformers ≥ 5 does, it then gives the vocabulary and merges), else
    /// `tokenizer.vocab.json` and `tokenizer.merges.txt`; with `tokenizer.tokenizer_config.json` /
    /// `tokenizer.special_tokens_map.json` when present.
    public convenience init(base: BaseModel) throws(TensorFileError) {
        let path = base.file.path
        var files: [String: [UInt8]] = [:]
        for name in Self.fileNames {
            if let e = base.file.entry("tokenizer." + name), e.info.byteCount > Self.maxFileSize {
                throw TensorFileError(file: path, tensor: "tokenizer." + name, .limitExceeded(what: "\(e.info.byteCount) bytes", limit: UInt64(Self.maxFileSize)))
            }
            if let b = try base.tokenizerFile(name) { files[name] = b }
        }
        guard files["tokenizer.json"] != nil || files["vocab.json"] != nil && files["merges.txt"] != nil else {
            throw TensorFileError(file: path, .unsupportedFormat(
                "the base has no tokenizer (tokenizer.tokenizer.json, or tokenizer.vocab.json and tokenizer.merges.txt); convert it again with this lidb version (it adds CLIP's tokenizer when the vocabulary fits), or with --config DIR naming a diffusers folder with one"))
        }
        // Errors name the base and the stored file ("tokenizer.vocab.json", …).
        do throws(TensorFileError) {
            try self.init(files: files)
        } catch {
            throw TensorFileError(file: path, tensor: "tokenizer." + error.file, error.problem)
        }
    }

    /// The files a tokenizer is read from, by name (as in a diffusers `tokenizer/` folder).
    public static let fileNames = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]

    /// Builds the tokenizer from the files of a diffusers `tokenizer/` folder, keyed by name:
    /// `tokenizer.json` when present, else `vocab.json` and `merges.txt`; the configuration from
    /// `tokenizer_config.json` and `special_tokens_map.json` when present. Errors name the file
    /// (`error.file` is the bare file name).
    public convenience init(files: [String: [UInt8]]) throws(TensorFileError) {
        if let json = files["tokenizer.json"] {
            try self.init(tokenizerJSON: json, tokenizerConfigJSON: files["tokenizer_config.json"],
                          specialTokensMapJSON: files["special_tokens_map.json"])
            return
        }
        guard let vocab = files["vocab.json"] else { throw TensorFileError(file: "vocab.json", .missingField("vocab.json (or tokenizer.json)")) }
        guard let merges = files["merges.txt"] else { throw TensorFileError(file: "merges.txt", .missingField("merges.txt (or tokenizer.json)")) }
        let config = try Config(tokenizerConfigJSON: files["tokenizer_config.json"], specialTokensMapJSON: files["special_tokens_map.json"])
        try self.init(vocabJSON: vocab, merges: merges, config: config)
    }

    // MARK: Encoding

    /// The ids of `text` with `<|startoftext|>` and `<|endoftext|>`, truncated to
    /// `config.modelMaxLength` (77), not padded: `tokenizer(text, truncation=True, max_length=77)`.
    public func encode(_ text: String) -> [Int] {
        encode(text, maxLength: config.modelMaxLength)
    }

    /// The ids of `text` truncated to `maxLength` (≥ 2) including `<|startoftext|>` and `<|endoftext|>`.
    public func encode(_ text: String, maxLength: Int) -> [Int] {
        precondition(maxLength >= 2, "maxLength must leave room for <|startoftext|> and <|endoftext|>")
        let body = tokenize(text)
        var out = [Int]()
        out.reserveCapacity(min(body.count, maxLength - 2) + 2)
        out.append(bosID)
        out.append(contentsOf: body.prefix(maxLength - 2))
        out.append(eosID)
        return out
    }

    /// `encode` truncated to `length` and padded with the pad token to exactly `length` ids:
    /// `tokenizer(text, padding="max_length", max_length=length, truncation=True)`.
    public func encodePadded(_ text: String, length: Int = 77) -> [Int] {
        var ids = encode(text, maxLength: length)
        if ids.count < length { ids.append(contentsOf: repeatElement(padID, count: length - ids.count)) }
        return ids
    }

    /// The ids of `text` without `<|startoftext|>`/`<|endoftext|>` and without truncation.
    public func tokenize(_ text: String) -> [Int] {
        let scalars = Array(text.unicodeScalars)
        var ids: [Int32] = []
        ids.reserveCapacity(scalars.count / 3 + 4)
        var parts: [TextPart] = []
        splitAddedTokens(scalars, 0..<scalars.count, rawPatterns, into: &parts)
        var word: [UInt8] = []
        for part in parts {
            switch part {
            case let .token(id): ids.append(id)
            case let .text(r):
                let norm = normalize(scalars[r])
                var inner: [TextPart] = []
                splitAddedTokens(norm, 0..<norm.count, normalizedPatterns, into: &inner)
                for p in inner {
                    switch p {
                    case let .token(id): ids.append(id)
                    case let .text(r2):
                        forEachPreToken(norm, r2) { w in
                            word.removeAll(keepingCapacity: true)
                            for k in w { appendUTF8(norm[k], to: &word) }
                            bpe(word, into: &ids)
                        }
                    }
                }
            }
        }
        return ids.map { Int($0) }
    }

    /// The vocabulary id of a token string (`"a</w>"`, `"<|endoftext|>"`, …).
    public func id(of token: String) -> Int? {
        if let p = (rawPatterns + normalizedPatterns).first(where: { $0.token.content == token }) { return Int(p.id) }
        return vocab[token].map { Int($0) }
    }

    /// The token string of an id.
    public func token(of id: Int) -> String? {
        guard id >= 0, id <= Int(Int32.max) else { return nil }
        return idToToken[Int32(id)]
    }

    // MARK: BPE

    /// Appends the BPE ids of one word (its UTF-8 bytes).
    func bpe(_ word: [UInt8], into ids: inout [Int32]) {
        guard !word.isEmpty else { return }
        let cacheable = word.count <= Self.maxCachedWordBytes
        if cacheable, let hit = cache.withLock({ $0[word] }) {
            ids.append(contentsOf: hit)
            return
        }
        let result = merge(word)
        if cacheable {
            cache.withLock { c in
                if c.count < Self.cacheCapacity { c[word] = result }
            }
        }
        ids.append(contentsOf: result)
    }

    /// `tokenizers`' `Word::merge_all`: a min-heap of (rank, position) candidates; a candidate whose
    /// pair has changed since it was queued is skipped.
    func merge(_ word: [UInt8]) -> [Int32] {
        let n = word.count
        var sym = [Int32](repeating: 0, count: n)
        var prev = [Int](repeating: -1, count: n)
        var next = [Int](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0..<n {
            sym[i] = byteSymbols[(i == n - 1 ? 256 : 0) + Int(word[i])]
            prev[i] = i - 1
            next[i] = i + 1 < n ? i + 1 : -1
        }
        if n == 1 { return sym }
        var heap = MergeHeap()
        for i in 0..<(n - 1) {
            if let m = merges[key(sym[i], sym[i + 1])] { heap.push(rank: m.rank, pos: i, id: m.id) }
        }
        while let top = heap.pop() {
            let pos = top.pos
            guard alive[pos] else { continue }
            let nx = next[pos]
            guard nx >= 0 else { continue }
            guard let m = merges[key(sym[pos], sym[nx])], m.id == top.id else { continue }
            sym[pos] = top.id
            alive[nx] = false
            let after = next[nx]
            next[pos] = after
            if after >= 0 { prev[after] = pos }
            let pv = prev[pos]
            if pv >= 0, let m2 = merges[key(sym[pv], sym[pos])] { heap.push(rank: m2.rank, pos: pv, id: m2.id) }
            if after >= 0, let m3 = merges[key(sym[pos], sym[after])] { heap.push(rank: m3.rank, pos: pos, id: m3.id) }
        }
        var out: [Int32] = []
        var i = 0
        while i >= 0 { out.append(sym[i]); i = next[i] }
        return out
    }

    @inline(__always) private func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }
}

/// A binary min-heap of merge candidates ordered by (rank, position).
struct MergeHeap {
    private var keys: [UInt64] = []
    private var ids: [Int32] = []

    mutating func push(rank: Int32, pos: Int, id: Int32) {
        keys.append(UInt64(UInt32(rank)) << 32 | UInt64(UInt32(pos)))
        ids.append(id)
        var i = keys.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            guard keys[i] < keys[p] else { break }
            keys.swapAt(i, p)
            ids.swapAt(i, p)
            i = p
        }
    }

    mutating func pop() -> (pos: Int, id: Int32)? {
        guard let first = keys.first else { return nil }
        let result = (pos: Int(first & 0xFFFF_FFFF), id: ids[0])
        let lastKey = keys.removeLast(), lastID = ids.removeLast()
        if !keys.isEmpty {
            keys[0] = lastKey
            ids[0] = lastID
            var i = 0
            let n = keys.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && keys[l] < keys[m] { m = l }
                if r < n && keys[r] < keys[m] { m = r }
                if m == i { break }
                keys.swapAt(i, m)
                ids.swapAt(i, m)
                i = m
            }
        }
        return result
    }
}

/// GPT-2's reversible byte → printable character map: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100 onwards in byte order.
func byteToUnicode() -> [Character] {
    var map = [Character](repeating: " ", count: 256)
    var n: UInt32 = 0
    for b in 0..<256 {
        let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
        if printable {
            map[b] = Character(Unicode.Scalar(UInt32(b))!)
        } else {
            map[b] = Character(Unicode.Scalar(256 + n)!)
            n += 1
        }
    }
    return map
}

@inline(__always)
func appendUTF8(_ s: Unicode.Scalar, to out: inout [UInt8]) {
    let v = s.value
    switch v {
    case 0..<0x80: out.append(UInt8(v))
    case 0x80..<0x800:
        out.append(UInt8(0xC0 | v >> 6)); out.append(UInt8(0x80 | v & 0x3F))
    case 0x800..<0x10000:
        out.append(UInt8(0xE0 | v >> 12)); out.append(UInt8(0x80 | v >> 6 & 0x3F)); out.append(UInt8(0x80 | v & 0x3F))
    default:
        out.append(UInt8(0xF0 | v >> 18)); out.append(UInt8(0x80 | v >> 12 & 0x3F))
        out.append(UInt8(0x80 | v >> 6 & 0x3F)); out.append(UInt8(0x80 | v & 0x3F))
    }
}
