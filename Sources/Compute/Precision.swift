import CBLAS
import CLidbDNNL
import Synchronization

/// The element type of the inputs of matrix products and convolutions (spec/runtime.md,
/// "Precision"). Normalisations, softmax, activations, the scheduler and every stored activation
/// stay binary32, as under PyTorch's bf16 autocast; products accumulate in binary32.
public enum ComputePrecision: String, Sendable, CaseIterable {
    /// IEEE binary32 throughout (BLAS `sgemm`).
    case f32
    /// Both operands of every matrix product (linear layers, attention, the products inside
    /// convolutions) rounded to bfloat16 (round to nearest even), binary32 accumulation and
    /// output, on oneDNN's AVX-512 BF16 kernels.
    case bf16

    /// The precision products use in this process (`f32` unless set).
    public static var current: ComputePrecision { state.load(ordering: .relaxed) == 1 ? .bf16 : .f32 }

    /// Whether this machine runs bf16 products (oneDNN present and the CPU has AVX-512 BF16).
    public static var bf16Supported: Bool { !simulateMissingBF16.load(ordering: .relaxed) && lidb_dnnl_bf16_supported() != 0 }

    /// Sets the precision of products. Asking for bf16 where `bf16Supported` is false keeps f32
    /// and returns a one-line notice saying so (never an illegal instruction); nil otherwise.
    @discardableResult
    public static func select(_ p: ComputePrecision) -> String? {
        if p == .bf16 && !bf16Supported {
            state.store(0, ordering: .relaxed)
            return "bf16 compute needs a CPU with AVX-512 BF16 and oneDNN; computing in f32"
        }
        state.store(p == .bf16 ? 1 : 0, ordering: .relaxed)
        return nil
    }

    /// Products of fewer multiply-adds (m·n·k) than this stay binary32 under bf16: below it
    /// oneDNN's per-call cost exceeds what bf16 saves (a 64×64-pixel model's finetune step took
    /// 0.051 s in bf16 against 0.026–0.037 s in f32), and the result is only more precise.
    public static let smallestBF16Product = 1 << 18

    /// Tests: behave as on a CPU without AVX-512 BF16.
    public static let simulateMissingBF16 = Atomic<Bool>(false)

    private static let state = Atomic<UInt8>(0)
}

/// The bf16 path of `sgemm`; false when it did not run (C untouched).
@inline(__always)
func bf16gemm(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
              _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
              beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
    // Inside `Parallel.forEach` BLAS runs single-threaded: so does oneDNN then.
    let single: Int32 = openblas_get_num_threads() == 1 ? 1 : 0
    return lidb_dnnl_gemm_bf16(transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb),
                               beta, c, Int64(ldc), single) == 0
}

/// The bf16 product with B a weight held as bfloat16 bit patterns (for `--precision bf16`, which
/// the caller checks): oneDNN reads the bits in place — the same products as `bf16gemm` of their
/// binary32 values, with no binary32 copy of the weight. False when it did not run (bf16 not
/// supported, a product below `smallestBF16Product`, or a oneDNN failure); C is then untouched.
func bf16gemm(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int,
              _ a: UnsafePointer<Float>, lda: Int, bfloat16 b: UnsafePointer<UInt16>, ldb: Int,
              beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
    bf16WeightProduct(m: m, n: n, k: k) { single in
        lidb_dnnl_gemm_bf16_b16(transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), 1, a, Int64(lda), b, Int64(ldb),
                                beta, c, Int64(ldc), single)
    }
}

/// The bf16 product with A a weight held as bfloat16 bit patterns (a convolution's weight `[out ×
/// in·k·k]`, for `--precision bf16`, which the caller checks): read in place, the same products as
/// `bf16gemm` of their binary32 values. False when it did not run; C is then untouched.
func bf16gemm(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int,
              bfloat16 a: UnsafePointer<UInt16>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
              beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) -> Bool {
    bf16WeightProduct(m: m, n: n, k: k) { single in
        lidb_dnnl_gemm_bf16_a16(transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), 1, a, Int64(lda), b, Int64(ldb),
                                beta, c, Int64(ldc), single)
    }
}

/// Runs `call` (oneDNN's product with a bf16-held operand, given its single-thread flag) for
/// products of at least `smallestBF16Product` multiply-adds; true when it ran.
@inline(__always)
private func bf16WeightProduct(m: Int, n: Int, k: Int, _ call: (Int32) -> Int32) -> Bool {
    guard m > 0, n > 0, k > 0, m * n * k >= ComputePrecision.smallestBF16Product else { return false }
    // Inside `Parallel.forEach` BLAS runs single-threaded: so does oneDNN then.
    return call(openblas_get_num_threads() == 1 ? 1 : 0) == 0
}
