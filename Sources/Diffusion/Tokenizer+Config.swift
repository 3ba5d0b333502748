import TensorFile

extension CLIPTokenizer {
    /// A token that is split out of the text before BPE (transformers' / tokenizers' `AddedToken`).
    ///
    /// `normalized` tokens are matched in the normalised (NFC, whitespace-collapsed, lower-cased)
    /// text, the others in the raw text. `lstrip`/`rstrip` make the match swallow whitespace on
    /// that side; `singleWord` keeps a match only when no letter or digit touches it.
    public struct AddedToken: Sendable, Equatable, Hashable {
        public var content: String
        public var singleWord: Bool
        public var lstrip: Bool
        public var rstrip: Bool
        public var normalized: Bool

        public init(_ content: String, singleWord: Bool = false, lstrip: Bool = false, rstrip: Bool = false, normalized: Bool = false) {
            self.content = content
            self.singleWord = singleWord
            self.lstrip = lstrip
            self.rstrip = rstrip
            self.normalized = normalized
        }
    }

    /// The special tokens and length of a tokenizer, as `tokenizer_config.json` and
    /// `special_tokens_map.json` give them.
    ///
    /// The defaults are `CLIPTokenizer`'s own: `<|startoftext|>` / `<|endoftext|>`, unknown and
    /// padding `<|endoftext|>` (Stable Diffusion 1.x). SD 2.x tokenizers pad with `"!"` (id 0).
    public struct Config: Sendable, Equatable {
        public var bosToken: AddedToken
        public var eosToken: AddedToken
        public var unkToken: AddedToken
        public var padToken: AddedToken
        public var sepToken: AddedToken?
        public var clsToken: AddedToken?
        public var maskToken: AddedToken?
        /// `additional_special_tokens` / `extra_special_tokens`.
        public var additionalSpecialTokens: [AddedToken]
        /// The entries of `added_tokens_decoder`, in id order.
        public var addedTokensTable: [AddedToken]
        /// `model_max_length`: the truncation and padding length (77 for every SD text encoder;
        /// 77 when the configuration does not say).
        public var modelMaxLength: Int
        /// The added-token table came from `tokenizer.json`'s `added_tokens` (the configuration
        /// has no `added_tokens_decoder`), whose declared ids are then checked.
        public var addedTokensFromTokenizerJSON = false

        public init(bosToken: AddedToken = AddedToken("<|startoftext|>"), eosToken: AddedToken = AddedToken("<|endoftext|>"),
                    unkToken: AddedToken = AddedToken("<|endoftext|>"), padToken: AddedToken = AddedToken("<|endoftext|>"),
                    sepToken: AddedToken? = nil, clsToken: AddedToken? = nil, maskToken: AddedToken? = nil,
                    additionalSpecialTokens: [AddedToken] = [], addedTokensTable: [AddedToken] = [], modelMaxLength: Int = 77) {
            self.bosToken = bosToken
            self.eosToken = eosToken
            self.unkToken = unkToken
            self.padToken = padToken
            self.sepToken = sepToken
            self.clsToken = clsToken
            self.maskToken = maskToken
            self.additionalSpecialTokens = additionalSpecialTokens
            self.addedTokensTable = addedTokensTable
            self.modelMaxLength = modelMaxLength
        }

        /// Stable Diffusion 1.x: pads with `<|endoftext|>`.
        public static var sd1: Config { Config() }
        /// Stable Diffusion 2.x (OpenCLIP): pads with `"!"`.
        public static var sd2: Config { Config(padToken: AddedToken("!")) }

        /// Every token split out of the text, in transformers' registration order: the added-token
        /// table, then bos, eos, unk, sep, pad, cls, mask, then the additional special tokens. A
        /// content registered twice takes the flags of its last registration (as `tokenizers`'
        /// added vocabulary does).
        var allAddedTokens: [AddedToken] {
            var all = addedTokensTable + [bosToken, eosToken, unkToken]
            if let sepToken { all.append(sepToken) }
            all.append(padToken)
            if let clsToken { all.append(clsToken) }
            if let maskToken { all.append(maskToken) }
            return all + additionalSpecialTokens
        }

        /// Reads the two JSON files of a tokenizer folder (either may be missing) the way
        /// transformers' `from_pretrained` does: with an `added_tokens_decoder` in
        /// `tokenizer_config.json`, that table gives the tokens and their flags and
        /// `special_tokens_map.json` is not read; otherwise `special_tokens_map.json` overrides
        /// `tokenizer_config.json` key by key. A token given as a plain string is matched
        /// unnormalised; one given as an object has its own flags. Without an
        /// `added_tokens_decoder`, the `added_tokens` of a `tokenizer.json` (when there is one)
        /// take its place, as transformers ≥ 5 reads them.
        public init(tokenizerConfigJSON: [UInt8]?, specialTokensMapJSON: [UInt8]?,
                    tokenizerJSONAddedTokens: [(id: Int, token: AddedToken)]? = nil) throws(TensorFileError) {
            self.init()
            let configFile = "tokenizer_config.json", mapFile = "special_tokens_map.json"
            if let b = tokenizerConfigJSON { try checkSize(b, file: configFile) }
            if let b = specialTokensMapJSON { try checkSize(b, file: mapFile) }
            // Each value with the file it comes from (for defaults and messages).
            var values: [String: (value: JSONValue, file: String)] = [:]
            if let b = tokenizerConfigJSON {
                guard let o = try JSONValue.parse(b, file: configFile).objectValue else {
                    throw TensorFileError(file: configFile, .wrongType(field: "(top level)", expected: "an object"))
                }
                for (k, v) in o { values[k] = (v, configFile) }
            }
            var decoder: [(Int, AddedToken)] = []
            if let d = values["added_tokens_decoder"]?.value {
                guard let entries = d.objectValue else {
                    throw TensorFileError(file: configFile, .wrongType(field: "added_tokens_decoder", expected: "an object"))
                }
                for (k, v) in entries {
                    guard let id = Int(k), id >= 0 else {
                        throw TensorFileError(file: configFile, .wrongType(field: "added_tokens_decoder key '\(k)'", expected: "a token id"))
                    }
                    guard case .object = v else {
                        throw TensorFileError(file: configFile, .wrongType(field: "added_tokens_decoder.\(k)", expected: "an object"))
                    }
                    decoder.append((id, try Self.token(v, field: "added_tokens_decoder.\(k)", file: configFile, special: false)))
                }
            } else {
                if let b = specialTokensMapJSON {
                    guard let o = try JSONValue.parse(b, file: mapFile).objectValue else {
                        throw TensorFileError(file: mapFile, .wrongType(field: "(top level)", expected: "an object"))
                    }
                    for (k, v) in o { values[k] = (v, mapFile) }
                }
                if let fromJSON = tokenizerJSONAddedTokens {
                    decoder = fromJSON.map { ($0.id, $0.token) }
                    addedTokensFromTokenizerJSON = true
                }
            }
            if let m = values["model_max_length"]?.value {
                // transformers' "no limit" sentinel (1e30) and other out-of-range values keep 77.
                if let n = m.int64Value, n >= 2, n <= 1 << 20 { modelMaxLength = Int(n) }
            }
            let byContent = Dictionary(decoder.map { ($0.1.content, $0.1) }, uniquingKeysWith: { _, b in b })
            // Tokens from special_tokens_map.json are special (not normalised unless they say so);
            // objects in tokenizer_config.json are not, unless they say so.
            func resolve(_ v: JSONValue, field: String, file: String) throws(TensorFileError) -> AddedToken {
                let t = try Self.token(v, field: field, file: file, special: file == mapFile)
                return byContent[t.content] ?? t
            }
            func role(_ key: String) throws(TensorFileError) -> AddedToken? {
                guard let (v, file) = values[key], v != .null else { return nil }
                return try resolve(v, field: key, file: file)
            }
            addedTokensTable = decoder.sorted { $0.0 < $1.0 }.map(\.1)
            if let t = try role("bos_token") { bosToken = t }
            if let t = try role("eos_token") { eosToken = t }
            if let t = try role("unk_token") { unkToken = t }
            if let t = try role("pad_token") { padToken = t }
            sepToken = try role("sep_token")
            clsToken = try role("cls_token")
            maskToken = try role("mask_token")
            for key in ["additional_special_tokens", "extra_special_tokens"] {
                guard let (v, file) = values[key], v != .null else { continue }
                // A list, or (transformers 5) an object naming model-specific special tokens.
                guard let list = v.arrayValue ?? v.objectValue?.map(\.1) else {
                    throw TensorFileError(file: file, .wrongType(field: key, expected: "a list of tokens"))
                }
                for (i, e) in list.enumerated() {
                    additionalSpecialTokens.append(try resolve(e, field: "\(key)[\(i)]", file: file))
                }
                break
            }
        }

        /// One token: a string (unnormalised, no stripping) or an object with `content` and flags.
        static func token(_ v: JSONValue, field: String, file: String, special specialDefault: Bool) throws(TensorFileError) -> AddedToken {
            if let s = v.stringValue { return AddedToken(s) }
            guard case .object = v else { throw TensorFileError(file: file, .wrongType(field: field, expected: "a string or a token object")) }
            guard let content = v["content"]?.stringValue else {
                throw TensorFileError(file: file, .wrongType(field: field + ".content", expected: "a string"))
            }
            func flag(_ name: String, _ def: Bool) throws(TensorFileError) -> Bool {
                guard let f = v[name], f != .null else { return def }
                guard let b = f.boolValue else { throw TensorFileError(file: file, .wrongType(field: field + "." + name, expected: "a boolean")) }
                return b
            }
            let special = try flag("special", specialDefault)
            return AddedToken(content, singleWord: try flag("single_word", false), lstrip: try flag("lstrip", false),
                              rstrip: try flag("rstrip", false), normalized: try flag("normalized", !special))
        }
    }
}
