import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// PyTorch's CPU random generator, reproduced bit for bit.
//
// `TorchGenerator(seed: s).randn(count: n)` returns the bytes of
// `torch.randn(n, generator=torch.Generator().manual_seed(s), dtype=torch.float32)`, and likewise
// for float64 and `torch.rand`, with the generator's state carried across calls. What follows is
// how ATen computes them (aten/src/ATen/core/MT19937RNGEngine.h, CPUGeneratorImpl.cpp,
// core/DistributionsHelper.h, core/TransformationHelper.h, native/cpu/DistributionTemplates.h,
// native/cpu/avx_mathfun.h), checked against torch 2.15.0 by
// converters/fixtures/make_rng_fixtures.py and the TorchRandom tests.
//
// Engine. mt19937 (the 2002 reference algorithm, 624 × u32 state). `manual_seed(s)` keeps the full
// 64-bit seed for `initial_seed()` but initialises the state from its low 32 bits only, so seeds
// 7 and 2^32 + 7 give the same numbers. It also clears the cached normal value. `random()` is one
// engine output; `random64()` is two, the first one in the high half.
//
// Uniforms (`rand`, and the first step of `randn` for 16 or more elements).
//   float32: Float(random() & (2^24 − 1)) · 2^−24     one engine output per value
//   float64: Double(random64() & (2^53 − 1)) · 2^−53  two engine outputs per value
//
// Normals: three code paths, chosen by dtype and element count (a `randn` tensor is contiguous).
//
// 1. Fewer than 16 elements, any dtype: one value at a time from `normal_distribution<double>`.
//    u1, u2 are float64 uniforms (u1 first), r = sqrt(−2 · log1p(−u2)), θ = 2π · u1; the call
//    returns r · cos θ and caches r · sin θ in the generator. The next scalar-path value (in this
//    call or a later one, until `manual_seed`) is the cached one, and clears the cache. Each value
//    v becomes v · 1 + 0 (so −0 reads as +0) and is then rounded to the tensor's dtype. The
//    vectorised paths below neither read nor write the cache.
//
// 2. 16 or more float64 elements: every element gets a float64 uniform, then each block of 16
//    [u_0 … u_15] becomes, for j < 8, with a = 1 − u_j, b = u_{j+8}, r = sqrt(−2 · log a),
//    θ = 2π · b:  out_j = r · cos θ,  out_{j+8} = r · sin θ  (libm log/cos/sin, each · 1 + 0).
//    If the count is not a multiple of 16, the last 16 elements are then overwritten with 16 fresh
//    uniforms and transformed as one more block: the uniforms first drawn for the (count mod 16)
//    trailing elements are consumed and discarded, and the elements the last full block wrote
//    between count − 16 and the last multiple of 16 are replaced.
//
// 3. 16 or more float32 elements: the same layout (float32 uniforms, one engine output each),
//    with the block transform depending on the CPU kernel torch dispatches to:
//    - `.avx2`: x86-64 CPUs with AVX2 + FMA. torch's CPU capability is then AVX2 or AVX512 (the
//      AVX512 dispatch uses the same AVX2 kernel; both give identical bytes). The transform is
//      `normal_fill_16_AVX2`: log and sin/cos from avx_mathfun.h (Cephes polynomials in float32,
//      not libm), with θ = float32(2π) · b in float32. torch's build contracts several of those
//      multiply/add pairs into fused multiply-adds; the disassembly of libtorch_cpu.so shows
//      exactly which, and the functions below fuse the same ones (a rounding difference in
//      any of them changes some outputs by 1–2 ulp).
//    - `.generic`: torch's DEFAULT capability (x86-64 without AVX2/FMA, or ATEN_CPU_CAPABILITY=
//      default): the scalar loop with float32 libm logf, cosf, sinf and θ = float32(2π · double(b)).
//    The two kernels give different bytes for about 39% of the elements (by up to ~2e-6 in
//    absolute value; see kernel_differences in the fixtures' manifest), so matching torch means
//    choosing the kernel that torch ran. `.avx2` is what torch produces on x86-64 machines with
//    AVX2 and is the default here. (Which kernel an ARM build of torch uses has not been checked.)
//
// Beyond the fixtures, both float32 block kernels were compared with torch for every one of the
// 2^24 possible float32 uniforms (fed to torch through `Generator.set_state`), with no difference.
// The libm paths (1, 2 and `.generic`) call the platform's libm, as torch does; the fixtures pin
// them against glibc's results.

/// PyTorch's mt19937 engine (`at::mt19937`).
struct TorchMT19937: Sendable {
    static let n = 624
    static let m = 397

    private(set) var state: [UInt32]
    private(set) var left: Int
    private(set) var next: Int

    init(seed: UInt64) {
        var s = [UInt32](repeating: 0, count: Self.n)
        s[0] = UInt32(truncatingIfNeeded: seed)
        for j in 1..<Self.n {
            s[j] = 1_812_433_253 &* (s[j - 1] ^ (s[j - 1] >> 30)) &+ UInt32(j)
        }
        state = s
        left = 1
        next = 0
    }

    @inline(__always)
    private static func twist(_ u: UInt32, _ v: UInt32) -> UInt32 {
        (((u & 0x8000_0000) | (v & 0x7fff_ffff)) >> 1) ^ ((v & 1) != 0 ? 0x9908_b0df : 0)
    }

    private mutating func regenerate() {
        left = Self.n
        next = 0
        state.withUnsafeMutableBufferPointer { s in
            for i in 0..<(Self.n - Self.m) {
                s[i] = s[i + Self.m] ^ Self.twist(s[i], s[i + 1])
            }
            for i in (Self.n - Self.m)..<(Self.n - 1) {
                s[i] = s[i + Self.m - Self.n] ^ Self.twist(s[i], s[i + 1])
            }
            s[Self.n - 1] = s[Self.m - 1] ^ Self.twist(s[Self.n - 1], s[0])
        }
    }

    @inline(__always)
    mutating func next32() -> UInt32 {
        left -= 1
        if left == 0 { regenerate() }
        var y = state[next]
        next += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }
}

/// A CPU `torch.Generator`: `TorchGenerator(seed: s)` is `torch.Generator().manual_seed(s)`.
///
/// A value type: copying it copies the whole state (like `Generator.clone_state`). Calls on one
/// generator continue its stream exactly as consecutive torch calls on one generator do.
public struct TorchGenerator: Sendable {
    /// The float32 kernel for `randn` with 16 or more elements (see the notes at the top of
    /// TorchRandom.swift). All other results are the same for both.
    public enum NormalFill: Sendable, Hashable {
        /// torch on x86-64 with AVX2 and FMA (CPU capability AVX2 or AVX512).
        case avx2
        /// torch's DEFAULT CPU capability: scalar float32 libm.
        case generic
    }

    /// The seed given to `manual_seed` (`Generator.initial_seed()`), all 64 bits.
    public private(set) var initialSeed: UInt64
    /// The float32 kernel of `randn(count:)` for 16 or more elements.
    public var normalFill: NormalFill
    private var engine: TorchMT19937
    /// `next_double_normal_sample`: the second value of the last scalar-path Box–Muller pair.
    private var cachedNormal: Double?

    public init(seed: UInt64, normalFill: NormalFill = .avx2) {
        initialSeed = seed
        self.normalFill = normalFill
        engine = TorchMT19937(seed: seed)
        cachedNormal = nil
    }

    /// `Generator.manual_seed(seed)`: restarts the stream and drops the cached normal value.
    public mutating func manualSeed(_ seed: UInt64) {
        initialSeed = seed
        engine = TorchMT19937(seed: seed)
        cachedNormal = nil
    }

    /// One engine output (`CPUGeneratorImpl::random()`).
    public mutating func random() -> UInt32 { engine.next32() }

    /// Two engine outputs, the first in the high half (`CPUGeneratorImpl::random64()`).
    public mutating func random64() -> UInt64 {
        let hi = UInt64(engine.next32())
        let lo = UInt64(engine.next32())
        return (hi << 32) | lo
    }

    @inline(__always)
    private mutating func uniformFloat() -> Float {
        Float(engine.next32() & 0xff_ffff) * (1.0 / 16_777_216.0)
    }

    @inline(__always)
    private mutating func uniformDouble() -> Double {
        Double(random64() & ((1 << 53) - 1)) * (1.0 / 9_007_199_254_740_992.0)
    }

    // MARK: - Uniform

    /// `torch.rand(count, generator=g, dtype=torch.float32)`.
    public mutating func rand(count: Int) -> [Float] {
        precondition(count >= 0, "negative count")
        var out = [Float](repeating: 0, count: count)
        for i in 0..<count { out[i] = uniformFloat() }
        return out
    }

    /// `torch.rand(count, generator=g, dtype=torch.float64)`.
    public mutating func randDouble(count: Int) -> [Double] {
        precondition(count >= 0, "negative count")
        var out = [Double](repeating: 0, count: count)
        for i in 0..<count { out[i] = uniformDouble() }
        return out
    }

    // MARK: - Normal

    /// `torch.randn(count, generator=g, dtype=torch.float32)`. Any shape with `count` elements
    /// gives the same values in row-major order.
    public mutating func randn(count: Int) -> [Float] {
        precondition(count >= 0, "negative count")
        if count < 16 {
            var out = [Float](repeating: 0, count: count)
            for i in 0..<count { out[i] = Float(scalarNormal()) }
            return out
        }
        var data = [Float](repeating: 0, count: count)
        let kernel = normalFill
        data.withUnsafeMutableBufferPointer { d in
            for i in 0..<count { d[i] = uniformFloat() }
            var i = 0
            while i + 16 <= count {
                Self.fill16(d, at: i, kernel)
                i += 16
            }
            if count % 16 != 0 {
                for k in 0..<16 { d[count - 16 + k] = uniformFloat() }
                Self.fill16(d, at: count - 16, kernel)
            }
        }
        return data
    }

    /// `torch.randn(count, generator=g, dtype=torch.float64)`.
    public mutating func randnDouble(count: Int) -> [Double] {
        precondition(count >= 0, "negative count")
        if count < 16 {
            var out = [Double](repeating: 0, count: count)
            for i in 0..<count { out[i] = scalarNormal() }
            return out
        }
        var data = [Double](repeating: 0, count: count)
        data.withUnsafeMutableBufferPointer { d in
            for i in 0..<count { d[i] = uniformDouble() }
            var i = 0
            while i + 16 <= count {
                Self.fill16(d, at: i)
                i += 16
            }
            if count % 16 != 0 {
                for k in 0..<16 { d[count - 16 + k] = uniformDouble() }
                Self.fill16(d, at: count - 16)
            }
        }
        return data
    }

    /// diffusers' `randn_tensor(shape, generator=[g_0, …, g_{B−1}])`: sample b is
    /// `torch.randn(shape[1:], generator=g_b)`, concatenated along the batch. Each generator
    /// advances. (With a single generator, diffusers makes one `randn` call for the whole batch:
    /// use `randn(count: batch · countPerSample)`.)
    public static func randn(batch generators: inout [TorchGenerator], countPerSample: Int) -> [Float] {
        if generators.count == 1 {
            return generators[0].randn(count: countPerSample)
        }
        var out: [Float] = []
        out.reserveCapacity(generators.count * countPerSample)
        for b in generators.indices {
            out += generators[b].randn(count: countPerSample)
        }
        return out
    }

    /// `at::normal_distribution<double>(0, 1)` with the generator's cached second value.
    private mutating func scalarNormal() -> Double {
        if let cached = cachedNormal {
            cachedNormal = nil
            return cached * 1.0 + 0.0
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        cachedNormal = r * sin(theta)
        return r * cos(theta) * 1.0 + 0.0
    }

    // MARK: - Block transforms (normal_fill_16)

    /// float64 `normal_fill_16`.
    private static func fill16(_ d: UnsafeMutableBufferPointer<Double>, at o: Int) {
        for j in 0..<8 {
            let a = 1 - d[o + j]
            let b = d[o + j + 8]
            let radius = (-2 * log(a)).squareRoot()
            let theta = 2.0 * Double.pi * b
            d[o + j] = radius * cos(theta) * 1.0 + 0.0
            d[o + j + 8] = radius * sin(theta) * 1.0 + 0.0
        }
    }

    /// float32 `normal_fill_16` (`.generic`) or `normal_fill_16_AVX2` (`.avx2`), lane by lane.
    static func fill16(_ d: UnsafeMutableBufferPointer<Float>, at o: Int, _ kernel: NormalFill) {
        switch kernel {
        case .avx2:
            let twoPi = Float(2.0 * Double.pi)
            for j in 0..<8 {
                let a = 1 - d[o + j]
                let b = d[o + j + 8]
                let radius = (-2 * CephesAVX.log(a)).squareRoot()
                let (s, c) = CephesAVX.sincos(twoPi * b)
                // _mm256_fmadd_ps(n, std, mean)
                d[o + j] = Float(0).addingProduct(radius * c, 1)
                d[o + j + 8] = Float(0).addingProduct(radius * s, 1)
            }
        case .generic:
            for j in 0..<8 {
                let a = 1 - d[o + j]
                let b = d[o + j + 8]
                let radius = (-2 * logf(a)).squareRoot()
                let theta = Float(2.0 * Double.pi * Double(b))
                d[o + j] = radius * cosf(theta) * 1 + 0
                d[o + j + 8] = radius * sinf(theta) * 1 + 0
            }
        }
    }
}

/// One lane of avx_mathfun.h's `log256_ps` and `sincos256_ps` as torch's binary computes them:
/// the same float32 operations in the same order, with a fused multiply-add exactly where the
/// compiled kernel has one (`a.addingProduct(b, c)` is a + b·c rounded once). Swift itself never
/// fuses, so every other product and sum is rounded separately, as in the kernel.
enum CephesAVX {
    private static let minNormPos = Float(bitPattern: 0x0080_0000)
    private static let sqrtHalf: Float = 0.707106781186547524
    private static let logP: [Float] = [
        7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1,
        -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1,
    ]
    private static let logQ1: Float = -2.12194440e-4
    private static let logQ2: Float = 0.693359375
    private static let fourOverPi: Float = 1.27323954473516
    private static let minusDP1: Float = -0.78515625
    private static let minusDP2: Float = -2.4187564849853515625e-4
    private static let minusDP3: Float = -3.77489497744594108e-8
    private static let sinP: (Float, Float, Float) = (-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1)
    private static let cosP: (Float, Float, Float) = (2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002)

    @inline(__always)
    private static func masked(_ x: Float, _ keep: Bool) -> Float { keep ? x : Float(bitPattern: 0) }

    /// `log256_ps`; NaN (all bits set) for x ≤ 0.
    static func log(_ input: Float) -> Float {
        let invalid = input <= 0
        var x = input > minNormPos ? input : minNormPos            // _mm256_max_ps(x, min_norm_pos)
        var exponent = Int32(bitPattern: x.bitPattern >> 23)
        x = Float(bitPattern: (x.bitPattern & ~UInt32(0x7f80_0000)) | Float(0.5).bitPattern)
        exponent = exponent &- 0x7f
        var e = Float(exponent)
        e = e + 1
        let mask = x < sqrtHalf
        let tmp = masked(x, mask)
        x = x - 1
        e = e - masked(1, mask)
        x = x + tmp
        let z = x * x
        var y = logP[0]
        for k in 1...8 { y = logP[k].addingProduct(y, x) }           // fused Horner steps
        y = y * x
        y = (e * logQ1).addingProduct(y, z)                           // y·z + e·q1, y·z fused
        y = y.addingProduct(-z, 0.5)                                  // y − z·0.5 (z·0.5 is exact)
        x = x + y
        x = x.addingProduct(e, logQ2)                                 // x + e·q2, fused
        return invalid ? Float(bitPattern: 0xffff_ffff) : x
    }

    /// `sincos256_ps`: (sin x, cos x).
    static func sincos(_ input: Float) -> (sin: Float, cos: Float) {
        var signSin = input.bitPattern & 0x8000_0000
        var x = Float(bitPattern: input.bitPattern & 0x7fff_ffff)
        var y = x * fourOverPi
        // _mm256_cvttps_epi32: truncation, 0x80000000 when out of range.
        var j: Int32 = (y.isNaN || y >= 2_147_483_648) ? Int32.min : Int32(y)
        j = (j &+ 1) & ~1
        y = Float(j)
        let swapSignSin = UInt32(bitPattern: (j & 4) << 29)
        let polyMask = (j & 2) == 0
        x = x.addingProduct(y, minusDP1)                              // fused reduction steps
        x = x.addingProduct(y, minusDP2)
        x = x.addingProduct(y, minusDP3)
        let signCos = UInt32(bitPattern: (~(j &- 2) & 4) << 29)
        signSin ^= swapSignSin
        let z = x * x
        var c = cosP.1.addingProduct(cosP.0, z)
        c = cosP.2.addingProduct(c, z)
        c = c * z
        c = (-(z * 0.5)).addingProduct(c, z)                          // c·z − z·0.5, c·z fused
        c = c + 1
        var s = sinP.1.addingProduct(sinP.0, z)
        s = sinP.2.addingProduct(s, z)
        s = s * z
        s = x.addingProduct(s, x)                                     // s·x + x, fused
        let sinFromS = masked(s, polyMask)
        let sinFromC = masked(c, !polyMask)
        s = s - sinFromS
        c = c - sinFromC
        let sinValue = sinFromC + sinFromS
        let cosValue = c + s
        return (Float(bitPattern: sinValue.bitPattern ^ signSin), Float(bitPattern: cosValue.bitPattern ^ signCos))
    }
}

// MARK: - Single draws and fills for training (spec/finetune.md §3)

extension TorchGenerator {
    /// One float32 uniform in [0, 1): `torch.rand(1, generator=g).item()`, i.e.
    /// `f32(w & 0xFFFFFF) · 2^−24` of one engine output `w`.
    public mutating func nextUniform() -> Float { uniformFloat() }

    /// `torch.randint(0, upperBound, (1,), generator=g)` for `1 ≤ upperBound < 2^32`: one engine
    /// output `w`, `w mod upperBound` (ATen's `random_from_to` for a range below 2^32). A zero
    /// bound is refused by the caller's validation; here it returns 0 without drawing.
    public mutating func randint(upperBound: UInt32) -> UInt32 {
        guard upperBound > 0 else { return 0 }
        return random() % upperBound
    }

    /// `torch.empty(count).uniform_(low, high, generator=g)` on float32 with torch's AVX2 kernel:
    /// per element, in order, one engine output `w`, `u = f32(w & 0xFFFFFF) · 2^−24` and the
    /// value `fma(u, f32(high − low), low)`, rounded once.
    public mutating func uniform(count: Int, low: Float, high: Float) -> [Float] {
        guard count > 0 else { return [] }
        let span = high - low
        var out = [Float](repeating: 0, count: count)
        for i in 0..<count { out[i] = low.addingProduct(uniformFloat(), span) }
        return out
    }

    /// Consumes `count` engine outputs, as `torch.rand(count, generator=g)` on float32 would.
    public mutating func skip(words count: Int) {
        guard count > 0 else { return }
        for _ in 0..<count { _ = engine.next32() }
    }
}
