import Foundation
import Testing
@testable import TensorFile

/// Builds `.lidb` bytes from raw parts, for crafting damaged files. Independent of LidbWriter.
struct LidbBuilder {
    var magic: [UInt8] = [0x89, 0x4C, 0x49, 0x44, 0x42, 0x0D, 0x0A, 0x1A]
    var major: UInt16 = 1
    var minor: UInt16 = 0
    var flags: UInt32 = 0
    var header: [UInt8]
    var storedHeader: [UInt8]? = nil
    var headerLengthOverride: UInt64? = nil
    var storedLengthOverride: UInt64? = nil
    var dataOffsetOverride: UInt64? = nil
    var dataLengthOverride: UInt64? = nil
    var reserved: [UInt8] = [UInt8](repeating: 0, count: 12)
    var data: [UInt8] = []
    var fixCRC = true

    init(header: String, data: [UInt8] = []) {
        self.header = Array(header.utf8)
        self.data = data
    }

    func bytes() -> [UInt8] {
        let stored = storedHeader ?? header
        let storedLen = storedLengthOverride ?? UInt64(stored.count)
        let dataOffset = dataOffsetOverride ?? ((64 + UInt64(stored.count) + 63) / 64 * 64)
        var out = magic
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(major); put(minor); put(flags)
        put(storedLen); put(headerLengthOverride ?? UInt64(header.count))
        put(dataOffset); put(dataLengthOverride ?? UInt64(data.count))
        var crc = CRC32C.checksum(out)
        crc = CRC32C.checksum(stored, continuing: crc)
        put(fixCRC ? crc : crc ^ 1)
        out += reserved
        out += stored
        let pad = Int(dataOffset) - out.count
        if pad > 0 { out += [UInt8](repeating: 0, count: pad) }
        out += data
        return out
    }
}

/// A row of the tensor table as JSON text.
func row(_ name: String, _ dtype: String = "F32", _ shape: String = "[4]", offset: UInt64 = 0, length: UInt64 = 16,
         encoding: String? = "raw", crc: String? = nil, data: [UInt8] = [UInt8](repeating: 0, count: 16)) -> String {
    let c = crc ?? hex8(CRC32C.checksum(data))
    let enc = encoding.map { #","encoding":"\#($0)""# } ?? ""
    return #"{"name":"\#(name)","dtype":"\#(dtype)","shape":\#(shape),"offset":\#(offset),"length":\#(length)\#(enc),"crc32c":"\#(c)"}"#
}

@Suite struct LidbFormatTests {
    let zeros16 = [UInt8](repeating: 0, count: 16)

    func expectProblem(_ b: LidbBuilder, _ check: (TensorFileError.Problem) -> Bool, sourceLocation: SourceLocation = #_sourceLocation) {
        let p = problem { _ = try parseLidb(b.bytes()) }
        #expect(p.map(check) == true, "got \(String(describing: p))", sourceLocation: sourceLocation)
    }

    func header(_ rows: [String], kind: String = "tensors", metadata: String = "{}") -> String {
        #"{"kind":"\#(kind)","metadata":\#(metadata),"tensors":[\#(rows.joined(separator: ","))]}"#
    }

    // MARK: Round trips

    @Test func writerAndReaderRoundTripTypedMetadataAndEncodings() throws {
        let tmp = TempDir()
        let metadata = JSONValue.object([
            ("name", .string("ünïcode \"q\" / \\ \n")), ("steps", .int(40)), ("big", .number("18446744073709551615")),
            ("scale", .double(0.5)), ("tiny", .double(1e-300)), ("flags", .array([.bool(true), .bool(false), .null])),
            ("nested", .object([("rank", .int(1)), ("names", .array([.string("a"), .string("b")]))])),
        ])
        var rng = SplitMix(seed: 1)
        let a = (0..<1000).map { _ in UInt8(truncatingIfNeeded: rng.next() & 0x7) }  // compressible
        let b = (0..<77).map { _ in UInt8(truncatingIfNeeded: rng.next()) }  // incompressible
        let tensors = [
            TensorSource.array(TensorInfo(name: "a", dtype: .U8, shape: [10, 100]), a),
            TensorSource.array(TensorInfo(name: "b.weight", dtype: .I8, shape: [7, 11]), b),
            TensorSource.array(TensorInfo(name: "empty", dtype: .F32, shape: [0, 3]), []),
            TensorSource.array(TensorInfo(name: "scalar", dtype: .F64, shape: []), [UInt8](repeating: 0x3F, count: 8)),
        ]
        for options in [LidbWriter.Options(), .init(encoding: .zstd(level: 3)), .init(encoding: .zstdIfSmaller(level: 19), compressHeader: true)] {
            let path = tmp.file("x.lidb")
            try LidbWriter.write(to: path, kind: "subject", metadata: metadata, tensors: tensors, options: options)
            let f = try LidbFile(path: path, checksums: .always)
            #expect(f.kind == "subject")
            #expect(f.metadata == metadata)
            #expect(f.metadata["big"]?.uint64Value == UInt64.max)
            #expect(f.metadata["scale"]?.doubleValue == 0.5 && f.metadata["scale"]?.isInteger == false)
            #expect(f.tensors.map(\.name) == ["a", "b.weight", "empty", "scalar"])
            #expect(try f.tensorBytes("a").array == a)
            #expect(try f.tensorBytes("b.weight").array == b)
            #expect(try f.tensorBytes("empty").count == 0)
            #expect(try f.tensorBytes("scalar").array == [UInt8](repeating: 0x3F, count: 8))
            #expect(f.verify().isEmpty)
            if options.encoding == .zstd(level: 3) { #expect(f.entry("a")?.encoding == .zstd) }
            if options.compressHeader {
                #expect(f.layout.flags & 1 == 1)
                #expect(f.entry("a")?.encoding == .zstd && f.entry("b.weight")?.encoding == .raw)
            }
            #expect(tmp.contents == ["x.lidb"], "no temporary files are left behind")
        }
    }

    @Test func rawTensorsAreAlignedViewsIntoTheMap() throws {
        let tmp = TempDir()
        let tensors = (0..<5).map { i in TensorSource.array(TensorInfo(name: "t\(i)", dtype: .U8, shape: [i * 13 + 1]), [UInt8](repeating: UInt8(i), count: i * 13 + 1)) }
        try LidbWriter.write(to: tmp.file("v.lidb"), kind: "tensors", tensors: tensors)
        let f = try LidbFile(path: tmp.file("v.lidb"))
        let mapBase = UInt(bitPattern: f.map.bytes.baseAddress!)
        for i in 0..<5 {
            let v = try f.tensorBytes("t\(i)")
            let p = UInt(bitPattern: v.bytes.baseAddress!)
            #expect(p % 64 == 0, "64-byte aligned")
            #expect(p >= mapBase && p < mapBase + UInt(f.map.bytes.count), "a view, not a copy")
        }
    }

    @Test func failedWriteLeavesNothingBehind() throws {
        let tmp = TempDir()
        try writeBytes([1, 2, 3], to: tmp.file("keep.lidb"))
        let bad = TensorSource(info: TensorInfo(name: "x", dtype: .F32, shape: [4])) { (consume) throws(TensorFileError) in
            try consume(UnsafeRawBufferPointer(start: nil, count: 0))
            throw TensorFileError(file: "source", .io(operation: "read", message: "simulated failure"))
        }
        let good = TensorSource.array(TensorInfo(name: "y", dtype: .U8, shape: [1]), [9])
        #expect(caught { try LidbWriter.write(to: tmp.file("keep.lidb"), kind: "tensors", tensors: [good, bad]) } != nil)
        #expect(caught { try SafetensorsWriter.write(to: tmp.file("new.safetensors"), tensors: [good, bad], metadata: nil) } != nil)
        #expect(try readBytes(tmp.file("keep.lidb")) == [1, 2, 3], "the existing file is untouched")
        #expect(tmp.contents == ["keep.lidb"], "no partial or temporary file remains")
    }

    // MARK: Validation, step by step (spec §5)

    @Test func preamble() {
        var b = LidbBuilder(header: header([]))
        #expect(problem { _ = try parseLidb([]) } == .badMagic)
        #expect(problem { _ = try parseLidb(Array(b.bytes()[0..<5])) } == .truncated(needed: 64, available: 5))
        #expect(problem { _ = try parseLidb(Array(b.bytes()[0..<40])) } == .truncated(needed: 64, available: 40))
        b.magic[1] = 0x6C
        expectProblem(b) { $0 == .badMagic }
        b = LidbBuilder(header: header([])); b.major = 2
        expectProblem(b) { $0 == .unsupportedVersion(major: 2, minor: 0) }
        b = LidbBuilder(header: header([])); b.major = 0
        expectProblem(b) { $0 == .unsupportedVersion(major: 0, minor: 0) }
        b = LidbBuilder(header: header([])); b.storedLengthOverride = 100_000_001
        expectProblem(b) { $0 == .headerTooLarge(length: 100_000_001, limit: 100_000_000) }
        b = LidbBuilder(header: header([])); b.headerLengthOverride = 200_000_000; b.flags = 1
        expectProblem(b) { $0 == .headerTooLarge(length: 200_000_000, limit: 100_000_000) }
        b = LidbBuilder(header: header([])); b.storedLengthOverride = 5000
        expectProblem(b) { if case .headerPastEnd = $0 { return true }; return false }
        b = LidbBuilder(header: header([])); b.fixCRC = false
        expectProblem(b) { if case .headerChecksumMismatch = $0 { return true }; return false }
        b = LidbBuilder(header: header([])); b.reserved[3] = 1
        expectProblem(b) { $0 == .nonZeroReserved(offset: 55) }
        b = LidbBuilder(header: header([])); b.flags = 0x4
        expectProblem(b) { $0 == .unknownRequiredFlags(0x4) }
        b = LidbBuilder(header: header([])); b.headerLengthOverride = 3
        expectProblem(b) { if case .sizeMismatch = $0 { return true }; return false }
        b = LidbBuilder(header: header([])); b.dataOffsetOverride = 65
        expectProblem(b) { $0 == .misalignedDataSection(offset: 65) }
        b = LidbBuilder(header: header([])); b.dataOffsetOverride = 256
        expectProblem(b) { if case .hole = $0 { return true }; return false }
        b = LidbBuilder(header: header([]), data: [0, 0])
        b.dataLengthOverride = 0
        expectProblem(b) { if case .dataSectionMismatch = $0 { return true }; return false }
        b = LidbBuilder(header: header([])); b.dataLengthOverride = 10
        expectProblem(b) { if case .truncated = $0 { return true }; return false }
        b = LidbBuilder(header: header([])); b.dataLengthOverride = UInt64.max - 10
        expectProblem(b) { if case .dataSectionMismatch = $0 { return true }; return false }
    }

    @Test func forwardCompatibility() throws {
        // A later minor version with unknown fields, an optional flag and reserved bytes: accepted.
        var b = LidbBuilder(header: #"{"kind":"future-kind","future":{"x":[1,2]},"tensors":[\#(row("a", data: zeros16).dropLast())"#
                            + #","hint":"new"}]}"#, data: zeros16)
        b.minor = 7
        b.flags = 0x0001_0000
        b.reserved[0] = 9
        let l = try parseLidb(b.bytes())
        #expect(l.kind == "future-kind" && l.minor == 7 && l.entries.count == 1 && l.metadata == .object([]))
    }

    @Test func compressedHeader() throws {
        let text = header([row("a", data: zeros16)])
        let packed = try text.utf8.map { $0 }.withBytes { (b) throws(TensorFileError.Problem) in try Zstd.compress(b, level: 3) }
        var b = LidbBuilder(header: text, data: zeros16)
        b.storedHeader = packed
        b.flags = 1
        #expect(try parseLidb(b.bytes()).entries.count == 1)
        b.headerLengthOverride = UInt64(text.utf8.count + 1)
        expectProblem(b) { if case .decompressionFailed = $0 { return true }; return false }
        b.headerLengthOverride = nil
        b.storedHeader = Array("not zstd at all".utf8)
        expectProblem(b) { if case .decompressionFailed = $0 { return true }; return false }
    }

    @Test func headerText() {
        expectProblem(LidbBuilder(header: "{\"kind\":\"a\u{FFFF}\"")) { if case .invalidJSON = $0 { return true }; return false }
        var b = LidbBuilder(header: #"{"kind":"xx","tensors":[]}"#)
        b.header[10] = 0xC0
        expectProblem(b) { $0 == .headerNotUTF8(offset: 10) }
        expectProblem(LidbBuilder(header: "[]")) { $0 == .headerNotObject }
        expectProblem(LidbBuilder(header: #"{"kind":"a","kind":"b","tensors":[]}"#)) { $0 == .duplicateKey("kind") }
        expectProblem(LidbBuilder(header: #"{"kind":"a","metadata":\#(String(repeating: "[", count: 70) + String(repeating: "]", count: 70))}"#)) {
            $0 == .nestingTooDeep(limit: 64)
        }
        expectProblem(LidbBuilder(header: #"{"tensors":[]}"#)) { $0 == .missingField("kind") }
        expectProblem(LidbBuilder(header: #"{"kind":1,"tensors":[]}"#)) { if case .wrongType = $0 { return true }; return false }
        expectProblem(LidbBuilder(header: #"{"kind":"a"}"#)) { $0 == .missingField("tensors") }
        expectProblem(LidbBuilder(header: #"{"kind":"a","tensors":{}}"#)) { if case .wrongType = $0 { return true }; return false }
        expectProblem(LidbBuilder(header: #"{"kind":"a","metadata":[],"tensors":[]}"#)) { if case .wrongType = $0 { return true }; return false }
        expectProblem(LidbBuilder(header: #"{"kind":"a","metadata":{"x":NaN},"tensors":[]}"#)) { if case .invalidJSON = $0 { return true }; return false }
        expectProblem(LidbBuilder(header: #"{"kind":"a","metadata":{"x":01},"tensors":[]}"#)) { if case .invalidJSON = $0 { return true }; return false }
        expectProblem(LidbBuilder(header: #"{"kind":"a","metadata":{"x":"\ud800"},"tensors":[]}"#)) { if case .invalidJSON = $0 { return true }; return false }
    }

    @Test func tensorTable() {
        let z = zeros16
        func one(_ r: String, data: [UInt8]? = nil) -> LidbBuilder { LidbBuilder(header: header([r]), data: data ?? z) }
        expectProblem(one(row("", data: z))) { if case .invalidName = $0 { return true }; return false }
        expectProblem(one(row(String(repeating: "n", count: 1025), data: z))) { if case .invalidName = $0 { return true }; return false }
        expectProblem(one(row("a\\u0000b", data: z))) { if case .invalidName = $0 { return true }; return false }
        expectProblem(one(row("a", "F33"))) { $0 == .unknownDType("F33") }
        expectProblem(one(row("a", "F32", "[-4]"))) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(one(row("a", "F32", "[4.5]"))) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(one(row("a", "F32", "[\"4\"]"))) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(one(row("a", "F32", "[9223372036854775808]"))) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(one(row("a", "F32", "[" + Array(repeating: "1", count: 33).joined(separator: ",") + "]"))) {
            if case .invalidShape = $0 { return true }; return false
        }
        expectProblem(one(row("a", "F32", "[4294967296,4294967296]"))) { $0 == .sizeOverflow }
        expectProblem(one(row("a", "F32", "[3]"))) { $0 == .sizeMismatch(expected: 12, actual: 16) }
        expectProblem(one(row("a", encoding: "lz4"))) { $0 == .unknownEncoding("lz4") }
        expectProblem(one(row("a", "F32", "[0]", length: 0, encoding: "zstd", data: []), data: [])) { if case .wrongType = $0 { return true }; return false }
        expectProblem(one(row("a", crc: "ABCDEF01"))) { if case .wrongType(field: "crc32c", _) = $0 { return true }; return false }
        expectProblem(one(row("a", crc: "1234"))) { if case .wrongType(field: "crc32c", _) = $0 { return true }; return false }
        expectProblem(one(#"{"name":"a","dtype":"F32","shape":[4],"offset":-64,"length":16,"crc32c":"00000000"}"#)) {
            if case .wrongType(field: "offset", _) = $0 { return true }; return false
        }
        expectProblem(one(#"{"name":"a","dtype":"F32","shape":[4],"length":16,"crc32c":"00000000"}"#)) { $0 == .missingField("offset") }
        expectProblem(one("7")) { if case .wrongType = $0 { return true }; return false }
        // Placement.
        let two = [UInt8](repeating: 0, count: 80)
        expectProblem(LidbBuilder(header: header([row("a", data: z), row("a", offset: 64, data: z)]), data: two)) { $0 == .duplicateTensor }
        expectProblem(LidbBuilder(header: header([row("a", data: z), row("b", offset: 32, data: z)]), data: two)) { $0 == .misalignedTensor(offset: 32) }
        expectProblem(LidbBuilder(header: header([row("a", data: z), row("b", offset: 128, data: z)]), data: [UInt8](repeating: 0, count: 144))) {
            $0 == .hole(expectedBegin: 64, actualBegin: 128)
        }
        expectProblem(LidbBuilder(header: header([row("a", "F32", "[32]", length: 128), row("b", offset: 64, data: z)]), data: [UInt8](repeating: 0, count: 144))) {
            $0 == .overlap(expectedBegin: 128, actualBegin: 64)
        }
        expectProblem(LidbBuilder(header: header([row("a", data: z)]), data: [UInt8](repeating: 0, count: 8))) { $0 == .outOfRange(end: 16, limit: 8) }
        expectProblem(LidbBuilder(header: header([row("a", data: z)]), data: [UInt8](repeating: 0, count: 20))) {
            $0 == .bufferNotCovered(dataEnd: 16, bufferSize: 20)
        }
    }

    @Test func compressionBombsAreRefusedWithoutAllocating() throws {
        // 32 GiB declared for a zstd tensor: refused by the parser.
        let small = try [UInt8](repeating: 0, count: 64).withBytes { (b) throws(TensorFileError.Problem) in try Zstd.compress(b, level: 3) }
        expectProblem(LidbBuilder(header: header([row("a", "U8", "[34359738368]", length: UInt64(small.count), encoding: "zstd", data: small)]), data: small)) {
            if case .limitExceeded = $0 { return true }; return false
        }
        // 512 MiB declared, but the frame says 64 bytes: caught from the frame header by verify
        // and by tensor access, before any output buffer exists.
        let tmp = TempDir()
        try writeBytes(LidbBuilder(header: header([row("a", "U8", "[536870912]", length: UInt64(small.count), encoding: "zstd", data: small)]), data: small).bytes(),
                       to: tmp.file("bomb.lidb"))
        #expect(caught { _ = try LidbFile(path: tmp.file("bomb.lidb")) }?.tensor == "a", "opening a small file verifies it")
        let f = try LidbFile(path: tmp.file("bomb.lidb"), checksums: .never)
        #expect(f.verify().count == 1)
        guard case .decompressionFailed = problem({ _ = try f.tensorBytes("a") }) else { Issue.record("expected decompressionFailed"); return }
    }

    // MARK: Integrity

    static func sampleFile(compressed: Bool) throws -> [UInt8] {
        let tmp = TempDir()
        var rng = SplitMix(seed: 3)
        let down = (0..<200).map { _ in UInt8(truncatingIfNeeded: rng.next() % 5) }
        let up = (0..<100).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        try LidbWriter.write(to: tmp.file("s.lidb"), kind: "subject",
                             metadata: .object([("trigger", .string("sks")), ("rank", .int(1))]),
                             tensors: [TensorSource.array(TensorInfo(name: "l0.down", dtype: .F16, shape: [1, 100]), down),
                                       TensorSource.array(TensorInfo(name: "l0.up", dtype: .F16, shape: [50, 1]), up)],
                             options: compressed ? .init(encoding: .zstd(level: 19), compressHeader: true) : .init())
        return try readBytes(tmp.file("s.lidb"))
    }

    /// Opens the bytes and runs verify; true when any damage is reported.
    static func detectsDamage(_ bytes: [UInt8], in tmp: TempDir) throws -> Bool {
        let path = tmp.file("d.lidb")
        try writeBytes(bytes, to: path)
        do {
            let f = try LidbFile(path: path, checksums: .never)
            return !f.verify().isEmpty
        } catch is TensorFileError {
            return true
        }
    }

    @Test(arguments: [false, true])
    func everySingleBitFlipIsDetected(compressed: Bool) throws {
        let original = try Self.sampleFile(compressed: compressed)
        let tmp = TempDir()
        #expect(try !Self.detectsDamage(original, in: tmp))
        var undetected: [Int] = []
        for bit in 0..<(original.count * 8) {
            var b = original
            b[bit / 8] ^= UInt8(1 << (bit % 8))
            if try !Self.detectsDamage(b, in: tmp) { undetected.append(bit) }
        }
        #expect(undetected.isEmpty, "undetected flips at bits \(undetected.prefix(10)) of \(original.count * 8)")
    }

    @Test func truncationAtEveryCutPointIsAnError() throws {
        let original = try Self.sampleFile(compressed: true)
        for cut in 0..<original.count {
            #expect(problem { _ = try parseLidb(Array(original[0..<cut])) } != nil, "cut at \(cut)")
        }
    }

    @Test func verifyNamesTheDamagedTensor() throws {
        var bytes = try Self.sampleFile(compressed: false)
        let tmp = TempDir()
        try writeBytes(bytes, to: tmp.file("ok.lidb"))
        let f = try LidbFile(path: tmp.file("ok.lidb"))
        let up = f.entry("l0.up")!
        bytes[Int(f.layout.dataOffset + up.offset) + 3] ^= 0x10
        try writeBytes(bytes, to: tmp.file("bad.lidb"))
        // Opening a small file checks its tensors, so the damage is reported at once.
        let e = caught { _ = try LidbFile(path: tmp.file("bad.lidb")) }
        #expect(e?.tensor == "l0.up")
        if case .tensorChecksumMismatch = e?.problem {} else { Issue.record("expected a checksum mismatch, got \(String(describing: e))") }
        let problems = try LidbFile(path: tmp.file("bad.lidb"), checksums: .never).verify()
        #expect(problems.count == 1 && problems[0].tensor == "l0.up")
    }
}
