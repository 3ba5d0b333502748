import CBLAS
import CPNG
import CZstd
import Testing

/// The system-library shims link and call into the Debian libraries.
@Suite struct SystemLibraryTests {
    @Test func openBLASMultipliesMatrices() {
        // [[1,2],[3,4]] × [[5,6],[7,8]] = [[19,22],[43,50]]
        let a: [Float] = [1, 2, 3, 4], b: [Float] = [5, 6, 7, 8]
        var c = [Float](repeating: 0, count: 4)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, b, 2, 0, &c, 2)
        #expect(c == [19, 22, 43, 50])
    }

    @Test func libpngReportsItsVersion() {
        #expect(png_access_version_number() >= 10600)
    }

    @Test func zstdRoundTrips() {
        let input = [UInt8](repeating: 7, count: 10_000)
        var packed = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let n = ZSTD_compress(&packed, packed.count, input, input.count, 3)
        #expect(ZSTD_isError(n) == 0 && n < 100)
        var out = [UInt8](repeating: 0, count: input.count)
        let m = ZSTD_decompress(&out, out.count, packed, n)
        #expect(m == input.count && out == input)
    }
}
