import Compute
import Diffusion
import Foundation
import Testing

/// The UNet backward on what the fixtures do not cover: odd latent sizes (nearest resizing to
/// the skip connections' sizes in the up path), the time-embedding path and the context
/// gradient, each against a central difference of the forward along a random direction.
@Suite(.serialized) struct NetworkBackwardTests {
    /// `Σ pred · r` in binary64.
    static func objective(_ net: UNetNetwork, _ x: Compute.FeatureMap, _ t: Float, _ c: Matrix, _ r: [Float]) throws -> Double {
        let y = try net.forward(x, timestep: t, context: c)
        return zip(y.data, r).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }

    static func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } }

    @Test(arguments: [(5, 7), (8, 8)])
    func unetGradientsMatchCentralDifferences(h: Int, w: Int) throws {
        // The conditioned copy: unit-gain weights, so every layer's gradient is well above rounding.
        let (base, dir) = try NetworkFixtures.base("sd1-cond")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var net = try UNetNetwork(base: base)
        let layers = ["time_embedding.linear_1", "down_blocks.0.resnets.0.time_emb_proj",
                      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.1.attentions.1.proj_out",
                      "mid_block.attentions.0.transformer_blocks.0.ff.net.2", "up_blocks.2.attentions.0.proj_in",
                      "up_blocks.3.attentions.1.transformer_blocks.0.attn2.to_v", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"]
        var terms: [LowRankTerm] = []
        for (i, name) in layers.enumerated() {
            let l = try #require(net.linear(named: name), "\(name)")
            let term = try LowRankTerm.lora(down: testValues(2 * l.inFeatures, seed: UInt64(100 + i), scale: 0.3),
                                            up: testValues(l.outFeatures * 2, seed: UInt64(200 + i), scale: 0.3),
                                            out: l.outFeatures, in: l.inFeatures, rank: 2, alpha: 2)
            try net.attach(term, to: name)
            terms.append(term)
        }
        let ctxDim = net.architecture.contextDim
        let x = try Compute.FeatureMap(c: 4, h: h, w: w, data: testValues(4 * h * w, seed: 7))
        let context = try Matrix(rows: 77, cols: ctxDim, data: testValues(77 * ctxDim, seed: 8))
        let r = testValues(4 * h * w, seed: 9)
        let t: Float = 321
        let gcontext = try #require(try net.backward(gradOutput: try Compute.FeatureMap(c: 4, h: h, w: w, data: r), sample: x, timestep: t,
                                                     context: context, contextGradient: true))
        // Central differences at ε and ε/2 combined by Richardson extrapolation (the O(ε²) terms
        // cancel), for ε = 0.02, 0.01, 0.005: the conditioned model is strongly nonlinear at these
        // factor scales (large steps) and float32 rounding limits small ones, so the estimate
        // closest to the analytic value must be within 1 %. A wrong gradient misses at every step.
        func derivatives(_ f: (Float) throws -> Double) throws -> [Double] {
            try [Float(2e-2), 1e-2, 5e-3].map { eps in
                let d1 = (try f(eps) - f(-eps)) / (2 * Double(eps)), d2 = (try f(eps / 2) - f(-eps / 2)) / Double(eps)
                return (4 * d2 - d1) / 3
            }
        }
        func closest(_ analytic: Double, _ estimates: [Double]) -> (numeric: Double, error: Double) {
            let best = estimates.min { abs($0 - analytic) < abs($1 - analytic) } ?? .nan
            return (best, abs(analytic - best) / abs(best))
        }
        var worst = 0.0
        for (i, term) in terms.enumerated() {
            let (d0, u0) = (term.down, term.up)
            let vd = testValues(d0.count, seed: UInt64(300 + i)), vu = testValues(u0.count, seed: UInt64(400 + i))
            let analytic = Self.dot(term.gradDown, vd) + Self.dot(term.gradUp, vu)
            let estimates = try derivatives { s in
                try term.setFactors(down: zip(d0, vd).map { $0 + s * $1 }, up: zip(u0, vu).map { $0 + s * $1 })
                return try Self.objective(net, x, t, context, r)
            }
            try term.setFactors(down: d0, up: u0)
            let (numeric, e) = closest(analytic, estimates)
            #expect(e <= 1e-2, "\(h)×\(w) \(layers[i]): analytic \(analytic), central differences \(estimates)")
            #expect(abs(numeric) > 2e-2, "\(layers[i]): the direction must change the output measurably (\(numeric))")
            worst = max(worst, e)
        }
        // The context gradient.
        let v = testValues(context.data.count, seed: 11)
        let analytic = Self.dot(gcontext.data, v)
        let estimates = try derivatives { s in
            try Self.objective(net, x, t, try Matrix(rows: 77, cols: ctxDim, data: zip(context.data, v).map { $0 + s * $1 }), r)
        }
        let ec = closest(analytic, estimates).error
        #expect(ec <= 1e-2, "\(h)×\(w) context: analytic \(analytic), central differences \(estimates)")
        print("UNet backward at \(h)×\(w) vs central differences: factors ≤ \(worst), context \(ec)")
        // Without the context gradient: the same factor gradients, nothing returned.
        let before = terms.map { $0.gradDown + $0.gradUp }
        for term in terms { term.zeroGradients() }
        #expect(try net.backward(gradOutput: try Compute.FeatureMap(c: 4, h: h, w: w, data: r), sample: x, timestep: t,
                                 context: context, contextGradient: false) == nil)
        for (term, b) in zip(terms, before) { #expect(relativeError(term.gradDown + term.gradUp, b) <= 1e-6) }
    }

    /// `ResizeNearest`'s backward is the adjoint of its forward: `⟨resize(x), g⟩ = ⟨x, backward(g)⟩`.
    @Test func nearestResizeBackwardIsTheAdjoint() throws {
        for (h, w, oh, ow) in [(3, 4, 5, 7), (2, 3, 4, 6), (5, 5, 3, 2), (1, 1, 4, 3), (7, 3, 7, 3)] {
            let x = try Compute.FeatureMap(c: 3, h: h, w: w, data: testValues(3 * h * w, seed: UInt64(h * 10 + w)))
            let y = try ResizeNearest.forward(x, h: oh, w: ow)
            let g = try Compute.FeatureMap(c: 3, h: oh, w: ow, data: testValues(3 * oh * ow, seed: UInt64(oh * 10 + ow)))
            let gx = try ResizeNearest.backward(gradOutput: g, inputHeight: h, inputWidth: w)
            let lhs = Self.dot(y.data, g.data), rhs = Self.dot(x.data, gx.data)
            #expect(abs(lhs - rhs) <= 1e-5 * max(1, abs(lhs)), "\(h)×\(w) → \(oh)×\(ow)")
            if oh == 2 * h && ow == 2 * w { #expect(y == (try UpsampleNearest2x.forward(x))) }
        }
        #expect(throws: ComputeError.self) { _ = try ResizeNearest.forward(try Compute.FeatureMap(zerosC: 1, h: 2, w: 2), h: 0, w: 3) }
        #expect(throws: ComputeError.self) {
            _ = try ResizeNearest.backward(gradOutput: try Compute.FeatureMap(zerosC: 1, h: 2, w: 2), inputHeight: -1, inputWidth: 3)
        }
    }
}
