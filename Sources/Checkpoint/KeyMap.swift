import TensorFile

/// Name maps between checkpoint layouts, expanded from declarative rules (converters/maps/*.json)
/// for one concrete model (the loop bounds and block kinds come from its configuration).
///
/// An entry maps an LDM name (or name prefix, when it ends in ".") to one base name/prefix, or —
/// for a `split` entry — one LDM tensor to several base tensors stacked along dimension 0.
public struct KeyMap: Sendable {
    public struct Entry: Sendable, Equatable {
        public var ldm: String
        public var base: [String]
        /// LDM holds `[o, i, 1, 1]` where the base holds `[o, i]` (weights only).
        public var reshape1x1: Bool
        public var isPrefix: Bool { ldm.hasSuffix(".") }
    }

    public let entries: [Entry]
    /// LDM names kept aside although a rule matches them (no diffusers counterpart).
    public let ldmExtras: Set<String>
    private let byLDM: [String: Int]
    private let byBase: [String: Int]

    /// Expands the rules of `architecture` in `map` with the given variables.
    public init(map: JSONValue, architecture: String, variables: [String: ExprValue]) throws(KeyMapError) {
        guard let comps = map["architectures"]?[architecture]?.arrayValue else {
            throw .invalid("architecture '\(architecture)' is not in the map")
        }
        var out: [Entry] = []
        var extras = Set<String>()
        for c in comps {
            guard let cname = c.stringValue, let comp = map["components"]?[cname],
                  let ldmPrefix = comp["ldm"]?.stringValue, let basePrefix = comp["base"]?.stringValue,
                  let rules = comp["rules"]?.arrayValue else { throw .invalid("component \(c.serializedString) is malformed") }
            for x in comp["extras"]?.arrayValue ?? [] {
                guard let n = x.stringValue else { throw .invalid("extras of \(cname) must be strings") }
                extras.insert(ldmPrefix + n)
            }
            for rule in rules {
                try KeyMap.expand(rule: rule, map: map, variables: variables) { ldm, base, reshape in
                    out.append(Entry(ldm: ldmPrefix + ldm, base: base.map { basePrefix + $0 }, reshape1x1: reshape))
                }
            }
        }
        entries = out
        ldmExtras = extras
        var l: [String: Int] = [:], b: [String: Int] = [:]
        for (i, e) in out.enumerated() {
            l[e.ldm] = i
            for n in e.base { b[n] = i }
        }
        byLDM = l
        byBase = b
    }

    static func expand(rule: JSONValue, map: JSONValue, variables: [String: ExprValue],
                       emit: (String, [String], Bool) -> Void) throws(KeyMapError) {
        guard let ldmT = rule["ldm"]?.stringValue, let baseT = rule["base"]?.stringValue else {
            throw .invalid("rule without ldm/base: \(rule.serializedString)")
        }
        var loops: [(String, Int)] = []
        if let each = rule["each"]?.objectValue {
            for (v, e) in each {
                guard let text = e.stringValue else { throw .invalid("loop bound of \(v) is not an expression") }
                loops.append((v, try Expr.evaluate(text, variables).int))
            }
        }
        var parts: [(ldm: String, base: [String], reshape: Bool)]? = nil
        if let pname = rule["parts"]?.stringValue {
            guard let table = map["parts"]?[pname]?.arrayValue else { throw .invalid("unknown parts table '\(pname)'") }
            parts = []
            for p in table {
                guard let arr = p.arrayValue, arr.count >= 2, let l = arr[0].stringValue else { throw .invalid("malformed part \(p.serializedString)") }
                let bases: [String]
                if let s = arr[1].stringValue { bases = [s] } else if let a = arr[1].arrayValue { bases = a.compactMap(\.stringValue) } else {
                    throw .invalid("malformed part \(p.serializedString)")
                }
                let opts = arr.count > 2 ? arr[2] : .object([])
                if let n = opts["split"]?.int64Value, Int(n) != bases.count { throw .invalid("split count mismatch in \(p.serializedString)") }
                parts!.append((l, bases, opts["reshape"]?.stringValue == "1x1"))
            }
        }
        // Iterate over the cartesian product of the loops.
        var counters = [Int](repeating: 0, count: loops.count)
        if loops.contains(where: { $0.1 <= 0 }) { return }
        while true {
            var vars = variables
            for (k, (name, _)) in loops.enumerated() { vars[name] = .int(counters[k]) }
            let keep = try rule["when"]?.stringValue.map { (w) throws(KeyMapError) in try Expr.evaluate(w, vars).int != 0 } ?? true
            if keep {
                let ldm = try Expr.substitute(ldmT, vars), base = try Expr.substitute(baseT, vars)
                if let parts {
                    for p in parts { emit(ldm + p.ldm, p.base.map { base + $0 }, p.reshape) }
                } else {
                    emit(ldm, [base], false)
                }
            }
            // Next combination.
            var k = loops.count - 1
            while k >= 0 {
                counters[k] += 1
                if counters[k] < loops[k].1 { break }
                counters[k] = 0
                k -= 1
            }
            if k < 0 { return }
        }
    }

    /// The entry for an LDM name: exact entries first, then the longest matching prefix.
    public func lookup(ldm name: String) -> (entry: Entry, suffix: String)? {
        if ldmExtras.contains(name) { return nil }
        if let i = byLDM[name], !entries[i].isPrefix { return (entries[i], "") }
        var cut = name.endIndex
        while let dot = name[..<cut].lastIndex(of: ".") {
            let prefix = String(name[...dot])
            if let i = byLDM[prefix] { return (entries[i], String(name[name.index(after: dot)...])) }
            cut = dot
        }
        return nil
    }

    /// The entry for a base name, and the suffix after its prefix.
    public func lookup(base name: String) -> (entry: Entry, suffix: String)? {
        if let i = byBase[name], !entries[i].base.contains(where: { $0.hasSuffix(".") }) { return (entries[i], "") }
        var cut = name.endIndex
        while let dot = name[..<cut].lastIndex(of: ".") {
            let prefix = String(name[...dot])
            if let i = byBase[prefix] { return (entries[i], String(name[name.index(after: dot)...])) }
            cut = dot
        }
        return nil
    }
}

public enum KeyMapError: Error, Equatable, CustomStringConvertible {
    case invalid(String)
    case expression(String)
    public var description: String {
        switch self {
        case let .invalid(m): return "invalid name map: \(m)"
        case let .expression(m): return "invalid name-map expression: \(m)"
        }
    }
}

/// A value in a name-map expression: an integer or a 0/1 array.
public enum ExprValue: Sendable, Equatable {
    case int(Int)
    case array([Int])
    var int: Int { if case let .int(v) = self { return v }; return 0 }
}

/// Integer expressions of the name maps: `+ - *`, parentheses, variables, `name[expr]`.
enum Expr {
    static func substitute(_ template: String, _ vars: [String: ExprValue]) throws(KeyMapError) -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else { throw .expression("unclosed { in \(template)") }
            let v = try evaluate(String(rest[rest.index(after: open)..<close]), vars)
            out += String(v.int)
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }

    static func evaluate(_ text: String, _ vars: [String: ExprValue]) throws(KeyMapError) -> ExprValue {
        var p = Parser(chars: Array(text.utf8), vars: vars)
        let v = try p.sum()
        p.skip()
        guard p.i == p.chars.count else { throw .expression("unexpected text in '\(text)'") }
        return .int(v)
    }

    struct Parser {
        let chars: [UInt8]
        let vars: [String: ExprValue]
        var i = 0
        mutating func skip() { while i < chars.count && chars[i] == 0x20 { i += 1 } }
        mutating func sum() throws(KeyMapError) -> Int {
            var v = try product()
            while true {
                skip()
                guard i < chars.count, chars[i] == UInt8(ascii: "+") || chars[i] == UInt8(ascii: "-") else { return v }
                let op = chars[i]; i += 1
                let r = try product()
                v = op == UInt8(ascii: "+") ? v + r : v - r
            }
        }
        mutating func product() throws(KeyMapError) -> Int {
            var v = try atom()
            while true {
                skip()
                guard i < chars.count, chars[i] == UInt8(ascii: "*") else { return v }
                i += 1
                v *= try atom()
            }
        }
        mutating func atom() throws(KeyMapError) -> Int {
            skip()
            guard i < chars.count else { throw .expression("unexpected end") }
            let c = chars[i]
            if c == UInt8(ascii: "(") {
                i += 1
                let v = try sum()
                skip()
                guard i < chars.count, chars[i] == UInt8(ascii: ")") else { throw .expression("missing )") }
                i += 1
                return v
            }
            if c >= 0x30 && c <= 0x39 {
                var v = 0
                while i < chars.count, chars[i] >= 0x30, chars[i] <= 0x39 { v = v * 10 + Int(chars[i] - 0x30); i += 1 }
                return v
            }
            let start = i
            while i < chars.count, chars[i] == UInt8(ascii: "_") || (chars[i] >= 0x61 && chars[i] <= 0x7A) || (chars[i] >= 0x41 && chars[i] <= 0x5A) || (chars[i] >= 0x30 && chars[i] <= 0x39) { i += 1 }
            guard i > start else { throw .expression("unexpected character") }
            let name = String(decoding: chars[start..<i], as: UTF8.self)
            guard let value = vars[name] else { throw .expression("unknown variable '\(name)'") }
            skip()
            if i < chars.count, chars[i] == UInt8(ascii: "[") {
                i += 1
                let idx = try sum()
                skip()
                guard i < chars.count, chars[i] == UInt8(ascii: "]") else { throw .expression("missing ]") }
                i += 1
                guard case let .array(a) = value, idx >= 0, idx < a.count else { throw .expression("index \(idx) out of range for '\(name)'") }
                return a[idx]
            }
            return value.int
        }
    }
}
