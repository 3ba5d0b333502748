import CLidbSupport

/// Multi-head scaled dot-product attention on projected queries `q` `[lq × heads·d]` and keys,
/// values `k`, `v` `[lk × heads·d]` (heads interleaved as PyTorch's reshape gives them):
/// `O_h = softmax(Q_h K_hᵀ / √d) V_h`, optionally with a causal mask (query `i` sees keys `j ≤ i`).
/// Heads run on separate cores; queries are processed in chunks so the scores stay small.
public enum ScaledDotProductAttention {
    /// Queries per chunk of scores: 128 × 4,096 keys (64×64 latents) is 2 MiB.
    public static let chunk = 128

    static func check(q: Matrix, k: Matrix, v: Matrix, heads: Int) throws(ComputeError) -> Int {
        try q.validate("attention queries")
        try k.validate("attention keys", cols: q.cols)
        try v.validate("attention values", cols: q.cols)
        guard k.rows == v.rows else { throw ComputeError("attention: \(k.rows) keys and \(v.rows) values") }
        guard heads > 0, q.cols % heads == 0, q.cols > 0 else { throw ComputeError("attention: \(q.cols) features are not divisible into \(heads) heads") }
        guard k.rows > 0 else { throw ComputeError("attention: no keys") }
        _ = try Size.product(chunk, k.rows, what: "attention scores")
        return q.cols / heads
    }

    public static func forward(q: Matrix, k: Matrix, v: Matrix, heads: Int, causal: Bool = false) throws(ComputeError) -> Matrix {
        let d = try check(q: q, k: k, v: v, heads: heads)
        let lq = q.rows, lk = k.rows, width = q.cols
        var out = Matrix(uninitializedRows: lq, cols: width)
        guard lq > 0 else { return out }
        let scale = 1 / Float(d).squareRoot()
        let jobs = min(heads, max(1, Parallel.cores)), rowsMax = min(chunk, lq)
        q.data.withBase { qb in k.data.withBase { kb in v.data.withBase { vb in out.data.withMutableBase { ob in
            let (qs, ks, vs, os) = (UnsafeSendable(qb), UnsafeSendable(kb), UnsafeSendable(vb), UnsafeSendable(ob))
            Parallel.forEach(jobs) { job in
                var scores = [Float](unsafeUninitializedCapacity: rowsMax * lk) { _, n in n = rowsMax * lk }
                scores.withMutableBase { s in
                    for h in stride(from: job, to: heads, by: jobs) {
                        var start = 0
                        while start < lq {
                            let rows = min(chunk, lq - start)
                            probabilities(qs.p + start * width + h * d, ks.p + h * d, width: width, rows: rows, keys: lk, headDim: d,
                                          scale: scale, firstQuery: causal ? start : nil, into: s)
                            sgemm(false, false, m: rows, n: d, k: lk, s, lda: lk, vs.p + h * d, ldb: width, os.p + start * width + h * d, ldc: width)
                            start += rows
                        }
                    }
                }
            }
        } } } }
        return out
    }

    /// `P = softmax(scale · Q_c K_hᵀ)` for `rows` queries into `s` `[rows × keys]`; with a causal
    /// mask when `firstQuery` (the index of the chunk's first query) is given.
    static func probabilities(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, width: Int, rows: Int, keys lk: Int, headDim d: Int,
                              scale: Float, firstQuery: Int?, into s: UnsafeMutablePointer<Float>) {
        sgemm(false, true, m: rows, n: lk, k: d, alpha: scale, q, lda: width, k, ldb: width, s, ldc: lk)
        guard let first = firstQuery else {
            lidb_softmax_rows(s, rows, lk)
            return
        }
        for r in 0..<rows {
            let limit = min(first + r + 1, lk), row = s + r * lk
            lidb_softmax_rows(row, 1, limit)
            if limit < lk { (row + limit).update(repeating: 0, count: lk - limit) }
        }
    }

    /// The gradients of `q`, `k`, `v` given the gradient of the output; the probabilities are
    /// recomputed chunk by chunk: `dV_h = Pᵀ dO_h`, `dP = dO_h V_hᵀ`,
    /// `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ_h = scale · dS K_h`, `dK_h = scale · dSᵀ Q_h`.
    public static func backward(gradOutput go: Matrix, q: Matrix, k: Matrix, v: Matrix, heads: Int,
                                causal: Bool = false) throws(ComputeError) -> (q: Matrix, k: Matrix, v: Matrix) {
        let r = try backward(gradOutput: go, q: q, k: k, v: v, heads: heads, causal: causal, output: false)
        return (r.q, r.k, r.v)
    }

    /// The same, and with `output` also the forward's result `O = P V` from the probabilities the
    /// backward recomputes anyway (one more product per chunk instead of a second forward).
    public static func backward(gradOutput go: Matrix, q: Matrix, k: Matrix, v: Matrix, heads: Int, causal: Bool,
                                output: Bool) throws(ComputeError) -> (q: Matrix, k: Matrix, v: Matrix, output: Matrix?) {
        let d = try check(q: q, k: k, v: v, heads: heads)
        try go.validate("attention output gradient", cols: q.cols)
        guard go.rows == q.rows else { throw ComputeError("attention backward: \(go.rows) gradient rows for \(q.rows) queries") }
        let lq = q.rows, lk = k.rows, width = q.cols
        var dq = Matrix(uninitializedRows: lq, cols: width)
        var dk = Matrix(checkedRows: lk, cols: width, data: [Float](repeating: 0, count: lk * width))
        var dv = dk
        var out = Matrix(uninitializedRows: output ? lq : 0, cols: width)
        guard lq > 0 else { return (dq, dk, dv, output ? out : nil) }
        let scale = 1 / Float(d).squareRoot()
        let jobs = min(heads, max(1, Parallel.cores)), rowsMax = min(chunk, lq)
        q.data.withBase { qb in k.data.withBase { kb in v.data.withBase { vb in go.data.withBase { gb in
        dq.data.withMutableBase { dqb in dk.data.withMutableBase { dkb in dv.data.withMutableBase { dvb in out.data.withMutableBase { ob in
            let (qs, ks, vs, gs) = (UnsafeSendable(qb), UnsafeSendable(kb), UnsafeSendable(vb), UnsafeSendable(gb))
            let (dqs, dks, dvs, os) = (UnsafeSendable(dqb), UnsafeSendable(dkb), UnsafeSendable(dvb), UnsafeSendable(ob))
            Parallel.forEach(jobs) { job in
                var pBuf = [Float](unsafeUninitializedCapacity: rowsMax * lk) { _, n in n = rowsMax * lk }
                var dpBuf = pBuf
                pBuf.withMutableBase { p in dpBuf.withMutableBase { dp in
                    for h in stride(from: job, to: heads, by: jobs) {
                        var start = 0
                        while start < lq {
                            let rows = min(chunk, lq - start), o = start * width + h * d
                            probabilities(qs.p + o, ks.p + h * d, width: width, rows: rows, keys: lk, headDim: d,
                                          scale: scale, firstQuery: causal ? start : nil, into: p)
                            if output {
                                sgemm(false, false, m: rows, n: d, k: lk, p, lda: lk, vs.p + h * d, ldb: width, os.p + o, ldc: width)
                            }
                            // dV_h += Pᵀ · dO_c  [lk × d].
                            sgemm(true, false, m: lk, n: d, k: rows, p, lda: lk, gs.p + o, ldb: width, beta: 1, dvs.p + h * d, ldc: width)
                            // dP = dO_c · V_hᵀ  [rows × lk], then dS in place.
                            sgemm(false, true, m: rows, n: lk, k: d, gs.p + o, lda: width, vs.p + h * d, ldb: width, dp, ldc: lk)
                            lidb_softmax_backward_rows(p, dp, rows, lk)
                            // dQ_c = scale · dS · K_h;  dK_h += scale · dSᵀ · Q_c.
                            sgemm(false, false, m: rows, n: d, k: lk, alpha: scale, dp, lda: lk, ks.p + h * d, ldb: width, dqs.p + o, ldc: width)
                            sgemm(true, false, m: lk, n: d, k: rows, alpha: scale, dp, lda: lk, qs.p + o, ldb: width, beta: 1, dks.p + h * d, ldc: width)
                            start += rows
                        }
                    }
                } }
            }
        } } } }
        } } } }
        return (dq, dk, dv, output ? out : nil)
    }
}
