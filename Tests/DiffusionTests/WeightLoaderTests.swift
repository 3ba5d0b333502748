import Foundation
import Testing
@testable import Checkpoint
import Compute
@testable import Diffusion
@testable import TensorFile

/// `WeightLoader`: a tensor read with bounded reads (small ones) gives the values of the same
/// tensor converted from the map, and the bf16 rounding straight from the file (a chunk at a
/// time) gives the bits of the whole tensor converted to binary32 and then rounded.
@Suite(.serialized) struct WeightLoaderTests {
    @Test(arguments: [DType.F32, .F16, .BF16]) func readAndMappedTensorsAgree(dtype: DType) throws {
        let (base, dir) = try TextEncoderTests.base("sd1", dtype: dtype)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mapped = WeightLoader(base: base, readBytes: 0), read = WeightLoader(base: base, readBytes: .max)
        var compared = 0
        for t in base.file.tensors where t.dtype.isFloatingPoint {
            let a = try mapped.f32(t.name), b = try read.f32(t.name)
            #expect(a.count == t.elementCount && a.elementsEqual(b) { $0.bitPattern == $1.bitPattern }, "\(t.name)")
            compared += 1
        }
        #expect(compared > 100)
        // Rounded per chunk from the file = rounded from the whole binary32 tensor.
        let held = try mapped.bfloat16Weights(prefix: "unet.", minimumCount: 1)
        #expect(held.count > 20)
        for (key, v) in held {
            #expect(v == WeightValues.roundedToBFloat16(try mapped.f32("unet." + key)), "\(key)")
        }
    }
}

@Suite struct ChunkedBFloat16Tests {
    /// Chunks of one value, an odd size, the exact size and more than the count give the bits of
    /// the whole array rounded at once (NaN, infinities, ties and subnormals included).
    @Test(arguments: [1, 7, 1000, 4096]) func chunkedRoundingMatchesWhole(chunk: Int) {
        var v: [Float] = [.nan, .infinity, -.infinity, 0, -0, .leastNonzeroMagnitude, Float(bitPattern: 0x3F80_8000),
                          Float(bitPattern: 0x3F81_8000), .greatestFiniteMagnitude]
        var s: UInt64 = 99
        while v.count < 1000 {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            v.append(Float(bitPattern: UInt32(truncatingIfNeeded: s >> 32)))
        }
        let whole = WeightValues.roundedToBFloat16(v)
        var seen: [Range<Int>] = []
        let chunked = WeightValues.roundedToBFloat16(count: v.count, chunk: chunk) { r, dst in
            seen.append(r)
            for (i, j) in r.enumerated() { dst[i] = v[j] }
        }
        #expect(chunked == whole)
        #expect(seen.first?.lowerBound == 0 && seen.last?.upperBound == v.count && seen.count == (v.count + chunk - 1) / chunk)
        #expect(WeightValues.roundedToBFloat16(count: 0) { _, _ in Issue.record("no chunk for no values") } == .bf16([]))
    }
}
