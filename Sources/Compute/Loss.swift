/// The training objective's loss.
public enum Loss {
    /// `mean((prediction − target)²)` and its gradient `2 (prediction − target) / N`
    /// (`F.mse_loss`, reduction "mean"). The sum is accumulated in binary64.
    public static func meanSquaredError(prediction p: [Float], target t: [Float]) throws(ComputeError) -> (loss: Float, gradient: [Float]) {
        guard p.count == t.count, !p.isEmpty else { throw ComputeError("mean squared error: \(p.count) predictions for \(t.count) targets") }
        let n = p.count
        var sum: Double = 0
        var g = [Float](unsafeUninitializedCapacity: n) { _, c in c = n }
        let k = Float(2) / Float(n)
        p.withBase { pb in t.withBase { tb in g.withMutableBase { gb in
            for i in 0..<n {
                let d = pb[i] - tb[i]
                sum += Double(d) * Double(d)
                gb[i] = k * d
            }
        } } }
        return (Float(sum / Double(n)), g)
    }
}
