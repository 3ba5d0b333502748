/// Merging delta terms into a weight: the arithmetic shared by `lidb merge` / `unmerge`, the
/// runtime's in-memory merge and `Linear.addWeightDeltas` (spec/compute.md §2, spec/subject.md §5).

/// How the binary32 result of a merge is rounded.
public enum MergeRounding: Sendable {
    /// Round to nearest (ties to even): the result is stored as binary32.
    case nearest
    /// Round to odd: the binary32 result is rounded again, to nearest, into F16 or BF16, which
    /// then equals rounding the exact sum once into that type (binary32 has ≥ 2 more bits).
    case odd
}

/// `x` rounded to binary32 with round-to-odd: exact values stay, others become the neighbour
/// whose last significand bit is 1.
@inline(__always) func roundToOdd(_ x: Double) -> Float {
    let f = Float(x)
    if !f.isFinite || Double(f) == x { return f }
    var t = f
    if abs(Double(f)) > abs(x) { t = x > 0 ? f.nextDown : f.nextUp }   // toward zero
    return Float(bitPattern: t.bitPattern | 1)
}

/// Rows per block of a merge, so the temporaries stay near 2^18 elements whatever the layer.
func mergeBlockRows(out: Int, in inDim: Int) -> Int { max(1, min(out, (1 << 18) / max(inDim, 1))) }

/// `W ← round(W + sign · Σ ΔW_t)` over `terms`, for `W[out × in]` (binary32, row-major), one
/// block of rows at a time: each term's rows of `ΔW` in binary32 (for a low-rank term the product
/// of its `lowRankFactors()`, a BLAS product in any summation order; otherwise its
/// `weightDelta()`), the terms summed in binary64 and added to `W` in binary64 (exact for two
/// binary32 values unless their exponents differ by more than 29, where the result rounds the
/// same), then rounded once. Every term must be `[out × in]` (the caller checks; others are
/// skipped). Returns the number of results that are not finite.
@discardableResult
public func addWeightDeltas(_ terms: [any DeltaTerm], out: Int, in inDim: Int, into w: UnsafeMutablePointer<Float>, sign: Float,
                            rounding: MergeRounding = .nearest) -> Int {
    let used = terms.filter { $0.outFeatures == out && $0.inFeatures == inDim }
    guard !used.isEmpty, out > 0, inDim > 0 else { return 0 }
    // Each term's factors (or dense ΔW) once, before the blocks.
    enum Source { case factors([Float], [Float], Int), dense([Float]) }
    let sources: [Source] = used.map { t in
        if let f = t.lowRankFactors(), f.rank > 0, f.up.count == out * f.rank, f.down.count == f.rank * inDim {
            return .factors(f.up, f.down, f.rank)
        }
        return .dense(t.weightDelta())
    }
    let blockRows = mergeBlockRows(out: out, in: inDim)
    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: blockRows * inDim)
    defer { tmp.deallocate() }
    let many = sources.count > 1
    let acc = UnsafeMutablePointer<Double>.allocate(capacity: many ? blockRows * inDim : 1)
    defer { acc.deallocate() }
    let s = Double(sign)
    var nonFinite = 0
    var o0 = 0
    while o0 < out {
        let rows = min(blockRows, out - o0), n = rows * inDim
        for (k, source) in sources.enumerated() {
            switch source {
            case let .factors(up, down, rank):
                up.withBase { u in down.withBase { d in
                    sgemm(false, false, m: rows, n: inDim, k: rank, u + o0 * rank, lda: rank, d, ldb: inDim, tmp, ldc: inDim)
                } }
            case let .dense(delta):
                if delta.count == out * inDim {
                    delta.withBase { tmp.update(from: $0 + o0 * inDim, count: n) }
                } else {
                    tmp.update(repeating: 0, count: n)
                }
            }
            if many {
                if k == 0 { for i in 0..<n { acc[i] = Double(tmp[i]) } } else { for i in 0..<n { acc[i] += Double(tmp[i]) } }
            }
        }
        let row = w + o0 * inDim
        switch (rounding, many) {
        case (.nearest, false): for i in 0..<n { row[i] = Float(Double(row[i]) + s * Double(tmp[i])) }
        case (.nearest, true): for i in 0..<n { row[i] = Float(Double(row[i]) + s * acc[i]) }
        case (.odd, false): for i in 0..<n { row[i] = roundToOdd(Double(row[i]) + s * Double(tmp[i])) }
        case (.odd, true): for i in 0..<n { row[i] = roundToOdd(Double(row[i]) + s * acc[i]) }
        }
        for i in 0..<n where !row[i].isFinite { nonFinite += 1 }
        o0 += rows
    }
    return nonFinite
}
