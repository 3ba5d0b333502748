/// A factored low-rank delta `ΔW = scale · (U_aux · U) · (D · D_aux)`:
///
/// - LoRA: no aux factors, `D` (`down`) is `[rank × in]`, `U` (`up`) is `[out × rank]`;
/// - LiDB: frozen aux bases `D_aux` `[a × in]` and `U_aux` `[out × b]`, trained `D` (`down_train`)
///   `[rank × a]` and `U` (`up_train`) `[b × rank]`.
///
/// It is applied factored (`Δ(x) = scale · U_aux(U(D(D_aux x)))`, never forming `ΔW`), and
/// `backward` accumulates `∂loss/∂D` and `∂loss/∂U` (spec/compute.md §3). The aux factors never
/// get gradients.
public final class LowRankTerm: DeltaTerm, @unchecked Sendable {
    public let outFeatures: Int, inFeatures: Int
    public let rank: Int
    /// The inner sizes: `a` (columns of `down`) and `b` (rows of `up`); `in` and `out` without aux.
    public let a: Int, b: Int
    public let scale: Float
    /// `[a × in]` and `[out × b]`, or nil (LoRA).
    public let downAux: [Float]?, upAux: [Float]?
    /// The trained factors, `[rank × a]` and `[b × rank]`.
    public private(set) var down: [Float], up: [Float]
    public var trainable: Bool
    /// `∂loss/∂down`, `∂loss/∂up`, accumulated by `backward` since the last `zeroGradients()`.
    public private(set) var gradDown: [Float], gradUp: [Float]

    /// A term with explicit factors. `downAux` is `[a × in]` (a = `down.count / rank`) and
    /// `upAux` `[out × b]` (b = `up.count / rank`); without them `a = in`, `b = out`.
    public convenience init(out: Int, in inDim: Int, rank: Int, scale: Float, down: [Float], up: [Float],
                            downAux: [Float]? = nil, upAux: [Float]? = nil, trainable: Bool = true) throws(ComputeError) {
        let what = "low-rank term [\(out) × \(inDim)] rank \(rank)"
        try self.init(out: out, in: inDim, rank: rank, scale: scale, down: down, up: up,
                      downAux: try downAux.map { (v) throws(ComputeError) in try FiniteFactor(v, name: what + ": down_aux") },
                      upAux: try upAux.map { (v) throws(ComputeError) in try FiniteFactor(v, name: what + ": up_aux") }, trainable: trainable)
    }

    /// The same with aux factors checked once (`FiniteFactor`: a basis shared by many terms, e.g.
    /// from a cache, is not scanned again for every term built on it).
    public init(out: Int, in inDim: Int, rank: Int, scale: Float, down: [Float], up: [Float],
                downAux checkedDownAux: FiniteFactor?, upAux checkedUpAux: FiniteFactor?, trainable: Bool = true) throws(ComputeError) {
        let downAux = checkedDownAux?.values, upAux = checkedUpAux?.values
        let what = "low-rank term [\(out) × \(inDim)] rank \(rank)"
        guard out > 0, inDim > 0, rank > 0 else { throw ComputeError("\(what): sizes must be positive") }
        guard scale.isFinite else { throw ComputeError("\(what): scale \(scale) is not finite") }
        guard down.count % rank == 0, up.count % rank == 0 else {
            throw ComputeError("\(what): \(down.count) down and \(up.count) up values are not multiples of the rank")
        }
        let a = down.count / rank, b = up.count / rank
        if let downAux {
            guard try Size.product(a, inDim, what: what) == downAux.count, a > 0 else {
                throw ComputeError("\(what): down_aux has \(downAux.count) values, expected \(a) × \(inDim)")
            }
        } else if a != inDim { throw ComputeError("\(what): down is \(rank) × \(a), expected \(rank) × \(inDim)") }
        if let upAux {
            guard try Size.product(out, b, what: what) == upAux.count, b > 0 else {
                throw ComputeError("\(what): up_aux has \(upAux.count) values, expected \(out) × \(b)")
            }
        } else if b != out { throw ComputeError("\(what): up is \(b) × \(rank), expected \(out) × \(rank)") }
        for d in [out, inDim, rank, a, b] { _ = try Size.blas(d, what: what) }
        for (name, v) in [("down", down), ("up", up)] {
            guard v.allSatisfy(\.isFinite) else { throw ComputeError("\(what): \(name) has a value that is not finite") }
        }
        outFeatures = out; inFeatures = inDim; self.rank = rank; self.a = a; self.b = b; self.scale = scale
        self.downAux = downAux; self.upAux = upAux; self.down = down; self.up = up; self.trainable = trainable
        gradDown = [Float](repeating: 0, count: down.count)
        gradUp = [Float](repeating: 0, count: up.count)
    }

    /// A LoRA term, `scale = alpha / rank`.
    public static func lora(down: [Float], up: [Float], out: Int, in inDim: Int, rank: Int, alpha: Float,
                            trainable: Bool = true) throws(ComputeError) -> LowRankTerm {
        try LowRankTerm(out: out, in: inDim, rank: rank, scale: alpha / Float(max(rank, 1)), down: down, up: up, trainable: trainable)
    }

    /// A LiDB term, `scale = alpha / rank`: `downAux` `[a × in]`, `downTrain` `[rank × a]`,
    /// `upTrain` `[b × rank]`, `upAux` `[out × b]`.
    public static func lidb(downAux: [Float], downTrain: [Float], upTrain: [Float], upAux: [Float], out: Int, in inDim: Int,
                            rank: Int, alpha: Float, trainable: Bool = true) throws(ComputeError) -> LowRankTerm {
        try LowRankTerm(out: out, in: inDim, rank: rank, scale: alpha / Float(max(rank, 1)), down: downTrain, up: upTrain,
                        downAux: downAux, upAux: upAux, trainable: trainable)
    }

    /// Replaces the trained factors (same sizes, finite values).
    public func setFactors(down newDown: [Float], up newUp: [Float]) throws(ComputeError) {
        guard newDown.count == down.count, newUp.count == up.count else {
            throw ComputeError("low-rank term: factors of \(newDown.count) and \(newUp.count) values, expected \(down.count) and \(up.count)")
        }
        guard newDown.allSatisfy(\.isFinite), newUp.allSatisfy(\.isFinite) else { throw ComputeError("low-rank term: a factor value is not finite") }
        down = newDown
        up = newUp
    }

    /// In-place access to the trained factors and their gradients (for an optimiser step):
    /// `body(down, up, gradDown, gradUp)`.
    public func updateFactors(_ body: (UnsafeMutableBufferPointer<Float>, UnsafeMutableBufferPointer<Float>,
                                       UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) -> Void) {
        down.withUnsafeMutableBufferPointer { d in up.withUnsafeMutableBufferPointer { u in
            gradDown.withUnsafeBufferPointer { gd in gradUp.withUnsafeBufferPointer { gu in body(d, u, gd, gu) } }
        } }
    }

    public func zeroGradients() {
        for i in gradDown.indices { gradDown[i] = 0 }
        for i in gradUp.indices { gradUp[i] = 0 }
    }

    /// `p = x · D_auxᵀ` `[n × a]` (x itself without aux) and `h = p · Dᵀ` `[n × rank]`.
    private func downPath(_ x: Matrix) -> (p: [Float]?, h: [Float]) {
        let n = x.rows
        var p: [Float]? = nil
        if let downAux {
            var v = [Float](repeating: 0, count: n * a)
            x.data.withBase { xb in downAux.withBase { db in v.withMutableBase { vb in
                sgemm(false, true, m: n, n: a, k: inFeatures, xb, lda: inFeatures, db, ldb: inFeatures, vb, ldc: a)
            } } }
            p = v
        }
        var h = [Float](repeating: 0, count: n * rank)
        (p ?? x.data).withBase { pb in down.withBase { db in h.withMutableBase { hb in
            sgemm(false, true, m: n, n: rank, k: a, pb, lda: a, db, ldb: a, hb, ldc: rank)
        } } }
        return (p, h)
    }

    /// Throws unless `x` is `[n × in]` and `y` (when given) `[n × out]`.
    private func check(_ x: Matrix?, _ y: Matrix?, rows: Int) throws(ComputeError) {
        let what = "low-rank term [\(outFeatures) × \(inFeatures)]"
        if let x {
            try x.validate(what + " input", cols: inFeatures)
            guard x.rows == rows else { throw ComputeError("\(what): \(x.rows) input rows for \(rows)") }
        }
        if let y {
            try y.validate(what + " output", cols: outFeatures)
            guard y.rows == rows else { throw ComputeError("\(what): \(y.rows) output rows for \(rows)") }
        }
    }

    public func forward(_ x: Matrix, into y: inout Matrix) throws(ComputeError) {
        try check(x, y, rows: x.rows)
        let n = x.rows
        guard n > 0 else { return }
        let h = downPath(x).h
        if let upAux {
            var q = [Float](repeating: 0, count: n * b)     // h · Uᵀ  [n × b]
            h.withBase { hb in up.withBase { ub in q.withMutableBase { qb in
                sgemm(false, true, m: n, n: b, k: rank, hb, lda: rank, ub, ldb: rank, qb, ldc: b)
            } } }
            q.withBase { qb in upAux.withBase { ub in y.data.withMutableBase { yb in
                sgemm(false, true, m: n, n: outFeatures, k: b, alpha: scale, qb, lda: b, ub, ldb: b, beta: 1, yb, ldc: outFeatures)
            } } }
        } else {
            h.withBase { hb in up.withBase { ub in y.data.withMutableBase { yb in
                sgemm(false, true, m: n, n: outFeatures, k: rank, alpha: scale, hb, lda: rank, ub, ldb: rank, beta: 1, yb, ldc: outFeatures)
            } } }
        }
    }

    public func backward(gradOutput gy: Matrix, input x: Matrix, gradInput: inout Matrix) throws(ComputeError) {
        try check(x, gy, rows: x.rows)
        try check(gradInput, nil, rows: x.rows)
        let n = x.rows
        guard n > 0 else { return }
        let (p, h) = downPath(x)
        let gq = upGradient(gy)
        if trainable {
            // ∂U += gqᵀ · h  [b × rank].
            gq.withBase { qb in h.withBase { hb in gradUp.withMutableBase { gu in
                sgemm(true, false, m: b, n: rank, k: n, qb, lda: b, hb, ldb: rank, beta: 1, gu, ldc: rank)
            } } }
        }
        let gh = rankGradient(gq, rows: n)
        if trainable { accumulateDown(gh, p ?? x.data, rows: n) }
        addInputGradient(gh, rows: n, into: &gradInput)
    }

    public func addInputGradient(gradOutput gy: Matrix, into gradInput: inout Matrix) throws(ComputeError) {
        try check(gradInput, gy, rows: gy.rows)
        let n = gy.rows
        guard n > 0 else { return }
        addInputGradient(rankGradient(upGradient(gy), rows: n), rows: n, into: &gradInput)
    }

    public func accumulateGradients(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) {
        try check(x, gy, rows: x.rows)
        let n = x.rows
        guard trainable, n > 0 else { return }
        let (p, h) = downPath(x)
        let gq = upGradient(gy)
        gq.withBase { qb in h.withBase { hb in gradUp.withMutableBase { gu in
            sgemm(true, false, m: b, n: rank, k: n, qb, lda: b, hb, ldb: rank, beta: 1, gu, ldc: rank)
        } } }
        accumulateDown(rankGradient(gq, rows: n), p ?? x.data, rows: n)
    }

    /// `gq = scale · gy · U_aux` `[n × b]` (`scale · gy` without aux).
    private func upGradient(_ gy: Matrix) -> [Float] {
        let n = gy.rows
        var gq = [Float](repeating: 0, count: n * b)
        if let upAux {
            gy.data.withBase { gb in upAux.withBase { ub in gq.withMutableBase { qb in
                sgemm(false, false, m: n, n: b, k: outFeatures, alpha: scale, gb, lda: outFeatures, ub, ldb: b, qb, ldc: b)
            } } }
        } else {
            let s = scale
            gy.data.withBase { gb in gq.withMutableBase { qb in for i in 0..<(n * b) { qb[i] = s * gb[i] } } }
        }
        return gq
    }

    /// `gh = gq · U` `[n × rank]`.
    private func rankGradient(_ gq: [Float], rows n: Int) -> [Float] {
        var gh = [Float](repeating: 0, count: n * rank)
        gq.withBase { qb in up.withBase { ub in gh.withMutableBase { hb in
            sgemm(false, false, m: n, n: rank, k: b, qb, lda: b, ub, ldb: rank, hb, ldc: rank)
        } } }
        return gh
    }

    /// `∂D += ghᵀ · p` `[rank × a]`.
    private func accumulateDown(_ gh: [Float], _ p: [Float], rows n: Int) {
        gh.withBase { hb in p.withBase { pb in gradDown.withMutableBase { gd in
            sgemm(true, false, m: rank, n: a, k: n, hb, lda: rank, pb, ldb: a, beta: 1, gd, ldc: a)
        } } }
    }

    /// `gx += (gh · D) · D_aux` (`+= gh · D` without aux).
    private func addInputGradient(_ gh: [Float], rows n: Int, into gradInput: inout Matrix) {
        if let downAux {
            var gp = [Float](repeating: 0, count: n * a)
            gh.withBase { hb in down.withBase { db in gp.withMutableBase { pb in
                sgemm(false, false, m: n, n: a, k: rank, hb, lda: rank, db, ldb: a, pb, ldc: a)
            } } }
            gp.withBase { gb in downAux.withBase { db in gradInput.data.withMutableBase { xb in
                sgemm(false, false, m: n, n: inFeatures, k: a, gb, lda: a, db, ldb: inFeatures, beta: 1, xb, ldc: inFeatures)
            } } }
        } else {
            gh.withBase { hb in down.withBase { db in gradInput.data.withMutableBase { xb in
                sgemm(false, false, m: n, n: inFeatures, k: rank, hb, lda: rank, db, ldb: inFeatures, beta: 1, xb, ldc: inFeatures)
            } } }
        }
    }

    /// `U = scale · U_aux · U` `[out × rank]` (`scale · U` without aux) and
    /// `D = D · D_aux` `[rank × in]` (`D` without aux), so that `ΔW = U · D`.
    public func lowRankFactors() -> (up: [Float], down: [Float], rank: Int)? {
        var uf: [Float]
        if let upAux {
            uf = [Float](repeating: 0, count: outFeatures * rank)
            upAux.withBase { ab in up.withBase { ub in uf.withMutableBase { fb in
                sgemm(false, false, m: outFeatures, n: rank, k: b, alpha: scale, ab, lda: b, ub, ldb: rank, fb, ldc: rank)
            } } }
        } else {
            let s = scale
            uf = up.map { $0 * s }
        }
        var df = down
        if let downAux {
            df = [Float](repeating: 0, count: rank * inFeatures)
            down.withBase { db in downAux.withBase { ab in df.withMutableBase { fb in
                sgemm(false, false, m: rank, n: inFeatures, k: a, db, lda: a, ab, ldb: inFeatures, fb, ldc: inFeatures)
            } } }
        }
        return (uf, df, rank)
    }

    /// `ΔW = U · D` from `lowRankFactors()` (the binary32 values a merge of this term alone adds).
    public func weightDelta() -> [Float] {
        var w = [Float](repeating: 0, count: outFeatures * inFeatures)
        guard let (uf, df, r) = lowRankFactors() else { return w }
        uf.withBase { ub in df.withBase { db in w.withMutableBase { wb in
            sgemm(false, false, m: outFeatures, n: inFeatures, k: r, ub, lda: r, db, ldb: inFeatures, wb, ldc: inFeatures)
        } } }
        return w
    }
}

/// Factor values checked once to be finite (shared by the terms built on them).
public final class FiniteFactor: Sendable {
    public let values: [Float]

    /// Throws unless every value is finite; `name` is used in the error.
    public init(_ values: [Float], name: String = "factor") throws(ComputeError) {
        guard values.allSatisfy(\.isFinite) else { throw ComputeError("\(name) has a value that is not finite") }
        self.values = values
    }
}
