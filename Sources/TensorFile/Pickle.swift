/// A pickle interpreter that never executes anything.
///
/// It understands the opcodes of protocols 2–5 that `torch.save` and real checkpoints use, builds
/// plain values (numbers, strings, bytes, tuples, lists, dicts) and applies only a fixed allowlist
/// of callables — the ones that rebuild tensors, `OrderedDict`, numpy scalars and `_codecs.encode`
/// — each to structurally checked arguments, implemented here rather than looked up. Any other
/// global is refused at the `GLOBAL`/`STACK_GLOBAL` opcode, naming it. Stack, memo, nesting,
/// container sizes, integer sizes and the number of operations are bounded; nothing recurses on
/// the depth of the input. See `spec/torch-checkpoints.md`.

public struct PickleLimits: Sendable {
    public var maxOps = 100_000_000
    public var maxStack = 1_000_000
    public var maxMemo = 10_000_000
    public var maxContainerCount = 10_000_000
    /// Nesting of tuples, lists and dicts.
    public var maxDepth = 64
    /// Bytes of a LONG1/LONG4 integer.
    public var maxIntBytes = 1024
    /// Rank of a tensor.
    public var maxRank = 64
    public init() {}
}

/// A global the interpreter knows. Everything else is refused.
public struct PickleGlobal: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        case orderedDict
        case rebuildTensorV2, rebuildTensorV3, rebuildParameter, rebuildParameterWithState
        /// `torch.FloatStorage` and friends (with their dtype); nil for `torch.storage.UntypedStorage`.
        case storageType(DType?)
        /// `torch.float16` and friends.
        case torchDType(DType)
        case codecsEncode
        case numpyScalar
        case numpyDType
        /// `builtins.set`/`frozenset`: a set becomes a list (metadata only).
        case set
        /// A class that old Lightning checkpoints use as a dict key; a name, never called.
        case inertName
    }
    public var kind: Kind
    /// `module.name`.
    public var name: String
    public var description: String { name }

    static let table: [String: Kind] = {
        var t: [String: Kind] = [
            "collections.OrderedDict": .orderedDict,
            "torch._utils._rebuild_tensor_v2": .rebuildTensorV2,
            "torch._utils._rebuild_tensor_v3": .rebuildTensorV3,
            "torch._utils._rebuild_parameter": .rebuildParameter,
            "torch._utils._rebuild_parameter_with_state": .rebuildParameterWithState,
            "torch.storage.UntypedStorage": .storageType(nil),
            "_codecs.encode": .codecsEncode,
            "numpy.core.multiarray.scalar": .numpyScalar,
            "numpy._core.multiarray.scalar": .numpyScalar,
            "numpy.dtype": .numpyDType,
            "builtins.set": .set, "builtins.frozenset": .set, "__builtin__.set": .set, "__builtin__.frozenset": .set,
            "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": .inertName,
        ]
        for (n, d) in torchStorageTypes { t["torch." + n] = .storageType(d) }
        for (n, d) in torchDTypes { t["torch." + n] = .torchDType(d) }
        return t
    }()

    /// Legacy typed-storage classes and the dtype of their elements.
    static let torchStorageTypes: [(String, DType)] = [
        ("FloatStorage", .F32), ("HalfStorage", .F16), ("BFloat16Storage", .BF16), ("DoubleStorage", .F64),
        ("LongStorage", .I64), ("IntStorage", .I32), ("ShortStorage", .I16), ("CharStorage", .I8),
        ("ByteStorage", .U8), ("BoolStorage", .BOOL), ("ComplexFloatStorage", .C64),
    ]
    /// torch dtype objects (as pickled: their canonical names) that map to our dtypes.
    static let torchDTypes: [(String, DType)] = [
        ("float32", .F32), ("float16", .F16), ("bfloat16", .BF16), ("float64", .F64),
        ("int64", .I64), ("int32", .I32), ("int16", .I16), ("int8", .I8), ("uint8", .U8), ("bool", .BOOL),
        ("uint16", .U16), ("uint32", .U32), ("uint64", .U64), ("complex64", .C64),
        ("float8_e4m3fn", .F8_E4M3), ("float8_e5m2", .F8_E5M2), ("float8_e8m0fnu", .F8_E8M0),
        ("float8_e4m3fnuz", .F8_E4M3FNUZ), ("float8_e5m2fnuz", .F8_E5M2FNUZ),
    ]

    static func resolve(module: String, name: String) -> PickleGlobal? {
        let full = module + "." + name
        return table[full].map { PickleGlobal(kind: $0, name: full) }
    }
}

/// One storage (a zip entry of raw elements), made by the caller's persistent-load function.
public final class PickleStorage {
    public let key: String
    /// nil for an untyped (byte) storage.
    public let dtype: DType?
    /// Offset and size of the storage's bytes in the caller's buffer.
    public let byteOffset: Int
    public let byteCount: Int
    public init(key: String, dtype: DType?, byteOffset: Int, byteCount: Int) {
        self.key = key
        self.dtype = dtype
        self.byteOffset = byteOffset
        self.byteCount = byteCount
    }
}

/// A tensor as `_rebuild_tensor_v2`/`_v3` describe it: a strided view of a storage.
public struct PickleTensor {
    public var storage: PickleStorage
    public var dtype: DType
    /// In elements.
    public var storageOffset: Int
    public var shape: [Int]
    /// In elements.
    public var stride: [Int]
}

/// A numpy dtype as pickled (`numpy.dtype('i8', False, True)` then BUILD with its state).
public final class NumpyDType {
    public let code: String
    public internal(set) var bigEndian = false
    init(code: String) { self.code = code }
}

public final class PickleTuple {
    public let items: [PickleValue]
    let depth: Int
    init(_ items: [PickleValue], depth: Int) { self.items = items; self.depth = depth }
}

public final class PickleList {
    public private(set) var items: [PickleValue] = []
    var depth = 1
    /// Set once the list is inside another container; it may not change afterwards (so no cycles).
    var frozen = false
    fileprivate func append(_ v: PickleValue) { items.append(v) }
}

/// Hashable form of the dict keys the interpreter accepts (Python equality: True == 1).
enum PickleKey: Hashable {
    case none, int(Int64), big(String), float(UInt64), string(String), bytes([UInt8]), global(String)
}

public final class PickleDict {
    public private(set) var keys: [PickleValue] = []
    public private(set) var values: [PickleValue] = []
    private var index: [PickleKey: Int] = [:]
    public let ordered: Bool
    var depth = 1
    var frozen = false
    init(ordered: Bool) { self.ordered = ordered }
    public var count: Int { keys.count }
    public var pairs: Zip2Sequence<[PickleValue], [PickleValue]> { zip(keys, values) }

    /// Python semantics: a repeated key keeps its first position and takes the new value.
    fileprivate func set(_ key: PickleKey, _ k: PickleValue, _ v: PickleValue) {
        if let i = index[key] { values[i] = v; return }
        index[key] = keys.count
        keys.append(k)
        values.append(v)
    }

    public subscript(string key: String) -> PickleValue? { index[.string(key)].map { values[$0] } }
}

public enum PickleValue {
    case none
    case bool(Bool)
    case int(Int64)
    /// An integer beyond 64 bits, in decimal.
    case bigInt(String)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple(PickleTuple)
    case list(PickleList)
    case dict(PickleDict)
    case global(PickleGlobal)
    case storage(PickleStorage)
    case tensor(PickleTensor)
    case numpyDType(NumpyDType)

    /// A short name of the value's type, for messages.
    public var typeName: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .tuple: return "tuple"
        case .list: return "list"
        case .dict: return "dict"
        case let .global(g): return "'\(g.name)'"
        case .storage: return "storage"
        case .tensor: return "tensor"
        case .numpyDType: return "numpy dtype"
        }
    }

    var nestingDepth: Int {
        switch self {
        case let .tuple(t): return t.depth
        case let .list(l): return l.depth
        case let .dict(d): return d.depth
        default: return 0
        }
    }
}

/// Runs the pickle in `data`. `persistentLoad` turns a `BINPERSID` id into a value (a storage).
/// Errors name `file`; byte offsets are within `data`.
public func unpickle(_ data: UnsafeRawBufferPointer, file: String, limits: PickleLimits = .init(),
                     persistentLoad: (PickleValue) throws(TensorFileError) -> PickleValue) throws(TensorFileError) -> PickleValue {
    var machine = Unpickler(data: data, file: file, limits: limits)
    return try machine.run(persistentLoad)
}

private struct Unpickler {
    let data: UnsafeRawBufferPointer
    let file: String
    let limits: PickleLimits
    var pos = 0
    var opStart = 0
    var stack: [PickleValue] = []
    var marks: [Int] = []
    var memo: [UInt32: PickleValue] = [:]

    init(data: UnsafeRawBufferPointer, file: String, limits: PickleLimits) {
        self.data = data
        self.file = file
        self.limits = limits
    }

    func bad(_ reason: String) -> TensorFileError {
        TensorFileError(file: file, .pickleMalformed(offset: opStart, reason: reason))
    }
    func refuse(_ what: String) -> TensorFileError { TensorFileError(file: file, .pickleCallRefused(what)) }

    // MARK: reading

    mutating func take(_ n: Int) throws(TensorFileError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= data.count - pos else { throw bad("data ends inside an opcode (needs \(n) more bytes, has \(data.count - pos))") }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: data[pos..<(pos + n)])
    }
    mutating func u8() throws(TensorFileError) -> UInt8 { try take(1)[0] }
    mutating func le<T: FixedWidthInteger>(_: T.Type) throws(TensorFileError) -> T {
        T(littleEndian: try take(MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }
    mutating func length<T: FixedWidthInteger>(_: T.Type) throws(TensorFileError) -> Int {
        let n = try le(T.self)
        guard n >= 0, UInt64(n) <= UInt64(data.count - pos) else { throw bad("length \(n) runs past the end of the data") }
        return Int(n)
    }
    mutating func utf8(_ n: Int) throws(TensorFileError) -> String {
        let b = try take(n)
        if firstInvalidUTF8(b) != nil { throw bad("string is not valid UTF-8") }
        return String(decoding: b, as: UTF8.self)
    }
    /// A newline-terminated ASCII line (GLOBAL's module and name).
    mutating func line() throws(TensorFileError) -> String {
        var end = pos
        while end < data.count, data[end] != 0x0A {
            guard data[end] >= 0x20, data[end] < 0x7F, end - pos < 512 else { throw bad("GLOBAL name is not a short printable ASCII line") }
            end += 1
        }
        guard end < data.count else { throw bad("data ends inside a GLOBAL name") }
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: data[pos..<end]), as: UTF8.self)
        pos = end + 1
        return s
    }

    // MARK: stack

    var frameBase: Int { marks.last ?? 0 }

    mutating func push(_ v: PickleValue) throws(TensorFileError) {
        guard stack.count < limits.maxStack else {
            throw TensorFileError(file: file, .limitExceeded(what: "pickle stack depth", limit: UInt64(limits.maxStack)))
        }
        stack.append(v)
    }
    mutating func pop() throws(TensorFileError) -> PickleValue {
        guard stack.count > frameBase else { throw bad("stack underflow") }
        return stack.removeLast()
    }
    func top() throws(TensorFileError) -> PickleValue {
        guard stack.count > frameBase else { throw bad("stack underflow") }
        return stack[stack.count - 1]
    }
    mutating func popMark() throws(TensorFileError) -> [PickleValue] {
        guard let m = marks.popLast() else { throw bad("no MARK on the stack") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }

    // MARK: containers

    /// Puts `child` into a container at `depth`: freezes child containers, refuses self-insertion
    /// and nesting beyond the limit; returns the container's new depth.
    func adopt(_ child: PickleValue, parentDepth: Int, parent: AnyObject?) throws(TensorFileError) -> Int {
        switch child {
        case let .list(l):
            if l === parent { throw bad("a list cannot contain itself") }
            l.frozen = true
        case let .dict(d):
            if d === parent { throw bad("a dict cannot contain itself") }
            d.frozen = true
        default: break
        }
        let d = max(parentDepth, child.nestingDepth + 1)
        guard d <= limits.maxDepth else { throw TensorFileError(file: file, .nestingTooDeep(limit: limits.maxDepth)) }
        return d
    }

    func makeTuple(_ items: [PickleValue]) throws(TensorFileError) -> PickleValue {
        guard items.count <= limits.maxContainerCount else { throw tooMany() }
        var depth = 1
        for v in items { depth = try adopt(v, parentDepth: depth, parent: nil) }
        return .tuple(PickleTuple(items, depth: depth))
    }

    func tooMany() -> TensorFileError {
        TensorFileError(file: file, .limitExceeded(what: "pickle container size", limit: UInt64(limits.maxContainerCount)))
    }

    func appendItems(_ items: [PickleValue], to target: PickleValue) throws(TensorFileError) {
        guard case let .list(l) = target else { throw bad("APPEND to a \(target.typeName), not a list") }
        guard !l.frozen else { throw bad("list changed after it was put into another container") }
        guard l.items.count + items.count <= limits.maxContainerCount else { throw tooMany() }
        for v in items {
            l.depth = try adopt(v, parentDepth: l.depth, parent: l)
            l.append(v)
        }
    }

    func key(_ v: PickleValue) throws(TensorFileError) -> PickleKey {
        switch v {
        case .none: return .none
        case let .bool(b): return .int(b ? 1 : 0)
        case let .int(i): return .int(i)
        case let .bigInt(s): return .big(s)
        case let .float(f):
            if f == f.rounded(), let i = Int64(exactly: f) { return .int(i) }
            return .float(f == 0 ? 0 : f.bitPattern)
        case let .string(s): return .string(s)
        case let .bytes(b): return .bytes(b)
        case let .global(g): return .global(g.name)
        default: throw bad("unsupported dict key of type \(v.typeName)")
        }
    }

    func setItems(_ items: [PickleValue], in target: PickleValue) throws(TensorFileError) {
        guard case let .dict(d) = target else { throw bad("SETITEM on a \(target.typeName), not a dict") }
        guard items.count % 2 == 0 else { throw bad("SETITEMS with an odd number of items") }
        guard !d.frozen else { throw bad("dict changed after it was put into another container") }
        guard d.count + items.count / 2 <= limits.maxContainerCount else { throw tooMany() }
        var i = 0
        while i < items.count {
            let k = try key(items[i])
            d.depth = try adopt(items[i + 1], parentDepth: d.depth, parent: d)
            d.set(k, items[i], items[i + 1])
            i += 2
        }
    }

    // MARK: the loop

    mutating func run(_ persistentLoad: (PickleValue) throws(TensorFileError) -> PickleValue) throws(TensorFileError) -> PickleValue {
        var ops = 0
        while pos < data.count {
            ops += 1
            guard ops <= limits.maxOps else {
                throw TensorFileError(file: file, .limitExceeded(what: "pickle operations", limit: UInt64(limits.maxOps)))
            }
            opStart = pos
            let op = data[pos]
            pos += 1
            switch op {
            case 0x80:  // PROTO
                let v = try u8()
                guard v <= 5 else { throw bad("unsupported pickle protocol \(v)") }
            case 0x95:  // FRAME: only checked to lie inside the data
                let n = try le(UInt64.self)
                guard n <= UInt64(data.count - pos) else { throw bad("frame of \(n) bytes runs past the end of the data") }
            case 0x28:  // MARK
                guard marks.count < limits.maxStack else {
                    throw TensorFileError(file: file, .limitExceeded(what: "pickle marks", limit: UInt64(limits.maxStack)))
                }
                marks.append(stack.count)
            case 0x2E:  // STOP
                guard marks.isEmpty, stack.count == 1 else { throw bad("STOP with \(stack.count) values and \(marks.count) marks on the stack") }
                guard pos == data.count else { throw bad("\(data.count - pos) bytes after STOP") }
                return stack[0]
            case 0x30:  // POP (an item, or the topmost mark when the frame is empty)
                if stack.count > frameBase { stack.removeLast() } else { _ = try popMark() }
            case 0x31: _ = try popMark()  // POP_MARK
            case 0x32: try push(try top())  // DUP

            case 0x4E: try push(.none)  // NONE
            case 0x88: try push(.bool(true))  // NEWTRUE
            case 0x89: try push(.bool(false))  // NEWFALSE
            case 0x4A: try push(.int(Int64(try le(Int32.self))))  // BININT
            case 0x4B: try push(.int(Int64(try u8())))  // BININT1
            case 0x4D: try push(.int(Int64(try le(UInt16.self))))  // BININT2
            case 0x8A: try push(try long(Int(try u8())))  // LONG1
            case 0x8B:  // LONG4
                let n = try le(Int32.self)
                guard n >= 0, Int(n) <= limits.maxIntBytes else { throw bad("LONG4 of \(n) bytes (limit \(limits.maxIntBytes))") }
                try push(try long(Int(n)))
            case 0x47: try push(.float(Double(bitPattern: UInt64(bigEndian: try take(8).loadUnaligned(as: UInt64.self)))))  // BINFLOAT

            case 0x58: try push(.string(try utf8(try length(UInt32.self))))  // BINUNICODE
            case 0x8C: try push(.string(try utf8(Int(try u8()))))  // SHORT_BINUNICODE
            case 0x8D: try push(.string(try utf8(try length(UInt64.self))))  // BINUNICODE8
            case 0x54: try push(pyString(try take(try length(Int32.self))))  // BINSTRING
            case 0x55: try push(pyString(try take(Int(try u8()))))  // SHORT_BINSTRING
            case 0x42: try push(.bytes(Array(try take(try length(UInt32.self)))))  // BINBYTES
            case 0x43: try push(.bytes(Array(try take(Int(try u8())))))  // SHORT_BINBYTES
            case 0x8E: try push(.bytes(Array(try take(try length(UInt64.self)))))  // BINBYTES8

            case 0x5D, 0x8F: try push(.list(PickleList()))  // EMPTY_LIST, EMPTY_SET (a set is read as a list)
            case 0x90: let items = try popMark(); try appendItems(items, to: try top())  // ADDITEMS
            case 0x91:  // FROZENSET
                let items = try popMark()
                let l = PickleList()
                try appendItems(items, to: .list(l))
                try push(.list(l))
            case 0x7D: try push(.dict(PickleDict(ordered: false)))  // EMPTY_DICT
            case 0x29: try push(try makeTuple([]))  // EMPTY_TUPLE
            case 0x6C:  // LIST
                let items = try popMark()
                let l = PickleList()
                try appendItems(items, to: .list(l))
                try push(.list(l))
            case 0x64:  // DICT
                let items = try popMark()
                let d = PickleDict(ordered: false)
                try setItems(items, in: .dict(d))
                try push(.dict(d))
            case 0x74: try push(try makeTuple(try popMark()))  // TUPLE
            case 0x85: let a = try pop(); try push(try makeTuple([a]))  // TUPLE1
            case 0x86: let b = try pop(); let a = try pop(); try push(try makeTuple([a, b]))  // TUPLE2
            case 0x87: let c = try pop(); let b = try pop(); let a = try pop(); try push(try makeTuple([a, b, c]))  // TUPLE3
            case 0x61: let v = try pop(); try appendItems([v], to: try top())  // APPEND
            case 0x65: let items = try popMark(); try appendItems(items, to: try top())  // APPENDS
            case 0x73: let v = try pop(); let k = try pop(); try setItems([k, v], in: try top())  // SETITEM
            case 0x75: let items = try popMark(); try setItems(items, in: try top())  // SETITEMS

            case 0x71: try put(UInt32(try u8()))  // BINPUT
            case 0x72: try put(try le(UInt32.self))  // LONG_BINPUT
            case 0x94: try put(UInt32(truncatingIfNeeded: memo.count))  // MEMOIZE
            case 0x68: try get(UInt32(try u8()))  // BINGET
            case 0x6A: try get(try le(UInt32.self))  // LONG_BINGET

            case 0x63:  // GLOBAL
                let module = try line()
                let name = try line()
                try push(try global(module, name))
            case 0x93:  // STACK_GLOBAL
                let n = try pop(), m = try pop()
                guard case let .string(name) = n, case let .string(module) = m else { throw bad("STACK_GLOBAL needs two strings") }
                try push(try global(module, name))
            case 0x52:  // REDUCE
                let args = try pop(), callable = try pop()
                try push(try call(callable, args, opcode: "REDUCE"))
            case 0x81:  // NEWOBJ
                let args = try pop(), cls = try pop()
                guard case let .global(g) = cls, g.kind == .orderedDict else { throw refuse("NEWOBJ of a \(cls.typeName)") }
                try push(try call(cls, args, opcode: "NEWOBJ"))
            case 0x62:  // BUILD
                let state = try pop()
                try build(try top(), state)
            case 0x51:  // BINPERSID
                let pid = try pop()
                try push(try persistentLoad(pid))
            default:
                throw TensorFileError(file: file, .pickleOpcodeUnsupported(offset: opStart, opcode: op))
            }
        }
        opStart = pos
        throw bad("data ends without STOP")
    }

    mutating func put(_ i: UInt32) throws(TensorFileError) {
        let v = try top()
        if memo[i] == nil, memo.count >= limits.maxMemo {
            throw TensorFileError(file: file, .limitExceeded(what: "pickle memo size", limit: UInt64(limits.maxMemo)))
        }
        memo[i] = v
    }

    mutating func get(_ i: UInt32) throws(TensorFileError) {
        guard let v = memo[i] else { throw bad("memo entry \(i) is not defined") }
        try push(v)
    }

    /// Python 2 `str`: decoded as UTF-8 (as torch.load does), raw bytes when it is not UTF-8.
    func pyString(_ b: UnsafeRawBufferPointer) -> PickleValue {
        firstInvalidUTF8(b) == nil ? .string(String(decoding: b, as: UTF8.self)) : .bytes(Array(b))
    }

    /// A little-endian two's-complement integer of `n` bytes.
    mutating func long(_ n: Int) throws(TensorFileError) -> PickleValue {
        let b = try take(n)
        if n == 0 { return .int(0) }
        let negative = b[n - 1] & 0x80 != 0
        let fill: UInt8 = negative ? 0xFF : 0
        var significant = n
        while significant > 8, b[significant - 1] == fill { significant -= 1 }
        if significant <= 8 {
            var u: UInt64 = negative ? UInt64.max : 0
            for k in 0..<min(n, 8) {
                u &= ~(UInt64(0xFF) << (8 * k))
                u |= UInt64(b[k]) << (8 * k)
            }
            let v = Int64(bitPattern: u)
            if (v < 0) == negative { return .int(v) }
        }
        // Beyond 64 bits: magnitude in decimal.
        var mag = Array(b)
        if negative {  // two's complement negation
            var carry = 1
            for k in 0..<mag.count {
                let x = Int(~mag[k]) + carry
                mag[k] = UInt8(x & 0xFF)
                carry = x >> 8
            }
        }
        var digits: [UInt8] = []
        while mag.contains(where: { $0 != 0 }) {
            var rem = 0
            for k in stride(from: mag.count - 1, through: 0, by: -1) {
                let cur = rem * 256 + Int(mag[k])
                mag[k] = UInt8(cur / 10)
                rem = cur % 10
            }
            digits.append(UInt8(48 + rem))
        }
        return .bigInt((negative ? "-" : "") + String(decoding: digits.reversed(), as: UTF8.self))
    }

    func global(_ module: String, _ name: String) throws(TensorFileError) -> PickleValue {
        guard let g = PickleGlobal.resolve(module: module, name: name) else {
            throw TensorFileError(file: file, .pickleGlobalRefused(module + "." + name))
        }
        return .global(g)
    }

    // MARK: the allowlisted callables

    func call(_ callable: PickleValue, _ argsValue: PickleValue, opcode: String) throws(TensorFileError) -> PickleValue {
        guard case let .global(g) = callable else { throw refuse("\(opcode) of a \(callable.typeName) value") }
        guard case let .tuple(t) = argsValue else { throw bad("\(opcode) of '\(g.name)' with \(argsValue.typeName) arguments, not a tuple") }
        let args = t.items
        func argCount(_ ok: ClosedRange<Int>) throws(TensorFileError) {
            guard ok.contains(args.count) else { throw bad("'\(g.name)' called with \(args.count) arguments (expects \(ok.lowerBound)–\(ok.upperBound))") }
        }
        switch g.kind {
        case .orderedDict:
            guard args.isEmpty else { throw refuse("'\(g.name)' with arguments") }
            return .dict(PickleDict(ordered: true))
        case .rebuildTensorV2, .rebuildTensorV3:
            let v3 = g.kind == .rebuildTensorV3
            try argCount(v3 ? 7...8 : 6...7)
            guard case let .storage(storage) = args[0] else { throw bad("'\(g.name)': argument 1 is a \(args[0].typeName), not a storage") }
            let offset = try nonNegative(args[1], "storage offset", g)
            let shape = try intTuple(args[2], "size", g)
            let stride = try intTuple(args[3], "stride", g)
            guard shape.count == stride.count else { throw bad("'\(g.name)': size has \(shape.count) dimensions, stride \(stride.count)") }
            guard case .bool = args[4] else { throw bad("'\(g.name)': requires_grad is a \(args[4].typeName), not a bool") }
            try emptyHooks(args[5], g)
            var dtype: DType
            if v3 {
                guard case let .global(d) = args[6], case let .torchDType(dt) = d.kind else {
                    throw bad("'\(g.name)': argument 7 is a \(args[6].typeName), not a torch dtype")
                }
                dtype = dt
                if let sd = storage.dtype, sd != dt { throw bad("'\(g.name)': dtype \(dt.name) differs from the storage's \(sd.name)") }
            } else {
                guard let sd = storage.dtype else { throw bad("'\(g.name)' with an untyped storage") }
                dtype = sd
            }
            if args.count == (v3 ? 8 : 7) { try optionalDict(args[args.count - 1], "metadata", g) }
            return .tensor(PickleTensor(storage: storage, dtype: dtype, storageOffset: offset, shape: shape, stride: stride))
        case .rebuildParameter, .rebuildParameterWithState:
            try argCount(g.kind == .rebuildParameter ? 3...3 : 4...4)
            guard case .tensor = args[0] else { throw bad("'\(g.name)': argument 1 is a \(args[0].typeName), not a tensor") }
            guard case .bool = args[1] else { throw bad("'\(g.name)': requires_grad is a \(args[1].typeName), not a bool") }
            try emptyHooks(args[2], g)
            if args.count == 4 {
                switch args[3] {
                case .none, .dict, .tuple: break
                default: throw bad("'\(g.name)': state is a \(args[3].typeName)")
                }
            }
            return args[0]
        case .codecsEncode:
            try argCount(1...2)
            guard case let .string(s) = args[0] else { throw bad("'\(g.name)': argument 1 is a \(args[0].typeName), not a str") }
            var encoding = "utf-8"
            if args.count == 2 {
                guard case let .string(e) = args[1] else { throw bad("'\(g.name)': encoding is a \(args[1].typeName)") }
                encoding = e.lowercased()
            }
            switch encoding {
            case "latin1", "latin-1", "iso-8859-1":
                var out: [UInt8] = []
                out.reserveCapacity(s.unicodeScalars.count)
                for u in s.unicodeScalars {
                    guard u.value <= 0xFF else { throw bad("'\(g.name)': character U+\(String(u.value, radix: 16)) is not latin-1") }
                    out.append(UInt8(u.value))
                }
                return .bytes(out)
            case "utf-8", "utf8": return .bytes(Array(s.utf8))
            default: throw refuse("'\(g.name)' with encoding '\(encoding.debugEscaped)'")
            }
        case .numpyDType:
            try argCount(1...3)
            guard case let .string(code) = args[0] else { throw bad("'\(g.name)': argument 1 is a \(args[0].typeName), not a str") }
            guard numpyScalarSize(code) != nil else { throw refuse("numpy dtype '\(code.debugEscaped)' (only bool, integer and float scalars)") }
            return .numpyDType(NumpyDType(code: code))
        case .numpyScalar:
            try argCount(2...2)
            guard case let .numpyDType(dt) = args[0] else { throw bad("'\(g.name)': argument 1 is a \(args[0].typeName), not a numpy dtype") }
            guard case let .bytes(b) = args[1] else { throw bad("'\(g.name)': argument 2 is a \(args[1].typeName), not bytes") }
            return try numpyScalar(dt, b)
        case .set:
            try argCount(0...1)
            let l = PickleList()
            if let a = args.first {
                switch a {
                case let .list(x): try appendItems(x.items, to: .list(l))
                case let .tuple(x): try appendItems(x.items, to: .list(l))
                default: throw bad("'\(g.name)' of a \(a.typeName)")
                }
            }
            return .list(l)
        case .storageType, .torchDType, .inertName:
            throw refuse("\(opcode) of '\(g.name)', which is not callable here")
        }
    }

    func nonNegative(_ v: PickleValue, _ what: String, _ g: PickleGlobal) throws(TensorFileError) -> Int {
        guard case let .int(i) = v, i >= 0, let x = Int(exactly: i) else {
            throw bad("'\(g.name)': \(what) must be a non-negative integer")
        }
        return x
    }

    func intTuple(_ v: PickleValue, _ what: String, _ g: PickleGlobal) throws(TensorFileError) -> [Int] {
        let items: [PickleValue]
        switch v {
        case let .tuple(t): items = t.items
        case let .list(l): items = l.items
        default: throw bad("'\(g.name)': \(what) is a \(v.typeName), not a tuple")
        }
        guard items.count <= limits.maxRank else { throw bad("'\(g.name)': \(what) has \(items.count) dimensions (limit \(limits.maxRank))") }
        var out: [Int] = []
        for x in items { out.append(try nonNegative(x, what, g)) }
        return out
    }

    func emptyHooks(_ v: PickleValue, _ g: PickleGlobal) throws(TensorFileError) {
        switch v {
        case .none: return
        case let .dict(d) where d.count == 0: return
        default: throw bad("'\(g.name)': backward hooks must be an empty dict")
        }
    }

    func optionalDict(_ v: PickleValue, _ what: String, _ g: PickleGlobal) throws(TensorFileError) {
        switch v {
        case .none, .dict: return
        default: throw bad("'\(g.name)': \(what) is a \(v.typeName), not a dict")
        }
    }

    func build(_ target: PickleValue, _ state: PickleValue) throws(TensorFileError) {
        switch target {
        case let .dict(d) where d.ordered:
            // OrderedDict attributes (nn.Module state dicts carry `_metadata`): checked, not kept.
            guard case let .dict(s) = state, s.keys.allSatisfy({ if case .string = $0 { return true }; return false }) else {
                throw bad("BUILD of an OrderedDict with a \(state.typeName) state")
            }
        case let .numpyDType(dt):
            // numpy.dtype.__setstate__: (version, byteorder, ...); only the byte order matters here.
            guard case let .tuple(t) = state, t.items.count >= 2, case let .string(order) = t.items[1],
                  ["<", ">", "|", "="].contains(order) else { throw bad("BUILD of a numpy dtype with an unexpected state") }
            dt.bigEndian = order == ">"
        default:
            throw refuse("BUILD of a \(target.typeName)")
        }
    }

    func numpyScalar(_ dt: NumpyDType, _ b: [UInt8]) throws(TensorFileError) -> PickleValue {
        guard let size = numpyScalarSize(dt.code), b.count == size else {
            throw bad("numpy scalar of type '\(dt.code.debugEscaped)' with \(b.count) bytes")
        }
        var u: UInt64 = 0
        for k in 0..<size { u |= UInt64(dt.bigEndian ? b[size - 1 - k] : b[k]) << (8 * k) }
        switch dt.code {
        case "b1", "?": return .bool(u != 0)
        case "u1", "u2", "u4": return .int(Int64(u))
        case "u8": return u <= UInt64(Int64.max) ? .int(Int64(u)) : .bigInt(String(u))
        case "i1": return .int(Int64(Int8(truncatingIfNeeded: u)))
        case "i2": return .int(Int64(Int16(truncatingIfNeeded: u)))
        case "i4": return .int(Int64(Int32(truncatingIfNeeded: u)))
        case "i8": return .int(Int64(bitPattern: u))
        case "f2": return .float(Double(halfToFloat(UInt16(truncatingIfNeeded: u))))
        case "f4": return .float(Double(Float(bitPattern: UInt32(truncatingIfNeeded: u))))
        default: return .float(Double(bitPattern: u))
        }
    }
}

/// IEEE binary16 to binary32 (exact).
private func halfToFloat(_ h: UInt16) -> Float {
    let sign: Float = h & 0x8000 != 0 ? -1 : 1
    let e = Int((h >> 10) & 0x1F), m = Float(h & 0x3FF)
    if e == 0 { return sign * m * 0x1p-24 }
    if e == 31 { return m == 0 ? sign * .infinity : .nan }
    return sign * (1 + m / 1024) * Float(sign: .plus, exponent: e - 15, significand: 1)
}

/// Byte size of the numpy scalar types we decode, by type code.
func numpyScalarSize(_ code: String) -> Int? {
    switch code {
    case "b1", "?": return 1
    case "i1", "u1": return 1
    case "i2", "u2", "f2": return 2
    case "i4", "u4", "f4": return 4
    case "i8", "u8", "f8": return 8
    default: return nil
    }
}
