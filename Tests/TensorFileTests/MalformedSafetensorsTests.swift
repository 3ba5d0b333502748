import Testing
@testable import TensorFile

/// Hostile and damaged safetensors files each get a specific typed error.
@Suite struct MalformedSafetensorsTests {
    let f32x4 = [UInt8](repeating: 0, count: 16)

    func expectProblem(_ header: String, _ data: [UInt8], lengthOverride: UInt64? = nil,
                       _ check: (TensorFileError.Problem) -> Bool, sourceLocation: SourceLocation = #_sourceLocation) {
        let bytes = safetensorsBytes(header: header, data: data, lengthOverride: lengthOverride)
        let p = problem { _ = try parseSafetensors(bytes) }
        #expect(p.map(check) == true, "got \(String(describing: p)) for \(header)", sourceLocation: sourceLocation)
    }

    @Test func validMinimalFileParses() throws {
        let l = try parseSafetensors(safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, data: f32x4))
        #expect(l.entries.count == 1 && l.entries[0].info.shape == [2, 2])
        // Padding with spaces and a null __metadata__ are accepted, as by the reference reader.
        _ = try parseSafetensors(safetensorsBytes(header: #"{"__metadata__":null,"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}   "#, data: f32x4))
    }

    @Test func framing() {
        #expect(problem { _ = try parseSafetensors([1, 2, 3]) } == .truncated(needed: 8, available: 3))
        expectProblem("{}", [], lengthOverride: 100_000_001) { $0 == .headerTooLarge(length: 100_000_001, limit: 100_000_000) }
        expectProblem("{}", [], lengthOverride: 50) { $0 == .headerPastEnd(headerEnd: 58, fileSize: 10) }
        expectProblem("{}", [], lengthOverride: UInt64.max) { if case .headerTooLarge = $0 { return true }; return false }
    }

    @Test func headerText() {
        expectProblem("{\"a\u{1}\":1}", []) { if case .invalidJSON = $0 { return true }; return false }
        let bad = safetensorsBytes(header: "{\"x\":\"\u{FF}\"}", data: []).enumerated().map { $0.offset == 14 ? UInt8(0xFF) : $0.element }
        #expect({ if case .headerNotUTF8 = problem({ _ = try parseSafetensors(bad) }) { return true }; return false }())
        expectProblem("[]", []) { $0 == .headerNotObject }
        expectProblem("\"text\"", []) { $0 == .headerNotObject }
        expectProblem("", []) { if case .invalidJSON = $0 { return true }; return false }
        expectProblem("{\"a\":", []) { if case .invalidJSON = $0 { return true }; return false }
        expectProblem("{} {}", []) { if case .invalidJSON = $0 { return true }; return false }
        let deep = "{\"__metadata__\":" + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}"
        expectProblem(deep, []) { $0 == .nestingTooDeep(limit: 64) }
        // A million nested arrays must not overflow the stack.
        let deeper = String(repeating: "[", count: 1_000_000)
        expectProblem(deeper, []) { $0 == .nestingTooDeep(limit: 64) }
    }

    @Test func metadata() {
        expectProblem(#"{"__metadata__":{"k":1}}"#, []) { $0 == .metadataValueNotString(key: "k") }
        expectProblem(#"{"__metadata__":"x"}"#, []) { $0 == .metadataNotObject }
        expectProblem(#"{"__metadata__":{"k":"a","k":"b"}}"#, []) { $0 == .duplicateKey("k") }
    }

    @Test func entries() {
        let ok = #""data_offsets":[0,16]"#
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#,
                      f32x4 + f32x4) { $0 == .duplicateKey("a") }
        expectProblem(#"{"a":{"dtype":"F31","shape":[4],\#(ok)}}"#, f32x4) { $0 == .unknownDType("F31") }
        expectProblem(#"{"a":{"dtype":"f32","shape":[4],\#(ok)}}"#, f32x4) { $0 == .unknownDType("f32") }
        expectProblem(#"{"a":{"shape":[4],\#(ok)}}"#, f32x4) { $0 == .missingField("dtype") }
        expectProblem(#"{"a":{"dtype":"F32",\#(ok)}}"#, f32x4) { $0 == .missingField("shape") }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4]}}"#, f32x4) { $0 == .missingField("data_offsets") }
        expectProblem(#"{"a":[1]}"#, []) { if case .wrongType = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[-4],\#(ok)}}"#, f32x4) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4.0],\#(ok)}}"#, f32x4) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[1e1],\#(ok)}}"#, f32x4) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[99999999999999999999999],\#(ok)}}"#, f32x4) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":"4",\#(ok)}}"#, f32x4) { if case .wrongType = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,0],\#(ok)}}"#, f32x4) { $0 == .sizeOverflow }
        expectProblem(#"{"a":{"dtype":"F64","shape":[2305843009213693952],\#(ok)}}"#, f32x4) { $0 == .sizeOverflow }
        expectProblem(#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#, [0]) { if case .invalidShape = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[3],\#(ok)}}"#, f32x4) { $0 == .sizeMismatch(expected: 12, actual: 16) }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#, f32x4) { $0 == .invalidOffsets(begin: 16, end: 0) }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0]}}"#, f32x4) { if case .wrongType = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[-1,15]}}"#, f32x4) { if case .wrongType = $0 { return true }; return false }
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0.5,16]}}"#, f32x4) { if case .wrongType = $0 { return true }; return false }
    }

    @Test func layout() {
        let two = f32x4 + f32x4
        // Hole: b starts after a gap.
        expectProblem(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#,
                      [UInt8](repeating: 0, count: 24)) { $0 == .hole(expectedBegin: 8, actualBegin: 16) }
        // Data not starting at 0.
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#, two) { $0 == .hole(expectedBegin: 0, actualBegin: 16) }
        // Overlap.
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
                      [UInt8](repeating: 0, count: 24)) { $0 == .overlap(expectedBegin: 16, actualBegin: 8) }
        // Out of range: the buffer is shorter than the offsets say.
        expectProblem(#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#, f32x4) { $0 == .outOfRange(end: 32, limit: 16) }
        expectProblem(#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}}"#, []) {
            if case .outOfRange = $0 { return true }; return false
        }
        // Trailing bytes after the last tensor.
        expectProblem(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, two) { $0 == .bufferNotCovered(dataEnd: 16, bufferSize: 32) }
        // Empty tensors may share an offset.
        #expect(problem { _ = try parseSafetensors(safetensorsBytes(header: #"{"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"f":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}"#, data: [])) } == nil)
    }

    @Test func truncatedAtEveryCutPoint() throws {
        let full = try readBytes(Fixtures.path("safetensors/all_dtypes.safetensors"))
        let headerEnd = 8 + Int(full.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        for cut in 0..<full.count {
            let p = problem { _ = try parseSafetensors(Array(full[0..<cut])) }
            switch cut {
            case 0..<8: #expect(p == .truncated(needed: 8, available: UInt64(cut)))
            case 8..<headerEnd: #expect(p == .headerPastEnd(headerEnd: UInt64(headerEnd), fileSize: UInt64(cut)))
            default:
                guard case .outOfRange = p else { Issue.record("cut \(cut): \(String(describing: p))"); return }
            }
        }
    }

    @Test func errorsNameTheFileAndTensor() {
        let bytes = safetensorsBytes(header: #"{"w.q":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, data: f32x4)
        let e = caught { _ = try parseSafetensors(bytes) }
        #expect(e?.description == "test.safetensors: tensor 'w.q': byte size is 16 but shape and dtype need 12")
    }
}
