/// The adapter slot of a `Linear` layer: a term that adds `Δ(x)` to the layer's output
/// `y = W x + bias`, and that can be trained. LiDB and LoRA terms are `LowRankTerm`s; other
/// parameterisations (LoHa, LoKr, …) conform the same way.
///
/// Shapes are checked by the `Linear` the term is attached to: `x` has `inFeatures` columns,
/// `y` and `gradOutput` `outFeatures`, and all have the same rows. A term is a reference type
/// because its gradients accumulate over the uses of a step; it is not safe to call `backward`
/// on one term from several threads at once.
public protocol DeltaTerm: AnyObject, Sendable {
    var outFeatures: Int { get }
    var inFeatures: Int { get }
    /// Whether `backward` accumulates gradients for the term's trained factors (a frozen term
    /// still passes its input gradient through).
    var trainable: Bool { get }
    /// `y += Δ(x)`.
    func forward(_ x: Matrix, into y: inout Matrix)
    /// `gradInput += (∂Δ/∂x)ᵀ · gradOutput`; when trainable, adds `∂loss/∂factor` to the term's
    /// gradients (`x` is the layer's input, from which the term recomputes its intermediates).
    func backward(gradOutput: Matrix, input x: Matrix, gradInput: inout Matrix)
    /// Only the factor gradients of `backward` (for a layer whose input needs no gradient).
    func accumulateGradients(gradOutput: Matrix, input x: Matrix)
    /// `ΔW` as a dense `[outFeatures × inFeatures]` matrix (what a merge adds to the weight).
    func weightDelta() -> [Float]
}
