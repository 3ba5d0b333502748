/// The adapter slot of a `Linear` layer: a term that adds `Δ(x) = ΔW x` to the layer's output
/// `y = W x + bias`, and that can be trained. LiDB and LoRA terms are `LowRankTerm`s; other
/// parameterisations (LoHa, LoKr, …) conform the same way. The same term serves the three uses
/// of a delta: attached to a layer it is applied live (and trained); `addWeightDeltas` merges it
/// into a weight (through `lowRankFactors()` when it has them, else `weightDelta()`).
///
/// `x` has `inFeatures` columns, `y` and `gradOutput` `outFeatures`, and all have the same rows;
/// a term throws `ComputeError` for other shapes. A term is a reference type
/// because its gradients accumulate over the uses of a step; it is not safe to call the
/// gradient methods of one term from several threads at once.
public protocol DeltaTerm: AnyObject, Sendable {
    var outFeatures: Int { get }
    var inFeatures: Int { get }
    /// Whether the term's trained factors get gradients (a frozen term still passes its input
    /// gradient through).
    var trainable: Bool { get }
    /// `y += Δ(x)`.
    func forward(_ x: Matrix, into y: inout Matrix) throws(ComputeError)
    /// `gradInput += ΔWᵀ gradOutput` (row by row). `Δ` is linear in `x`, so the input is not needed.
    func addInputGradient(gradOutput: Matrix, into gradInput: inout Matrix) throws(ComputeError)
    /// When trainable, adds `∂loss/∂factor` to the term's gradients (`x` is the layer's input,
    /// from which the term recomputes its intermediates).
    func accumulateGradients(gradOutput: Matrix, input x: Matrix) throws(ComputeError)
    /// Both of the above (a term may share work between them).
    func backward(gradOutput: Matrix, input x: Matrix, gradInput: inout Matrix) throws(ComputeError)
    /// `ΔW` as a dense `[outFeatures × inFeatures]` matrix (what a merge adds to the weight).
    func weightDelta() -> [Float]
    /// `ΔW = U · D` in binary32 factors when the term is low-rank: `up` `[out × rank]` with every
    /// scale folded in, `down` `[rank × in]`; a merge then forms `ΔW` a block of rows at a time.
    /// nil (the default) for terms that are not, whose merge uses `weightDelta()`.
    func lowRankFactors() -> (up: [Float], down: [Float], rank: Int)?
}

extension DeltaTerm {
    public func lowRankFactors() -> (up: [Float], down: [Float], rank: Int)? { nil }

    public func backward(gradOutput: Matrix, input x: Matrix, gradInput: inout Matrix) throws(ComputeError) {
        try addInputGradient(gradOutput: gradOutput, into: &gradInput)
        if trainable { try accumulateGradients(gradOutput: gradOutput, input: x) }
    }
}
