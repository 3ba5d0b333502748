import Foundation
import Testing
@testable import Compute

/// The fast convolution paths (Winograd F(2×2, 3×3) with its tile bands and output-channel
/// blocks, banded im2col) against the plain im2col + GEMM convolution computed in one piece
/// (the diffusers parity of whole models is in DiffusionTests/UNetTests).
@Suite struct ConvKernelTests {
    /// Deterministic values in [-1, 1).
    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % (1 << 24)) / Float(1 << 24) * 2 - 1
        }
    }

    static func relError(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count, let scale = b.map(abs).max(), scale > 0 else { return .infinity }
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    static func direct(_ x: FeatureMap, _ weight: [Float], _ bias: [Float]?, out: Int, k: Int, stride: Int = 1, padding: Int, band: Int? = nil) -> FeatureMap {
        let ho = (x.h + 2 * padding - k) / stride + 1, wo = (x.w + 2 * padding - k) / stride + 1
        return Conv2d.direct(x, weight: .f32(weight), bias: bias, out: out, kernel: k, stride: stride, padding: padding, ho: ho, wo: wo, band: band)
    }

    /// Odd and even sizes, several tile bands and output-channel blocks, with and without bias.
    @Test(arguments: [(16, 24, 8, 8), (24, 16, 7, 9), (32, 48, 13, 6), (17, 33, 1, 5)])
    func winogradMatchesDirect(c: Int, out: Int, h: Int, w: Int) throws {
        let x = try FeatureMap(c: c, h: h, w: w, data: Self.values(c * h * w, seed: 1))
        let weight = Self.values(out * c * 9, seed: 2), bias = Self.values(out, seed: 3)
        let direct = Self.direct(x, weight, bias, out: out, k: 3, padding: 1, band: h * w)
        for budget in [1 << 30, 16 * 16 * 20] {
            let y = Conv2d.winograd3x3(x, weight: .f32(weight), bias: bias, out: out, budget: budget)
            #expect(y.c == out && y.h == h && y.w == w)
            let e = Self.relError(y.data, direct.data)
            print("Winograd F(2×2, 3×3) \(c)→\(out) \(h)×\(w), budget \(budget): max |error| / max |direct| = \(e)")
            #expect(e < 2e-6)
        }
        let noBias = Conv2d.winograd3x3(x, weight: .f32(weight), bias: nil, out: out, budget: 1 << 30)
        let directNoBias = Self.direct(x, weight, nil, out: out, k: 3, padding: 1)
        #expect(Self.relError(noBias.data, directNoBias.data) < 2e-6)
    }

    /// A weight held in 16 bits, converted one block of output channels at a time, gives the
    /// bits of the same weight converted whole beforehand — forward (several blocks) and flipped.
    @Test(arguments: [16 * 16 * 20, 1 << 30])
    func sixteenBitWeightsConvertedPerBlockGiveTheSameBits(budget: Int) throws {
        let (c, out, h, w) = (24, 40, 9, 7)
        let x = try FeatureMap(c: c, h: h, w: w, data: Self.values(c * h * w, seed: 7))
        let exact = Self.values(out * c * 9, seed: 8)
        for held in [WeightValues.roundedToBFloat16(exact), .f16(exact.map { Float16($0).bitPattern })] {
            let whole = held.floats
            #expect(whole != exact)  // the held values are rounded: the comparison below is not with `exact`
            let a = Conv2d.winograd3x3(x, weight: held, bias: nil, out: out, budget: budget)
            let b = Conv2d.winograd3x3(x, weight: .f32(whole), bias: nil, out: out, budget: budget)
            #expect(a.data == b.data)
            let g = try FeatureMap(c: out, h: h, w: w, data: Self.values(out * h * w, seed: 9))
            let fa = Conv2d.winograd3x3(g, weight: held, bias: nil, out: c, flipped: true, budget: budget)
            let fb = Conv2d.winograd3x3(g, weight: .f32(whole), bias: nil, out: c, flipped: true, budget: budget)
            #expect(fa.data == fb.data)
        }
    }

    /// im2col in bands of output positions equals the single band, for every kernel shape used.
    @Test(arguments: [(3, 1, 1), (3, 2, 1), (3, 2, 0), (1, 1, 0), (3, 1, 0)])
    func bandedIm2colMatchesWhole(k: Int, stride: Int, padding: Int) throws {
        let (c, out, h, w) = (5, 7, 23, 19)
        let x = try FeatureMap(c: c, h: h, w: w, data: Self.values(c * h * w, seed: 4))
        let weight = Self.values(out * c * k * k, seed: 5), bias = Self.values(out, seed: 6)
        let whole = Self.direct(x, weight, bias, out: out, k: k, stride: stride, padding: padding, band: h * w)
        let banded = Self.direct(x, weight, bias, out: out, k: k, stride: stride, padding: padding, band: 1)
        #expect(whole.h == (h + 2 * padding - k) / stride + 1)
        #expect(Self.relError(banded.data, whole.data) < 1e-6)
    }

    /// Winograd is picked by itself only where its 16 GEMMs are large enough.
    @Test func dispatch() {
        #expect(Conv2d.winogradPays(in: 320, out: 320, h: 64, w: 64))
        #expect(!Conv2d.winogradPays(in: 4, out: 320, h: 64, w: 64))
        #expect(!Conv2d.winogradPays(in: 320, out: 4, h: 64, w: 64))
        #expect(!Conv2d.winogradPays(in: 320, out: 320, h: 4, w: 4))
        #expect(!Conv2d.winogradPays(in: 1280, out: 1280, h: 8, w: 8))
        #expect(Conv2d.winogradPays(in: 1280, out: 1280, h: 16, w: 16))
    }

    /// A layer's own algorithm is what a call without one uses.
    @Test func layerAlgorithmIsTheDefault() throws {
        let (c, out, h, w) = (4, 4, 5, 6)
        let x = try FeatureMap(c: c, h: h, w: w, data: Self.values(c * h * w, seed: 7))
        var conv = try Conv2d(weight: Self.values(out * c * 9, seed: 8), bias: nil, out: out, in: c, kernel: 3, padding: 1)
        let direct = try conv.forward(x, algorithm: .direct), winograd = try conv.forward(x, algorithm: .winograd)
        #expect(direct.data != winograd.data)  // different roundings: the two paths really differ
        #expect(try conv.forward(x).data == direct.data)  // small channel counts: automatic is direct
        conv.algorithm = .winograd
        #expect(try conv.forward(x).data == winograd.data)
    }
}

/// `WeightValues.multiply`: a weight held in 16 bits, converted one block of `op(W)`'s rows at a
/// time, gives the product with the whole weight converted beforehand to float32 rounding (the
/// BLAS may pick other kernels for a block's rows than for the whole, so the bits need not agree)
/// — `W · B` and `Wᵀ · B`, with several blocks, a ragged last block and one block, into a strided
/// C with beta.
@Suite struct WeightMultiplyTests {
    @Test(arguments: [37, 5 * 29, 1 << 30])
    func blockedConversionMatchesTheWholeProduct(budget: Int) {
        let (rows, cols, n) = (23, 29, 17)
        let exact = ConvKernelTests.values(rows * cols, seed: 11)
        for held in [WeightValues.roundedToBFloat16(exact), .f16(exact.map { Float16($0).bitPattern })] {
            let whole = WeightValues.f32(held.floats)
            #expect(held.floats != exact)
            for transposed in [false, true] {
                let (m, k) = transposed ? (cols, rows) : (rows, cols)
                let ldb = n + 3, ldc = n + 2
                let b = ConvKernelTests.values(k * ldb, seed: 12), c0 = ConvKernelTests.values(m * ldc, seed: 13)
                var viaBlocks = c0, viaWhole = c0
                b.withBase { pb in
                    viaBlocks.withMutableBase { pc in
                        held.multiply(transposed: transposed, rows: rows, cols: cols, pb, ldb: ldb, n: n, beta: 1, pc, ldc: ldc, budget: budget)
                    }
                    viaWhole.withMutableBase { pc in
                        whole.multiply(transposed: transposed, rows: rows, cols: cols, pb, ldb: ldb, n: n, beta: 1, pc, ldc: ldc, budget: budget)
                    }
                }
                let gap = zip(viaBlocks, viaWhole).map { abs($0 - $1) }.max()!, size = viaWhole.map { abs($0) }.max()!
                #expect(gap <= 1e-6 * size, "transposed \(transposed), budget \(budget): \(gap / size)")
                // The padding columns of C are left alone, and the product really ran.
                for i in 0..<m { #expect(viaBlocks[(i * ldc + n)..<((i + 1) * ldc)] == c0[(i * ldc + n)..<((i + 1) * ldc)]) }
                // Against a binary64 product of the held values.
                let w = held.floats
                var worst = 0.0, scale = 0.0
                for i in 0..<m { for j in 0..<n {
                    var s = Double(c0[i * ldc + j])
                    for p in 0..<k { s += Double(transposed ? w[p * cols + i] : w[i * cols + p]) * Double(b[p * ldb + j]) }
                    worst = max(worst, abs(s - Double(viaBlocks[i * ldc + j]))); scale = max(scale, abs(s))
                } }
                #expect(worst / scale < 1e-6, "transposed \(transposed): \(worst / scale)")
            }
        }
    }
}
