/// `y = x · Wᵀ + bias + Σ terms Δ(x)` over the rows of `x` (PyTorch `nn.Linear` orientation:
/// `weight` is `[out × in]`). The base weight is frozen: `backward` returns the input gradient
/// and accumulates gradients only in the attached delta terms.
public struct Linear: Sendable {
    public let inFeatures: Int, outFeatures: Int
    /// The frozen weight `[out × in]` as held: binary32, or F16 converted each time it is used.
    public private(set) var values: WeightValues
    /// The weight as binary32 values (a conversion when it is held as F16).
    public var weight: [Float] { values.floats }
    public let bias: [Float]?
    /// The adapter slot: terms added to the output (LiDB, LoRA, …), in order.
    public private(set) var terms: [any DeltaTerm]

    public init(weight: [Float], bias: [Float]?, out: Int, in inDim: Int, terms: [any DeltaTerm] = []) throws(ComputeError) {
        try self.init(values: .f32(weight), bias: bias, out: out, in: inDim, terms: terms)
    }

    /// A layer whose weight may be held as F16 (`WeightValues.f16`), converted when it is used.
    public init(values: WeightValues, bias: [Float]?, out: Int, in inDim: Int, terms: [any DeltaTerm] = []) throws(ComputeError) {
        let what = "linear [\(out) × \(inDim)]"
        guard out > 0, inDim > 0 else { throw ComputeError("\(what): sizes must be positive") }
        let n = try Size.product(out, inDim, what: what)
        guard values.count == n else { throw ComputeError("\(what): weight has \(values.count) values, expected \(n)") }
        if let bias, bias.count != out { throw ComputeError("\(what): bias has \(bias.count) values, expected \(out)") }
        _ = try Size.blas(out, what: what)
        _ = try Size.blas(inDim, what: what)
        outFeatures = out; inFeatures = inDim; self.values = values; self.bias = bias; self.terms = []
        for t in terms { try attach(t) }
    }

    /// Adds a delta term to the adapter slot.
    public mutating func attach(_ term: any DeltaTerm) throws(ComputeError) {
        guard term.outFeatures == outFeatures, term.inFeatures == inFeatures else {
            throw ComputeError("linear [\(outFeatures) × \(inFeatures)]: a delta term of shape [\(term.outFeatures) × \(term.inFeatures)]")
        }
        terms.append(term)
    }

    public mutating func detachTerms() { terms = [] }

    /// Merges `terms` into the weight: `W ← round(W + sign · Σ ΔW)`, the terms' `ΔW` summed in
    /// binary64 and added with one rounding per weight (`addWeightDeltas`). A weight held as F16
    /// becomes binary32 (exactly). Throws, leaving the weight as it was, for a term of another
    /// shape or when a result is not finite (the merge works on a copy of the weight until then).
    public mutating func addWeightDeltas(_ terms: [any DeltaTerm], sign: Float = 1) throws(ComputeError) {
        let what = "linear [\(outFeatures) × \(inFeatures)]"
        for t in terms where t.outFeatures != outFeatures || t.inFeatures != inFeatures {
            throw ComputeError("\(what): a delta term of shape [\(t.outFeatures) × \(t.inFeatures)]")
        }
        guard !terms.isEmpty else { return }
        var w = values.floats  // a copy once written to: `values` keeps the weight until the end
        let (out, inDim) = (outFeatures, inFeatures)
        let bad = w.withMutableBase { Compute.addWeightDeltas(terms, out: out, in: inDim, into: $0, sign: sign) }
        guard bad == 0 else {
            throw ComputeError("\(what): W \(sign < 0 ? "−" : "+") ΔW is not finite in \(bad) weight(s) (binary32 range exceeded); the weight is unchanged")
        }
        values = .f32(w)
    }

    public func forward(_ x: Matrix) throws(ComputeError) -> Matrix {
        try x.validate("linear [\(outFeatures) × \(inFeatures)] input", cols: inFeatures)
        let n = x.rows, out = outFeatures
        var y = Matrix(uninitializedRows: n, cols: out)
        guard n > 0 else { return y }
        y.data.withMutableBase { yb in
            if let bias {
                bias.withBase { bb in for r in 0..<n { (yb + r * out).update(from: bb, count: out) } }
            }
            let beta: Float = bias == nil ? 0 : 1
            x.data.withBase { xb in
                if ComputePrecision.current == .bf16, case let .bf16(w16) = values, w16.withUnsafeBufferPointer({ wb in
                    guard let w = wb.baseAddress else { return false }
                    return bf16gemm(false, true, m: n, n: out, k: inFeatures, xb, lda: inFeatures, bfloat16: w, ldb: inFeatures,
                                    beta: beta, yb, ldc: out)
                }) { return }
                values.withFloats { wb in
                    sgemm(false, true, m: n, n: out, k: inFeatures, xb, lda: inFeatures, wb, ldb: inFeatures, beta: beta, yb, ldc: out)
                }
            }
        }
        for t in terms { try t.forward(x, into: &y) }
        return y
    }

    /// `∂loss/∂x = gradOutput · W + Σ terms`, and the terms' factor gradients.
    public func backward(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) -> Matrix {
        try check(gy, x)
        var gx = baseInputGradient(gy)
        for t in terms { try t.backward(gradOutput: gy, input: x, gradInput: &gx) }
        return gx
    }

    /// Only `∂loss/∂x` (the layer is linear in `x`, so its input is not needed); no factor gradients.
    public func inputGradient(gradOutput gy: Matrix) throws(ComputeError) -> Matrix {
        try gy.validate("linear [\(outFeatures) × \(inFeatures)] backward gradient", cols: outFeatures)
        var gx = baseInputGradient(gy)
        for t in terms { try t.addInputGradient(gradOutput: gy, into: &gx) }
        return gx
    }

    /// Only the terms' factor gradients (when `x` needs no gradient, or it was computed by
    /// `inputGradient`).
    public func accumulateGradients(gradOutput gy: Matrix, input x: Matrix) throws(ComputeError) {
        try check(gy, x)
        for t in terms where t.trainable { try t.accumulateGradients(gradOutput: gy, input: x) }
    }

    /// Whether any attached term trains.
    public var hasTrainableTerms: Bool { terms.contains { $0.trainable } }

    /// `gy · W` `[n × in]` (shapes checked by the caller).
    private func baseInputGradient(_ gy: Matrix) -> Matrix {
        let n = gy.rows
        var gx = Matrix(uninitializedRows: n, cols: inFeatures)
        guard n > 0 else { return gx }
        gy.data.withBase { gb in gx.data.withMutableBase { xb in
            if ComputePrecision.current == .bf16, case let .bf16(w16) = values, w16.withUnsafeBufferPointer({ wb in
                guard let w = wb.baseAddress else { return false }
                return bf16gemm(false, false, m: n, n: inFeatures, k: outFeatures, gb, lda: outFeatures, bfloat16: w, ldb: inFeatures,
                                beta: 0, xb, ldc: inFeatures)
            }) { return }
            values.withFloats { wb in
                sgemm(false, false, m: n, n: inFeatures, k: outFeatures, gb, lda: outFeatures, wb, ldb: inFeatures, xb, ldc: inFeatures)
            }
        } }
        return gx
    }

    private func check(_ gy: Matrix, _ x: Matrix) throws(ComputeError) {
        let what = "linear [\(outFeatures) × \(inFeatures)] backward"
        try x.validate(what + " input", cols: inFeatures)
        try gy.validate(what + " gradient", cols: outFeatures)
        guard gy.rows == x.rows else { throw ComputeError("\(what): \(gy.rows) gradient rows for \(x.rows) input rows") }
    }
}
