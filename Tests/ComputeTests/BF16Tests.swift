import CLidbDNNL
import Testing
@testable import Compute

/// The bf16 product (oneDNN, AVX-512 BF16) against a binary64 product of the same bf16-rounded
/// operands, and the fallback where the instructions are missing.
@Suite struct BF16Tests {
    /// Round to nearest even to bfloat16, written independently of the kernel's C code.
    static func bf16(_ x: Float) -> Float {
        if x.isNaN { return x }
        let bits = x.bitPattern
        let lower = bits & 0xFFFF, upper = bits & 0xFFFF_0000
        let half: UInt32 = 0x8000
        var r = upper
        if lower > half || (lower == half && (upper >> 16) & 1 == 1) { r = upper &+ 0x1_0000 }
        return Float(bitPattern: r)
    }

    /// xorshift values in [-2, 2) with a few exact ties and large magnitudes mixed in.
    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed | 1
        return (0..<n).map { i in
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            let u = Float(s >> 40) / Float(1 << 24) * 4 - 2
            switch i % 97 {
            case 5: return Float(bitPattern: 0x3F80_8000)  // a tie: rounds to even (down)
            case 6: return Float(bitPattern: 0x3F81_8000)  // a tie: rounds to even (up)
            case 7: return 3.0e4 * u
            default: return u
            }
        }
    }

    @Test func roundingMatchesTheDefinition() {
        let xs: [Float] = [0, -0.0, 1, 1.00390625, Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000),
                           Float(bitPattern: 0x3F80_8001), .infinity, -.infinity, .greatestFiniteMagnitude, 1e-40, -3.3e38] + Self.values(4096, seed: 9)
        var out = [UInt16](repeating: 0, count: xs.count)
        lidb_f32_to_bf16_rne(xs, &out, Int64(xs.count))
        for (x, h) in zip(xs, out) {
            let got = Float(bitPattern: UInt32(h) << 16)
            #expect(got.bitPattern == Self.bf16(x).bitPattern, "\(x)")
        }
        lidb_f32_to_bf16_rne([Float.nan], &out, 1)
        #expect(Float(bitPattern: UInt32(out[0]) << 16).isNaN)
    }

    struct Case: Sendable, CustomStringConvertible {
        let transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float, pad: Int
        var description: String { "\(transA ? "T" : "N")\(transB ? "T" : "N") \(m)×\(n)×\(k) α\(alpha) β\(beta) pad \(pad)" }
    }

    static let cases: [Case] = [
        Case(transA: false, transB: true, m: 77, n: 320, k: 768, alpha: 1, beta: 0, pad: 0),    // a linear layer
        Case(transA: false, transB: false, m: 128, n: 40, k: 1000, alpha: 1, beta: 0, pad: 3),  // P·V with head slices
        Case(transA: false, transB: true, m: 128, n: 300, k: 40, alpha: 0.158, beta: 0, pad: 5), // scaled Q·Kᵀ
        Case(transA: true, transB: false, m: 64, n: 40, k: 128, alpha: 0.5, beta: 1, pad: 0),   // accumulated Pᵀ·dO
        Case(transA: true, transB: true, m: 33, n: 17, k: 65, alpha: -1, beta: 0.25, pad: 2),
        Case(transA: false, transB: false, m: 1, n: 1, k: 1, alpha: 1, beta: 0, pad: 0),
    ]

    @Test(arguments: cases) func productMatchesBinary64OfRoundedOperands(_ c: Case) throws {
        let (ar, ac) = c.transA ? (c.k, c.m) : (c.m, c.k)
        let (br, bc) = c.transB ? (c.n, c.k) : (c.k, c.n)
        let lda = ac + c.pad, ldb = bc + c.pad, ldc = c.n + c.pad
        let a = Self.values(ar * lda, seed: 1), b = Self.values(br * ldb, seed: 2), c0 = Self.values(c.m * ldc, seed: 3)
        var out = c0
        let ran = a.withBase { pa in b.withBase { pb in out.withMutableBase { pc in
            bf16gemm(c.transA, c.transB, m: c.m, n: c.n, k: c.k, alpha: c.alpha, pa, lda: lda, pb, ldb: ldb, beta: c.beta, pc, ldc: ldc)
        } } }
        guard lidb_dnnl_bf16_supported() != 0 else {
            #expect(!ran && out == c0, "without AVX-512 BF16 the product must decline and leave C alone")
            return
        }
        #expect(ran)
        func A(_ i: Int, _ j: Int) -> Double { Double(Self.bf16(c.transA ? a[j * lda + i] : a[i * lda + j])) }
        func B(_ i: Int, _ j: Int) -> Double { Double(Self.bf16(c.transB ? b[j * ldb + i] : b[i * ldb + j])) }
        var worst = 0.0
        for i in 0..<c.m {
            for j in 0..<c.n {
                var sum = 0.0, mag = 0.0
                for p in 0..<c.k { sum += A(i, p) * B(p, j); mag += abs(A(i, p) * B(p, j)) }
                let want = Double(c.alpha) * sum + Double(c.beta) * Double(c0[i * ldc + j])
                let bound = 2e-6 * (abs(Double(c.alpha)) * mag + abs(Double(c.beta) * Double(c0[i * ldc + j]))) + 1e-30
                worst = max(worst, abs(Double(out[i * ldc + j]) - want) / bound)
            }
            // Padding between rows is never written.
            for j in c.n..<ldc { #expect(out[i * ldc + j] == c0[i * ldc + j]) }
        }
        #expect(worst <= 1, "\(c): error \(worst) × the binary32-accumulation bound")
        // And the operands really were rounded: the f32 product differs for general inputs.
        if c.k > 8 {
            var f32 = c0
            a.withBase { pa in b.withBase { pb in f32.withMutableBase { pc in
                sgemm(c.transA, c.transB, m: c.m, n: c.n, k: c.k, alpha: c.alpha, pa, lda: lda, pb, ldb: ldb, beta: c.beta, pc, ldc: ldc)
            } } }
            #expect(f32 != out)
        }
    }

    /// B given as bfloat16 bit patterns (a weight held in bf16, read by oneDNN in place, or
    /// copied row by row when its rows are padded) gives the bits of the product with B's binary32
    /// values: a linear layer's forward (`X·Wᵀ`) and input gradient (`G·W`) shapes.
    @Test(arguments: [Case(transA: false, transB: true, m: 77, n: 320, k: 768, alpha: 1, beta: 0, pad: 0),
                      Case(transA: false, transB: false, m: 64, n: 96, k: 128, alpha: 1, beta: 0, pad: 0),
                      Case(transA: false, transB: true, m: 70, n: 65, k: 80, alpha: 1, beta: 1, pad: 3)])
    func bfloat16WeightBitsGiveTheSameProduct(_ c: Case) throws {
        let (br, bc) = c.transB ? (c.n, c.k) : (c.k, c.n)
        let lda = c.k + c.pad, ldb = bc + c.pad, ldc = c.n + c.pad
        let a = Self.values(c.m * lda, seed: 4), c0 = Self.values(c.m * ldc, seed: 6)
        let b16 = Self.values(br * ldb, seed: 5).map { UInt16(Self.bf16($0).bitPattern >> 16) }
        let b = b16.map { Float(bitPattern: UInt32($0) << 16) }
        var viaBits = c0, viaFloats = c0
        let ran = a.withBase { pa in b16.withUnsafeBufferPointer { pb in viaBits.withMutableBase { pc in
            bf16gemm(c.transA, c.transB, m: c.m, n: c.n, k: c.k, pa, lda: lda, bfloat16: pb.baseAddress!, ldb: ldb, beta: c.beta, pc, ldc: ldc)
        } } }
        Self.expectSameAsFloats(ran: ran, viaBits: viaBits, c0: c0, c) {
            a.withBase { pa in b.withBase { pb in viaFloats.withMutableBase { pc in
                bf16gemm(c.transA, c.transB, m: c.m, n: c.n, k: c.k, alpha: 1, pa, lda: lda, pb, ldb: ldb, beta: c.beta, pc, ldc: ldc)
            } } }
        } floats: { viaFloats }
    }

    /// A given as bfloat16 bit patterns (a convolution weight held in bf16: `W · cols` forward,
    /// `Wᵀ · gy` for the input gradient; read in place, or copied when its rows are padded) gives
    /// the bits of the product with A's binary32 values.
    @Test(arguments: [Case(transA: false, transB: false, m: 320, n: 96, k: 2880, alpha: 1, beta: 1, pad: 0),
                      Case(transA: true, transB: false, m: 90, n: 64, k: 48, alpha: 1, beta: 0, pad: 0),
                      Case(transA: false, transB: false, m: 70, n: 65, k: 80, alpha: 1, beta: 1, pad: 3),
                      Case(transA: true, transB: false, m: 66, n: 70, k: 72, alpha: 1, beta: 0, pad: 5)])
    func bfloat16WeightAsAGivesTheSameProduct(_ c: Case) throws {
        let (ar, ac) = c.transA ? (c.k, c.m) : (c.m, c.k)
        let lda = ac + c.pad, ldb = c.n + c.pad, ldc = c.n + c.pad
        let a16 = Self.values(ar * lda, seed: 14).map { UInt16(Self.bf16($0).bitPattern >> 16) }
        let a = a16.map { Float(bitPattern: UInt32($0) << 16) }
        let b = Self.values(c.k * ldb, seed: 15), c0 = Self.values(c.m * ldc, seed: 16)
        var viaBits = c0, viaFloats = c0
        let ran = a16.withUnsafeBufferPointer { pa in b.withBase { pb in viaBits.withMutableBase { pc in
            bf16gemm(c.transA, c.transB, m: c.m, n: c.n, k: c.k, bfloat16: pa.baseAddress!, lda: lda, pb, ldb: ldb, beta: c.beta, pc, ldc: ldc)
        } } }
        Self.expectSameAsFloats(ran: ran, viaBits: viaBits, c0: c0, c) {
            a.withBase { pa in b.withBase { pb in viaFloats.withMutableBase { pc in
                bf16gemm(c.transA, c.transB, m: c.m, n: c.n, k: c.k, alpha: 1, pa, lda: lda, pb, ldb: ldb, beta: c.beta, pc, ldc: ldc)
            } } }
        } floats: { viaFloats }
    }

    /// A product from bf16 bit patterns (`ran`, into `viaBits`) against the same product from their
    /// binary32 values (`product`, into what `floats` returns): declined and C untouched without
    /// AVX-512 BF16; otherwise both ran, give the same bits, and changed C.
    static func expectSameAsFloats(ran: Bool, viaBits: [Float], c0: [Float], _ c: Case, product: () -> Bool, floats: () -> [Float]) {
        guard lidb_dnnl_bf16_supported() != 0 else {
            #expect(!ran && viaBits == c0)
            return
        }
        #expect(ran)
        #expect(product())
        #expect(viaBits == floats(), "\(c)")
        #expect(viaBits != c0)
    }

    @Test func missingInstructionsFallBackWithANotice() {
        ComputePrecision.simulateMissingBF16.store(true, ordering: .relaxed)
        defer { ComputePrecision.simulateMissingBF16.store(false, ordering: .relaxed) }
        #expect(!ComputePrecision.bf16Supported)
        let notice = ComputePrecision.select(.bf16)
        #expect(notice?.contains("AVX-512 BF16") == true)
        #expect(ComputePrecision.current == .f32)
        #expect(ComputePrecision.select(.f32) == nil)
    }

    @Test func sizesOutOfRangeAreDeclined() {
        var c: [Float] = [7]
        let a: [Float] = [1], b: [Float] = [1]
        let r = a.withBase { pa in b.withBase { pb in c.withMutableBase { pc in
            lidb_dnnl_gemm_bf16(0, 0, 1 << 40, 1, 1, 1, pa, 1, pb, 1, 0, pc, 1, 1)
        } } }
        #expect(r == -1 && c == [7])
    }
}
