/// A JSON value that keeps object key order and the exact text of numbers.
///
/// Numbers keep their literal so integers of any size are never silently rounded and a value
/// read and written again has the same bytes. `JSONValue.parse` is strict (RFC 8259, no
/// duplicate keys, bounded depth); `serialized()` writes compact JSON the way serde_json does
/// (no spaces, `/` and non-ASCII unescaped), which is what safetensors' writer emits.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public static func int<T: BinaryInteger>(_ v: T) -> JSONValue { .number(String(v)) }

    /// A finite double, written in the shortest form that reads back to the same value.
    /// Non-finite values have no JSON form and become `null`.
    public static func double(_ v: Double) -> JSONValue {
        guard v.isFinite else { return .null }
        return .number("\(v)")
    }

    public subscript(key: String) -> JSONValue? {
        if case let .object(pairs) = self { return pairs.first { $0.0 == key }?.1 }
        return nil
    }

    /// The object with `key` set (replaced in place, or appended); other values are returned unchanged.
    public func setting(_ key: String, _ value: JSONValue) -> JSONValue {
        guard case var .object(pairs) = self else { return self }
        if let i = pairs.firstIndex(where: { $0.0 == key }) { pairs[i].1 = value } else { pairs.append((key, value)) }
        return .object(pairs)
    }

    /// The object without `key`.
    public func removing(_ key: String) -> JSONValue {
        guard case let .object(pairs) = self else { return self }
        return .object(pairs.filter { $0.0 != key })
    }

    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    public var arrayValue: [JSONValue]? { if case let .array(a) = self { return a }; return nil }
    public var objectValue: [(String, JSONValue)]? { if case let .object(o) = self { return o }; return nil }
    public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }

    /// True for a number literal without fraction or exponent.
    public var isInteger: Bool {
        if case let .number(s) = self { return !s.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) }
        return false
    }
    /// The value as Int64 when it is an integer literal in range.
    public var int64Value: Int64? { if case let .number(s) = self, isInteger { return Int64(s) }; return nil }
    public var uint64Value: UInt64? { if case let .number(s) = self, isInteger { return UInt64(s) }; return nil }
    public var doubleValue: Double? { if case let .number(s) = self { return Double(s) }; return nil }
}

// MARK: - Parsing

public struct JSONParseLimits: Sendable {
    public var maxDepth: Int
    public init(maxDepth: Int = 64) { self.maxDepth = maxDepth }
}

enum JSONParseError: Error, Equatable {
    case syntax(offset: Int, reason: String)
    case notUTF8(offset: Int)
    case tooDeep(limit: Int)
    case duplicateKey(String)
}

extension JSONValue {
    /// Parses exactly one JSON value spanning all of `bytes` (surrounding whitespace allowed).
    static func parse(_ bytes: UnsafeRawBufferPointer, limits: JSONParseLimits = .init()) throws(JSONParseError) -> JSONValue {
        var p = JSONParser(bytes: bytes, maxDepth: limits.maxDepth)
        p.skipWhitespace()
        let v = try p.parseValue(depth: 1)
        p.skipWhitespace()
        if p.pos != bytes.count { throw .syntax(offset: p.pos, reason: "unexpected data after the value") }
        return v
    }

    public static func parse(_ bytes: [UInt8], limits: JSONParseLimits = .init()) throws -> JSONValue {
        try bytes.withUnsafeBytes { buf in try parse(buf, limits: limits) }
    }
}

struct JSONParser {
    let bytes: UnsafeRawBufferPointer
    let maxDepth: Int
    var pos = 0

    init(bytes: UnsafeRawBufferPointer, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    @inline(__always) func peek() -> UInt8? { pos < bytes.count ? bytes[pos] : nil }

    mutating func skipWhitespace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    mutating func expect(_ literal: StaticString) throws(JSONParseError) {
        let n = literal.utf8CodeUnitCount
        guard pos + n <= bytes.count else { throw .syntax(offset: pos, reason: "unexpected end of input") }
        let ok = literal.withUTF8Buffer { lit in
            for i in 0..<n where bytes[pos + i] != lit[i] { return false }
            return true
        }
        guard ok else { throw .syntax(offset: pos, reason: "invalid literal") }
        pos += n
    }

    mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard let c = peek() else { throw .syntax(offset: pos, reason: "unexpected end of input") }
        switch c {
        case UInt8(ascii: "{"):
            guard depth <= maxDepth else { throw .tooDeep(limit: maxDepth) }
            return try parseObject(depth: depth)
        case UInt8(ascii: "["):
            guard depth <= maxDepth else { throw .tooDeep(limit: maxDepth) }
            return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw .syntax(offset: pos, reason: "unexpected character")
        }
    }

    mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        pos += 1
        var pairs: [(String, JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if peek() == UInt8(ascii: "}") { pos += 1; return .object(pairs) }
        while true {
            skipWhitespace()
            guard peek() == UInt8(ascii: "\"") else { throw .syntax(offset: pos, reason: "expected a string key") }
            let key = try parseString()
            guard seen.insert(key).inserted else { throw .duplicateKey(key) }
            skipWhitespace()
            guard peek() == UInt8(ascii: ":") else { throw .syntax(offset: pos, reason: "expected ':'") }
            pos += 1
            skipWhitespace()
            let v = try parseValue(depth: depth + 1)
            pairs.append((key, v))
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ","): pos += 1
            case UInt8(ascii: "}"): pos += 1; return .object(pairs)
            case nil: throw .syntax(offset: pos, reason: "unexpected end of input")
            default: throw .syntax(offset: pos, reason: "expected ',' or '}'")
            }
        }
    }

    mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        pos += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") { pos += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth + 1))
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ","): pos += 1
            case UInt8(ascii: "]"): pos += 1; return .array(items)
            case nil: throw .syntax(offset: pos, reason: "unexpected end of input")
            default: throw .syntax(offset: pos, reason: "expected ',' or ']'")
            }
        }
    }

    mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = pos
        var isInteger = true
        if peek() == UInt8(ascii: "-") { pos += 1 }
        guard let first = peek(), first >= 0x30, first <= 0x39 else { throw .syntax(offset: pos, reason: "invalid number") }
        if first == 0x30 {
            pos += 1
            if let d = peek(), d >= 0x30, d <= 0x39 { throw .syntax(offset: pos, reason: "leading zero in number") }
        } else {
            while let d = peek(), d >= 0x30, d <= 0x39 { pos += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            isInteger = false
            pos += 1
            guard let d = peek(), d >= 0x30, d <= 0x39 else { throw .syntax(offset: pos, reason: "invalid fraction") }
            while let d = peek(), d >= 0x30, d <= 0x39 { pos += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            isInteger = false
            pos += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { pos += 1 }
            guard let d = peek(), d >= 0x30, d <= 0x39 else { throw .syntax(offset: pos, reason: "invalid exponent") }
            while let d = peek(), d >= 0x30, d <= 0x39 { pos += 1 }
        }
        guard pos - start <= 400 else { throw .syntax(offset: start, reason: "number literal too long") }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        if !isInteger, let d = Double(text), !d.isFinite {
            throw .syntax(offset: start, reason: "number out of the range of a 64-bit float")
        }
        return .number(text)
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard pos + 4 <= bytes.count else { throw .syntax(offset: pos, reason: "unexpected end of input") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw .syntax(offset: pos, reason: "invalid \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    mutating func parseString() throws(JSONParseError) -> String {
        pos += 1  // opening quote
        var out: [UInt8] = []
        while true {
            // Fast path: a run of plain ASCII.
            let runStart = pos
            while pos < bytes.count {
                let c = bytes[pos]
                if c == 0x22 || c == 0x5C || c < 0x20 || c >= 0x80 { break }
                pos += 1
            }
            if pos > runStart { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[runStart..<pos])) }
            guard pos < bytes.count else { throw .syntax(offset: pos, reason: "unterminated string") }
            let c = bytes[pos]
            if c == 0x22 { pos += 1; break }
            if c < 0x20 { throw .syntax(offset: pos, reason: "control character in string") }
            if c >= 0x80 {
                let n = try validateUTF8Sequence(at: pos)
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[pos..<pos + n]))
                pos += n
                continue
            }
            // Backslash escape.
            pos += 1
            guard let e = peek() else { throw .syntax(offset: pos, reason: "unterminated escape") }
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard pos + 2 <= bytes.count, bytes[pos] == 0x5C, bytes[pos + 1] == UInt8(ascii: "u") else {
                        throw .syntax(offset: pos, reason: "unpaired surrogate in \\u escape")
                    }
                    pos += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw .syntax(offset: pos, reason: "unpaired surrogate in \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw .syntax(offset: pos, reason: "unpaired surrogate in \\u escape")
                }
                guard let u = Unicode.Scalar(scalar) else { throw .syntax(offset: pos, reason: "invalid \\u escape") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw .syntax(offset: pos - 1, reason: "invalid escape")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Length of the well-formed UTF-8 sequence at `i` (RFC 3629: no overlongs, no surrogates).
    func validateUTF8Sequence(at i: Int) throws(JSONParseError) -> Int {
        let b0 = bytes[i]
        func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> Bool {
            i + k < bytes.count && bytes[i + k] >= lo && bytes[i + k] <= hi
        }
        switch b0 {
        case 0xC2...0xDF: if cont(1) { return 2 }
        case 0xE0: if cont(1, 0xA0, 0xBF) && cont(2) { return 3 }
        case 0xE1...0xEC, 0xEE...0xEF: if cont(1) && cont(2) { return 3 }
        case 0xED: if cont(1, 0x80, 0x9F) && cont(2) { return 3 }
        case 0xF0: if cont(1, 0x90, 0xBF) && cont(2) && cont(3) { return 4 }
        case 0xF1...0xF3: if cont(1) && cont(2) && cont(3) { return 4 }
        case 0xF4: if cont(1, 0x80, 0x8F) && cont(2) && cont(3) { return 4 }
        default: break
        }
        throw .notUTF8(offset: i)
    }
}

// MARK: - Serialisation

extension JSONValue {
    /// Compact JSON, byte-compatible with serde_json's `to_string`.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(into: &out)
        return out
    }

    public var serializedString: String { String(decoding: serialized(), as: UTF8.self) }

    func write(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case let .bool(b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case let .number(s): out.append(contentsOf: s.utf8)
        case let .string(s): JSONValue.writeString(s, into: &out)
        case let .array(a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case let .object(o):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONValue.writeString(k, into: &out)
                out.append(UInt8(ascii: ":"))
                v.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ s: String, into out: inout [UInt8]) {
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        out.append(0x22)
        for b in s.utf8 {
            switch b {
            case 0x22: out.append(0x5C); out.append(0x22)
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x0A: out.append(0x5C); out.append(UInt8(ascii: "n"))
            case 0x0D: out.append(0x5C); out.append(UInt8(ascii: "r"))
            case 0x09: out.append(0x5C); out.append(UInt8(ascii: "t"))
            case 0x08: out.append(0x5C); out.append(UInt8(ascii: "b"))
            case 0x0C: out.append(0x5C); out.append(UInt8(ascii: "f"))
            case 0..<0x20:
                out.append(contentsOf: "\\u00".utf8)
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xF)])
            default: out.append(b)
            }
        }
        out.append(0x22)
    }
}
