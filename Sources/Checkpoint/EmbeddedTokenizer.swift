import CEmbeddedVocabulary
import CZstd
import TensorFile

/// The tokenizer every Stable Diffusion 1.x/2.x model uses, compiled into the program: CLIP's BPE
/// vocabulary (49,408 tokens, 48,894 merges) with the special-token configuration of the released
/// pipelines. SD 1.x (stable-diffusion-v1-5) pads with `<|endoftext|>`; SD 2.x (stabilityai's
/// stable-diffusion-2-1, whose OpenCLIP text encoder was trained with zero padding) pads with
/// `"!"`, id 0. A single-file checkpoint carries no tokenizer, so a base converted from one gets
/// these files (`--config DIR` with a `tokenizer/` folder takes precedence).
public enum EmbeddedTokenizer {
    /// Rows of the text encoder's token embedding that the vocabulary needs.
    public static let vocabularySize = 49_408

    /// `vocab.json`, byte for byte as `samples/clip-tokenizer/vocab.json`.
    public static func vocabJSON() throws(TensorFileError) -> [UInt8] {
        var n = 0
        let p = lidb_clip_vocab_json_zst(&n)
        return try decode(p, n, name: "vocab.json")
    }

    /// `merges.txt`, byte for byte as `samples/clip-tokenizer/merges.txt`.
    public static func mergesText() throws(TensorFileError) -> [UInt8] {
        var n = 0
        let p = lidb_clip_merges_txt_zst(&n)
        return try decode(p, n, name: "merges.txt")
    }

    /// The pad token of a family: `<|endoftext|>` (SD 1.x) or `"!"` (SD 2.x).
    public static func padToken(_ family: Architecture.Family) -> String {
        family == .sd2 ? "!" : "<|endoftext|>"
    }

    /// `tokenizer_config.json` of the released pipeline of `family` (the fields transformers reads;
    /// the same bytes as the generator's `sd1`/`sd2` fixture layouts).
    public static func tokenizerConfigJSON(_ family: Architecture.Family) -> [UInt8] {
        Array("""
        {
          "add_prefix_space": false,
          "bos_token": \(addedToken("<|startoftext|>", typed: true)),
          "do_lower_case": true,
          "eos_token": \(addedToken("<|endoftext|>", typed: true)),
          "errors": "replace",
          "model_max_length": 77,
          "pad_token": "\(padToken(family))",
          "tokenizer_class": "CLIPTokenizer",
          "unk_token": \(addedToken("<|endoftext|>", typed: true))
        }

        """.utf8)
    }

    /// `special_tokens_map.json` of the released pipeline of `family`.
    public static func specialTokensMapJSON(_ family: Architecture.Family) -> [UInt8] {
        Array("""
        {
          "bos_token": \(addedToken("<|startoftext|>", typed: false)),
          "eos_token": \(addedToken("<|endoftext|>", typed: false)),
          "pad_token": "\(padToken(family))",
          "unk_token": \(addedToken("<|endoftext|>", typed: false))
        }

        """.utf8)
    }

    /// The four files a base stores as `tokenizer.<name>`.
    public static func files(_ family: Architecture.Family) throws(TensorFileError) -> [String: [UInt8]] {
        [
            "vocab.json": try vocabJSON(),
            "merges.txt": try mergesText(),
            "tokenizer_config.json": tokenizerConfigJSON(family),
            "special_tokens_map.json": specialTokensMapJSON(family),
        ]
    }

    private static func addedToken(_ content: String, typed: Bool) -> String {
        let indent = "    "
        var lines = typed ? ["\(indent)\"__type\": \"AddedToken\","] : []
        lines += ["\(indent)\"content\": \"\(content)\",", "\(indent)\"lstrip\": false,", "\(indent)\"normalized\": true,",
                  "\(indent)\"rstrip\": false,", "\(indent)\"single_word\": false"]
        return "{\n" + lines.joined(separator: "\n") + "\n  }"
    }

    /// The largest decoded file accepted (the vocabulary is under 1 MiB).
    static let maxDecodedSize: UInt64 = 16 << 20

    private static func decode(_ p: UnsafePointer<UInt8>?, _ n: Int, name: String) throws(TensorFileError) -> [UInt8] {
        let file = "embedded tokenizer " + name
        guard let p, n > 0 else { throw TensorFileError(file: file, .decompressionFailed("missing from the build")) }
        let declared = ZSTD_getFrameContentSize(p, n)
        guard declared != ZSTD_CONTENTSIZE_ERROR, declared != ZSTD_CONTENTSIZE_UNKNOWN, declared > 0, declared <= maxDecodedSize else {
            throw TensorFileError(file: file, .decompressionFailed("not a zstd frame of a known size up to \(maxDecodedSize) bytes"))
        }
        let size = Int(declared)
        var out = [UInt8](repeating: 0, count: size)
        let r = out.withUnsafeMutableBytes { ZSTD_decompress($0.baseAddress, size, p, n) }
        guard ZSTD_isError(r) == 0, r == size else {
            let why = ZSTD_isError(r) != 0 ? String(cString: ZSTD_getErrorName(r)) : "decoded to \(r) bytes, expected \(size)"
            throw TensorFileError(file: file, .decompressionFailed(why))
        }
        return out
    }
}
