import Foundation
import Testing
@testable import Compute

/// A dense delta term (no low-rank factors): the protocol's extension point (LoHa, LoKr, …), and
/// a way to put chosen values into a merge.
final class DenseTerm: DeltaTerm, @unchecked Sendable {
    let outFeatures: Int, inFeatures: Int
    let delta: [Float]
    var trainable: Bool { false }
    init(out: Int, in inDim: Int, delta: [Float]) { outFeatures = out; inFeatures = inDim; self.delta = delta }
    func forward(_ x: Matrix, into y: inout Matrix) throws(ComputeError) {
        for r in 0..<x.rows { for o in 0..<outFeatures { for i in 0..<inFeatures {
            y.data[r * outFeatures + o] += delta[o * inFeatures + i] * x.data[r * inFeatures + i]
        } } }
    }
    func addInputGradient(gradOutput: Matrix, into gradInput: inout Matrix) throws(ComputeError) {}
    func accumulateGradients(gradOutput: Matrix, input x: Matrix) throws(ComputeError) {}
    func weightDelta() -> [Float] { delta }
}

/// Merging terms into weights (`addWeightDeltas`, `Linear.addWeightDeltas`) and weights held as F16.
@Suite struct WeightDeltaTests {
    /// Several terms (low-rank and dense) are summed in binary64 and added with one rounding:
    /// the result is the binary64 sum of W and every term's binary32 ΔW, rounded once.
    @Test func termsAreSummedAndRoundedOnce() throws {
        var rng = TestRandom(seed: 11)
        let (out, inDim) = (7, 5)
        let w = rng.values(out * inDim)
        let lidb = try LowRankTerm.lidb(downAux: rng.values(3 * inDim), downTrain: rng.values(2 * 3), upTrain: rng.values(4 * 2),
                                        upAux: rng.values(out * 4), out: out, in: inDim, rank: 2, alpha: 3)
        let lora = try LowRankTerm.lora(down: rng.values(inDim), up: rng.values(out), out: out, in: inDim, rank: 1, alpha: 0.5)
        let dense = DenseTerm(out: out, in: inDim, delta: rng.values(out * inDim, scale: 1e-3))
        let terms: [any DeltaTerm] = [lidb, lora, dense]
        for sign: Float in [1, -1] {
            var got = w
            let bad = got.withUnsafeMutableBufferPointer { addWeightDeltas(terms, out: out, in: inDim, into: $0.baseAddress!, sign: sign) }
            #expect(bad == 0)
            let deltas = terms.map { $0.weightDelta() }
            for i in w.indices {
                let exact = Double(w[i]) + Double(sign) * deltas.reduce(0.0) { $0 + Double($1[i]) }
                #expect(got[i] == Float(exact), "element \(i)")
            }
        }
        // The low-rank factors are what the dense ΔW is made of.
        let f = try #require(lidb.lowRankFactors())
        #expect(f.up.count == out * 2 && f.down.count == 2 * inDim)
        #expect(DenseTerm(out: 1, in: 1, delta: [0]).lowRankFactors() == nil)
    }

    /// Merged into a layer, a term gives the output the layer with the term attached gives
    /// (to rounding), and the F16-held weight becomes binary32 first.
    @Test func linearMergeEqualsTheAttachedTerm() throws {
        var rng = TestRandom(seed: 12)
        let (out, inDim) = (6, 9)
        let halfBits = rng.values(out * inDim).map { Float16($0).bitPattern }
        let w = halfToFloat(halfBits)
        let term = try LowRankTerm.lora(down: rng.values(2 * inDim), up: rng.values(out * 2), out: out, in: inDim, rank: 2, alpha: 2)
        var merged = try Linear(values: .f16(halfBits), bias: rng.values(out), out: out, in: inDim)
        #expect(merged.values.isHalf)
        let attached = try Linear(weight: w, bias: merged.bias, out: out, in: inDim, terms: [term])
        try merged.addWeightDeltas([term])
        #expect(!merged.values.isHalf)
        let x = try Matrix(rows: 4, cols: inDim, data: rng.values(4 * inDim))
        #expect(relativeError(try merged.forward(x).data, try attached.forward(x).data) <= 1e-6)
        // A term of another shape is refused and changes nothing.
        let before = merged.weight
        let wrong = try LowRankTerm.lora(down: rng.values(inDim + 1), up: rng.values(out), out: out, in: inDim + 1, rank: 1, alpha: 1)
        #expect(throws: ComputeError.self) { try merged.addWeightDeltas([term, wrong]) }
        #expect(merged.weight == before)
        // Results that are not finite are refused, the weight unchanged; the kernel counts them.
        let huge = DenseTerm(out: out, in: inDim, delta: [Float](repeating: .greatestFiniteMagnitude, count: out * inDim))
        let kept = merged.weight
        #expect { try merged.addWeightDeltas([huge, huge]) } throws: { "\($0)".contains("not finite in \(out * inDim) weight(s)") }
        #expect(merged.weight == kept)
        var copy = kept
        #expect(copy.withUnsafeMutableBufferPointer { addWeightDeltas([huge, huge], out: out, in: inDim, into: $0.baseAddress!, sign: 1) } == out * inDim)
    }

    /// F16 weights converted per use compute exactly what the converted binary32 weights do.
    @Test func halfWeightsGiveTheSameValues() throws {
        var rng = TestRandom(seed: 13)
        let (c, out) = (5, 6)
        let bits = rng.values(out * c * 9, scale: 4).map { Float16($0).bitPattern }
        let floats = halfToFloat(bits)
        let bias = rng.values(out)
        let x = try FeatureMap(c: c, h: 7, w: 6, data: rng.values(c * 42))
        for algorithm in [ConvAlgorithm.direct, .winograd] {
            let a = try Conv2d(values: .f16(bits), bias: bias, out: out, in: c, kernel: 3, padding: 1)
            let b = try Conv2d(weight: floats, bias: bias, out: out, in: c, kernel: 3, padding: 1)
            #expect(try a.forward(x, algorithm: algorithm).data == b.forward(x, algorithm: algorithm).data)
            let g = try FeatureMap(c: out, h: 7, w: 6, data: rng.values(out * 42))
            #expect(try a.backward(gradOutput: g, inputHeight: 7, inputWidth: 6, algorithm: algorithm).data
                    == b.backward(gradOutput: g, inputHeight: 7, inputWidth: 6, algorithm: algorithm).data)
        }
        let lw = rng.values(out * c).map { Float16($0).bitPattern }
        let la = try Linear(values: .f16(lw), bias: nil, out: out, in: c), lb = try Linear(weight: halfToFloat(lw), bias: nil, out: out, in: c)
        let m = try Matrix(rows: 3, cols: c, data: rng.values(3 * c))
        #expect(try la.forward(m).data == lb.forward(m).data)
        #expect(throws: ComputeError.self) { try Linear(values: .f16([1, 2, 3]), bias: nil, out: 2, in: 2) }
    }

    /// The conversion is exact for every binary16 value, with or without F16C.
    @Test func halfConversionIsExact() {
        let all = (0...UInt16.max).map { $0 }
        let converted = halfToFloat(all)
        var mismatches: [UInt16] = []
        for (b, f) in zip(all, converted) {
            let want = Float(Float16(bitPattern: b)), fallback = halfBitsToFloat(b)
            let same = want.isNaN ? f.isNaN && fallback.isNaN : f.bitPattern == want.bitPattern && fallback.bitPattern == want.bitPattern
            if !same { mismatches.append(b) }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(8))")
    }
}
