import CBLAS

/// Single-precision GEMM, row-major: `C[m × n] = alpha · op(A) · op(B) + beta · C`, where
/// `op(A)` is `[m × k]` and `op(B)` is `[k × n]`. Every dimension has been checked to fit BLAS's
/// 32-bit sizes by the calling layer (`Size.blas`); leading dimensions are at most those sizes.
/// With `ComputePrecision.current == .bf16` the operands are rounded to bfloat16 and oneDNN
/// computes the product (binary32 accumulation and result); BLAS otherwise, for products smaller
/// than `ComputePrecision.smallestBF16Product` multiply-adds, or if oneDNN declines.
@inline(__always)
func sgemm(_ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
           _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
           beta: Float = 0, _ c: UnsafeMutablePointer<Float>, ldc: Int) {
    guard m > 0, n > 0 else { return }
    if k == 0 {
        // BLAS leaves C scaled by beta; make that explicit for empty inner dimensions.
        for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
        return
    }
    if ComputePrecision.current == .bf16, m * n * k >= ComputePrecision.smallestBF16Product,
       bf16gemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a, lda: lda, b, ldb: ldb, beta: beta, c, ldc: ldc) {
        return
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(truncatingIfNeeded: m), Int32(truncatingIfNeeded: n), Int32(truncatingIfNeeded: k), alpha,
                a, Int32(truncatingIfNeeded: max(lda, 1)), b, Int32(truncatingIfNeeded: max(ldb, 1)), beta,
                c, Int32(truncatingIfNeeded: max(ldc, 1)))
}

extension Array where Element == Float {
    /// The buffer's base address for a non-empty array (every buffer a layer passes to BLAS or C
    /// has been checked to be non-empty or the call is skipped).
    @inline(__always)
    func withBase<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        try withUnsafeBufferPointer { p in
            if let b = p.baseAddress { return try body(b) }
            // An empty array: hand out a valid dummy address (never read: every size is 0).
            var dummy: Float = 0
            return try withUnsafePointer(to: &dummy) { try body($0) }
        }
    }

    @inline(__always)
    mutating func withMutableBase<R>(_ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        try withUnsafeMutableBufferPointer { p in
            if let b = p.baseAddress { return try body(b) }
            var dummy: Float = 0
            return try withUnsafeMutablePointer(to: &dummy) { try body($0) }
        }
    }
}
