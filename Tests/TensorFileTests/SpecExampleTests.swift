import Foundation
import Testing
@testable import TensorFile

/// spec/examples/example.lidb was written by the independent Python implementation
/// (converters/python) from the spec alone; its expected parse is example.expected.json.
@Suite struct SpecExampleTests {
    static let dir = Fixtures.repo + "/spec/examples"

    /// The expected parse, read with our JSON parser so number literals keep their exact form.
    static func expected() throws -> JSONValue {
        try JSONValue.parse(try readBytes(dir + "/example.expected.json"))
    }

    static func valueBytes(_ dtype: DType, _ values: [JSONValue]) -> [UInt8] {
        var out: [UInt8] = []
        for v in values {
            switch dtype {
            case .F16: withUnsafeBytes(of: DTypeConversion.f32ToF16(Float(v.doubleValue!)).littleEndian) { out += $0 }
            case .F32: withUnsafeBytes(of: Float(v.doubleValue!).bitPattern.littleEndian) { out += $0 }
            case .F64: withUnsafeBytes(of: v.doubleValue!.bitPattern.littleEndian) { out += $0 }
            case .I32: withUnsafeBytes(of: Int32(v.int64Value!).littleEndian) { out += $0 }
            default: fatalError("dtype not used by the example")
            }
        }
        return out
    }

    @Test func swiftReaderGivesTheExpectedParse() throws {
        let exp = try Self.expected()
        let f = try LidbFile(path: Self.dir + "/example.lidb", checksums: .always)
        #expect(Int(f.layout.major) == exp["major"]?.int64Value.map(Int.init))
        #expect(Int(f.layout.minor) == exp["minor"]?.int64Value.map(Int.init))
        #expect(UInt64(f.layout.flags) == exp["flags"]?.uint64Value)
        #expect(f.kind == exp["kind"]?.stringValue)
        #expect(f.metadata == exp["metadata"])
        #expect(f.layout.dataOffset == exp["data_offset"]?.uint64Value)
        #expect(f.layout.dataLength == exp["data_length"]?.uint64Value)
        #expect(hex8(f.layout.headerCRC) == exp["header_crc32c"]?.stringValue)
        let rows = try #require(exp["tensors"]?.arrayValue)
        #expect(f.layout.entries.count == rows.count)
        for (e, r) in zip(f.layout.entries, rows) {
            #expect(e.info.name == r["name"]?.stringValue)
            #expect(e.info.dtype.name == r["dtype"]?.stringValue)
            #expect(e.info.shape.map { Int64($0) } == r["shape"]?.arrayValue?.compactMap(\.int64Value))
            #expect(e.offset == r["offset"]?.uint64Value && e.length == r["length"]?.uint64Value)
            #expect(e.encoding.rawValue == r["encoding"]?.stringValue)
            #expect(hex8(e.crc32c) == r["crc32c"]?.stringValue)
            #expect(try f.tensorBytes(e.info.name).array == Self.valueBytes(e.info.dtype, r["values"]?.arrayValue ?? []))
        }
    }

    @Test func swiftWriterProducesTheSameBytes() throws {
        let exp = try Self.expected()
        let rows = try #require(exp["tensors"]?.arrayValue)
        let sources = rows.map { r -> TensorSource in
            let dtype = DType(rawValue: r["dtype"]!.stringValue!)!
            let shape = r["shape"]!.arrayValue!.map { Int($0.int64Value!) }
            return .array(TensorInfo(name: r["name"]!.stringValue!, dtype: dtype, shape: shape), Self.valueBytes(dtype, r["values"]!.arrayValue!))
        }
        let tmp = TempDir()
        try LidbWriter.write(to: tmp.file("e.lidb"), kind: exp["kind"]!.stringValue!, metadata: exp["metadata"]!, tensors: sources)
        #expect(try readBytes(tmp.file("e.lidb")) == (try readBytes(Self.dir + "/example.lidb")))
    }
}
