// Text handling of the CLIP tokenizer, as transformers' `CLIPTokenizer` sets up its `tokenizers`
// backend: normaliser NFC → `\s+` to one space → lower case; pre-tokeniser: the CLIP split
// pattern (matches kept, the rest dropped), then the byte-level pre-tokeniser's GPT-2 pattern on
// each piece. The patterns are matched here by hand over Unicode scalars.

/// The character classes the patterns use: `\s`, `\p{L}`, `\p{N}`, everything else.
enum CharClass: UInt8 {
    case space, letter, number, other
}

/// `\s` / `\p{L}` / `\p{N}` as the regex engine of `tokenizers` (Oniguruma, Unicode 16 tables)
/// decides them. Scalars assigned after Unicode 16 are unassigned there, so neither letters nor
/// numbers; `\s` is the White_Space property (checked against the engine for every scalar).
@inline(__always)
func charClass(_ s: Unicode.Scalar) -> CharClass {
    let v = s.value
    if v < 0x80 { return asciiClass[Int(v)] }
    let p = s.properties
    if p.isWhitespace { return .space }
    if let age = p.age, age.major > 16 { return .other }
    switch p.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
    case .decimalNumber, .letterNumber, .otherNumber: return .number
    default: return .other
    }
}

private let asciiClass: [CharClass] = (0..<128).map { v -> CharClass in
    switch v {
    case 0x09...0x0D, 0x20: return .space
    case 0x30...0x39: return .number
    case 0x41...0x5A, 0x61...0x7A: return .letter
    default: return .other
    }
}

/// Rust's `char::is_whitespace` (White_Space), used by the added tokens' `lstrip`/`rstrip`.
@inline(__always)
func isWhitespace(_ s: Unicode.Scalar) -> Bool {
    s.value < 0x80 ? asciiClass[Int(s.value)] == .space : s.properties.isWhitespace
}

/// Rust's regex `\w` (Alphabetic, marks, decimal digits, connector punctuation, joiners), which
/// decides whether a `single_word` token match touches a word.
func isWordCharacter(_ s: Unicode.Scalar) -> Bool {
    if s.value < 0x80 { let c = asciiClass[Int(s.value)]; return c == .letter || c == .number || s == "_" }
    let p = s.properties
    if p.isAlphabetic || p.isJoinControl { return true }
    switch p.generalCategory {
    case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
    default: return false
    }
}

/// The normaliser: NFC, every run of `\s` to one space, then each scalar replaced by its full
/// lower-case mapping (no context rules such as final sigma, as `tokenizers` does it).
func normalize(_ text: ArraySlice<Unicode.Scalar>) -> [Unicode.Scalar] {
    var composed: [Unicode.Scalar]
    // Scalars below U+0300 are NFC-stable and compose with nothing that precedes them.
    if text.allSatisfy({ $0.value < 0x300 }) {
        composed = Array(text)
    } else {
        // The NFC of `tokenizers` (the unicode-normalization-alignments crate) differs from
        // Swift's in two ways, both handled by composing the text in pieces that no reordering or
        // composition crosses:
        // - it does not compose U+11935 U+11930 into U+11938 (DIVES AKURU VOWEL SIGN O), the one
        //   difference found over every canonical decomposition. U+11930 is a starter, so a piece
        //   beginning at each U+11930 keeps that pair apart and changes nothing else;
        // - its canonical combining classes are Unicode 9.0's: a mark with a nonzero class added
        //   later (U+1AC0, U+1DFA, U+0898, ...) is a starter there, which is not reordered with
        //   the marks around it and composes with nothing. Such a mark is a piece of its own.
        composed = []
        var start = text.startIndex
        var piece = ""
        func flush() {
            if piece.isEmpty { return }
            composed.append(contentsOf: String(decoding: piece._nfcCodeUnits, as: UTF8.self).unicodeScalars)
            piece = ""
        }
        while start < text.endIndex {
            let c = text[start]
            if c.value == 0x11930 {
                flush()
            } else if isLateMark(c) {
                flush()
                composed.append(c)
                start = text.index(after: start)
                continue
            }
            piece.unicodeScalars.append(c)
            start = text.index(after: start)
        }
        flush()
    }
    var out: [Unicode.Scalar] = []
    out.reserveCapacity(composed.count)
    var inSpace = false
    for c in composed {
        if charClass(c) == .space {
            if !inSpace { out.append(" ") }
            inSpace = true
            continue
        }
        inSpace = false
        if c.value < 0x80 {
            out.append(c.value >= 0x41 && c.value <= 0x5A ? Unicode.Scalar(c.value + 0x20)! : c)
        } else {
            let p = c.properties
            if p.changesWhenLowercased { out.append(contentsOf: p.lowercaseMapping.unicodeScalars) } else { out.append(c) }
        }
    }
    return out
}

/// A mark with a nonzero canonical combining class that Unicode 9.0 did not have: `tokenizers`'
/// NFC takes it for a starter (class 0) that composes with nothing.
@inline(__always)
func isLateMark(_ s: Unicode.Scalar) -> Bool {
    guard s.value >= 0x300 else { return false }
    let p = s.properties
    guard p.canonicalCombiningClass.rawValue != 0, let age = p.age else { return false }
    return age.major > 9
}

private let startOfText = Array("<|startoftext|>".unicodeScalars)
private let endOfText = Array("<|endoftext|>".unicodeScalars)

@inline(__always)
private func hasPrefix(_ s: [Unicode.Scalar], at i: Int, end: Int, _ p: [Unicode.Scalar]) -> Bool {
    guard end - i >= p.count else { return false }
    for k in 0..<p.count where s[i + k] != p[k] { return false }
    return true
}

/// Length of a contraction `'s|'t|'re|'ve|'m|'ll|'d` at `i` (0 if none).
@inline(__always)
private func contraction(_ s: [Unicode.Scalar], at i: Int, end: Int) -> Int {
    guard s[i] == "'", i + 1 < end else { return 0 }
    switch s[i + 1] {
    case "s", "t", "m", "d": return 2
    case "r", "v":
        return i + 2 < end && s[i + 2] == "e" ? 3 : 0
    case "l":
        return i + 2 < end && s[i + 2] == "l" ? 3 : 0
    default: return 0
    }
}

/// Calls `body` with each pre-token of the normalised text `s[range]`: the matches of
/// `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
/// (what lies between matches is dropped), each split again by the byte-level pre-tokeniser's
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
func forEachPreToken(_ s: [Unicode.Scalar], _ range: Range<Int>, _ body: (Range<Int>) -> Void) {
    var i = range.lowerBound
    let end = range.upperBound
    while i < end {
        let c = s[i]
        let cls = charClass(c)
        if cls == .space { i += 1; continue }
        var j: Int
        if c == "<" && hasPrefix(s, at: i, end: end, startOfText) {
            j = i + startOfText.count
        } else if c == "<" && hasPrefix(s, at: i, end: end, endOfText) {
            j = i + endOfText.count
        } else if case let n = contraction(s, at: i, end: end), n > 0 {
            j = i + n
        } else if cls == .letter {
            j = i + 1
            while j < end && charClass(s[j]) == .letter { j += 1 }
        } else if cls == .number {
            j = i + 1
        } else {
            j = i + 1
            while j < end && charClass(s[j]) == .other { j += 1 }
        }
        splitByteLevel(s, i..<j, body)
        i = j
    }
}

/// The GPT-2 pattern over one CLIP piece (which holds no whitespace).
private func splitByteLevel(_ s: [Unicode.Scalar], _ range: Range<Int>, _ body: (Range<Int>) -> Void) {
    var i = range.lowerBound
    let end = range.upperBound
    while i < end {
        var j: Int
        let n = contraction(s, at: i, end: end)
        if n > 0 {
            j = i + n
        } else {
            let cls = charClass(s[i])
            j = i + 1
            while j < end && charClass(s[j]) == cls { j += 1 }
        }
        body(i..<j)
        i = j
    }
}

/// One added token ready for matching: its pattern (normalised when the token is), id and flags.
struct TokenPattern {
    var scalars: [Unicode.Scalar]
    var id: Int32
    var token: CLIPTokenizer.AddedToken
}

/// A part of the text: an added token's id, or a range still to be tokenised.
enum TextPart {
    case token(Int32)
    case text(Range<Int>)
}

/// `tokenizers`' added-vocabulary split: leftmost-longest, non-overlapping matches of the
/// patterns in `s[range]`; a `single_word` match touching a letter or digit is skipped (the
/// search goes on after it); `lstrip`/`rstrip` extend a match over adjacent whitespace.
func splitAddedTokens(_ s: [Unicode.Scalar], _ range: Range<Int>, _ patterns: [TokenPattern], into parts: inout [TextPart]) {
    if patterns.isEmpty || range.isEmpty {
        if !range.isEmpty { parts.append(.text(range)) }
        return
    }
    var last = range.lowerBound
    var i = range.lowerBound
    let end = range.upperBound
    while i < end {
        var best = -1
        var bestLen = 0
        for (k, p) in patterns.enumerated() where p.scalars.count > bestLen && p.scalars[0] == s[i] && hasPrefix(s, at: i, end: end, p.scalars) {
            best = k
            bestLen = p.scalars.count
        }
        guard best >= 0 else { i += 1; continue }
        let p = patterns[best]
        var start = i, stop = i + bestLen
        i = stop
        if p.token.singleWord {
            let before = start > range.lowerBound && isWordCharacter(s[start - 1])
            let after = stop < end && isWordCharacter(s[stop])
            if before || after { continue }
        }
        if p.token.lstrip {
            var b = start
            while b > range.lowerBound && isWhitespace(s[b - 1]) { b -= 1 }
            start = max(b, last)
        }
        if p.token.rstrip {
            while stop < end && isWhitespace(s[stop]) { stop += 1 }
        }
        if last < start { parts.append(.text(last..<start)) }
        parts.append(.token(p.id))
        last = stop
    }
    if last < end { parts.append(.text(last..<end)) }
}
