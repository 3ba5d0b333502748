import Foundation
import Testing
@testable import TensorFile

/// spec/format.md §1.2 / §5 step 10: `shape`, `offset` and `length` are integers written without a
/// sign, so `-0` is refused in all three (the Python reader agrees: converters/python/tests).
@Suite struct NegativeZeroTests {
    func lidb(_ row: String, data: [UInt8]) -> [UInt8] {
        LidbBuilder(header: #"{"kind":"tensors","metadata":{"z":-0},"tensors":[\#(row)]}"#, data: data).bytes()
    }

    @Test func negativeZeroIsRefusedInTheTensorTable() throws {
        let z = [UInt8](repeating: 0, count: 16)
        let crc = hex8(CRC32C.checksum(z)), empty = hex8(CRC32C.checksum([UInt8]()))
        // The same files with `0` are valid, and `-0` in metadata is the integer 0.
        let ok = try parseLidb(lidb(#"{"name":"a","dtype":"F32","shape":[0,4],"offset":0,"length":0,"crc32c":"\#(empty)"}"#, data: []))
        #expect(ok.entries[0].info.shape == [0, 4] && ok.metadata["z"]?.int64Value == 0)
        let cases: [(String, [UInt8], (TensorFileError.Problem) -> Bool)] = [
            (#"{"name":"a","dtype":"F32","shape":[-0,4],"offset":0,"length":0,"crc32c":"\#(empty)"}"#, [], { if case .invalidShape = $0 { return true }; return false }),
            (#"{"name":"a","dtype":"F32","shape":[4],"offset":-0,"length":16,"crc32c":"\#(crc)"}"#, z, { if case .wrongType(field: "offset", _) = $0 { return true }; return false }),
            (#"{"name":"a","dtype":"F32","shape":[0],"offset":0,"length":-0,"crc32c":"\#(empty)"}"#, [], { if case .wrongType(field: "length", _) = $0 { return true }; return false }),
        ]
        for (row, data, check) in cases {
            let p = problem { _ = try parseLidb(lidb(row, data: data)) }
            #expect(p.map(check) == true, "\(row): \(String(describing: p))")
        }
        // Safetensors shapes follow the same rule (the reference reader refuses `-0` as well).
        let p = problem { _ = try parseSafetensors(safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}"#, data: [])) }
        #expect({ if case .invalidShape = p { return true }; return false }(), "\(String(describing: p))")
    }

    /// §5 step 10's error categories for a row that is not an object and a row without `crc32c`.
    @Test func rowCategories() {
        var p = problem { _ = try parseLidb(LidbBuilder(header: #"{"kind":"tensors","tensors":[7]}"#).bytes()) }
        #expect({ if case .wrongType(field: "tensors[0]", _) = p { return true }; return false }(), "\(String(describing: p))")
        p = problem { _ = try parseLidb(LidbBuilder(header: #"{"kind":"tensors","tensors":[{"name":"a","dtype":"F32","shape":[4],"offset":0,"length":16}]}"#, data: [UInt8](repeating: 0, count: 16)).bytes()) }
        #expect(p == .missingField("crc32c"))
    }
}
