import Testing
@testable import TensorFile

@Suite struct CRC32CTests {
    @Test func publishedCheckValue() {
        // The standard check value of CRC-32C (RFC 3720 appendix B.4 family; "123456789").
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        // RFC 3720 B.4: 32 bytes of zeros → 0x8A9136AA; 32 bytes of 0xFF → 0x62A8AB43.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum(Array(0..<32).map { UInt8($0) }) == 0x46DD_794E)
    }

    @Test func fastPathMatchesTablePathAtEveryLengthAndAlignment() {
        var rng = SplitMix(seed: 7)
        let big = (0..<(3 * 8192 * 3 + 977)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        big.withUnsafeBytes { all in
            for (start, len) in [(0, 0), (1, 1), (3, 7), (5, 8), (0, 24575), (0, 24576), (1, 24577), (7, 49153), (0, all.count), (13, all.count - 13)] {
                let slice = UnsafeRawBufferPointer(rebasing: all[start..<start + len])
                #expect(CRC32C.checksum(slice) == CRC32C.portableChecksum(slice), "start \(start) length \(len)")
            }
        }
    }

    @Test func continuationEqualsWhole() {
        let a = Array("hello, ".utf8), b = Array("world".utf8)
        #expect(CRC32C.checksum(b, continuing: CRC32C.checksum(a)) == CRC32C.checksum(a + b))
    }
}

/// A small deterministic generator for test data.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
