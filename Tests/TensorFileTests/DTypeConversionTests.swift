import Testing
@testable import TensorFile

/// torch's CPU casts recorded in Fixtures/dtype/conversions.safetensors.
@Suite struct DTypeConversionTests {
    static let file = try! SafetensorsFile(path: Fixtures.path("dtype/conversions.safetensors"))

    /// Converts `input` with our code and compares with torch's `output` bit for bit (NaN: NaN-ness only).
    func check(_ input: String, _ output: String) throws {
        let f = Self.file
        let inInfo = try #require(f.entry(input)).info
        let outInfo = try #require(f.entry(output)).info
        let src = try f.tensorBytes(input)
        let want = try f.tensorBytes(output)
        let n = inInfo.elementCount
        let got = OwnedBytes(count: n * outInfo.dtype.byteSize)
        DTypeConversion.convert(src.bytes, from: inInfo.dtype, into: got.buffer, to: outInfo.dtype, count: n)
        var mismatches = 0
        for i in 0..<n {
            let size = outInfo.dtype.byteSize
            let a = Array(got.bytes[(i * size)..<((i + 1) * size)])
            let b = Array(want.bytes[(i * size)..<((i + 1) * size)])
            if a == b { continue }
            if isNaN(a, outInfo.dtype) && isNaN(b, outInfo.dtype) { continue }
            mismatches += 1
            if mismatches <= 5 { Issue.record("\(input)→\(output) element \(i): got \(a), torch \(b)") }
        }
        #expect(mismatches == 0, "\(mismatches) of \(n) differ")
    }

    func isNaN(_ b: [UInt8], _ d: DType) -> Bool {
        switch d {
        case .F32: return Float(bitPattern: UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24).isNaN
        case .F16: let h = UInt16(b[0]) | UInt16(b[1]) << 8; return h & 0x7C00 == 0x7C00 && h & 0x3FF != 0
        case .BF16: let h = UInt16(b[0]) | UInt16(b[1]) << 8; return h & 0x7F80 == 0x7F80 && h & 0x7F != 0
        default: return false
        }
    }

    @Test func f32ToF16() throws { try check("f32.in", "f32.to_f16") }
    @Test func f32ToBF16() throws { try check("f32.in", "f32.to_bf16") }
    @Test func f16ToF32() throws { try check("f16_all.in", "f16_all.to_f32") }
    @Test func f16ToBF16() throws { try check("f16_all.in", "f16_all.to_bf16") }
    @Test func bf16ToF32() throws { try check("bf16_all.in", "bf16_all.to_f32") }
    @Test func bf16ToF16() throws { try check("bf16_all.in", "bf16_all.to_f16") }
    @Test func f8E4M3ToF32() throws { try check("f8_e4m3_all.in", "f8_e4m3_all.to_f32") }
    @Test func f8E4M3ToF16() throws { try check("f8_e4m3_all.in", "f8_e4m3_all.to_f16") }
    @Test func f8E5M2ToF32() throws { try check("f8_e5m2_all.in", "f8_e5m2_all.to_f32") }
    @Test func f8E5M2ToF16() throws { try check("f8_e5m2_all.in", "f8_e5m2_all.to_f16") }
    @Test func f64ToF32() throws { try check("f64.in", "f64.to_f32") }
    @Test(arguments: ["f8_e8m0_all", "f8_e4m3fnuz_all", "f8_e5m2fnuz_all"])
    func extraF8Types(prefix: String) throws {
        try check("\(prefix).in", "\(prefix).to_f32")
        try check("\(prefix).in", "\(prefix).to_f16")
    }

    @Test func reportsOverflowAndNaN() {
        let input: [Float] = [1, 65504, 65520, 1e10, -1e10, .infinity, .nan, 3e38]
        let out = OwnedBytes(count: input.count * 2)
        let r = input.withUnsafeBytes { DTypeConversion.convert($0, from: .F32, into: out.buffer, to: .F16, count: input.count) }
        #expect(r.overflowed == 4)  // 65520, ±1e10, 3e38 (inf input is not an overflow)
        #expect(r.nans == 1)
        let rb = input.withUnsafeBytes { DTypeConversion.convert($0, from: .F32, into: out.buffer, to: .BF16, count: input.count) }
        #expect(rb.overflowed == 0)  // 3e38 fits bf16's range
        let d: [Double] = [1e39, -1e300, 1, .nan]
        let o2 = OwnedBytes(count: d.count * 4)
        let r2 = d.withUnsafeBytes { DTypeConversion.convert($0, from: .F64, into: o2.buffer, to: .F32, count: d.count) }
        #expect(r2.overflowed == 2)
        #expect(r2.nans == 1)
    }
}
