import Foundation
import Testing
@testable import Compute

/// Activations, GEGLU, softmax, nearest upsampling and the loss against PyTorch autograd.
@Suite struct ActivationTests {
    func elementwise(_ name: String, _ act: Activation) throws {
        let f = try KernelFixtures.load()
        let x = try f.input(name)
        expectClose(act.forward(x), try f.output(name), "\(name) y")
        expectClose(try act.backward(gradOutput: try f.upstream(name), input: x), try f.grad(name), "\(name) grad x")
    }

    @Test func gelu() throws { try elementwise("gelu", .gelu) }
    @Test func quickGELU() throws { try elementwise("quick_gelu", .quickGELU) }

    /// SiLU and tanh-GELU have no fixture: their derivatives against a central difference of the
    /// forward in binary64 (and SiLU's forward against binary64).
    @Test func siluAndTanhGELUDerivatives() throws {
        let xs: [Float] = stride(from: -12, through: 12, by: 0.37).map { Float($0) } + [0, 1e-3, -1e-3, 80, -80]
        let ones = [Float](repeating: 1, count: xs.count)
        let cases: [(Activation, (Double) -> Double)] = [
            (.silu, { $0 / (1 + Foundation.exp(-$0)) }),
            (.geluTanh, { 0.5 * $0 * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * ($0 + 0.044715 * $0 * $0 * $0))) }),
            (.gelu, { 0.5 * $0 * (1 + Foundation.erf($0 / 2.0.squareRoot())) }),
            (.quickGELU, { $0 / (1 + Foundation.exp(-1.702 * $0)) }),
        ]
        for (act, f) in cases {
            let d = try act.backward(gradOutput: ones, input: xs)
            let y = act.forward(xs)
            var worstD: Double = 0, worstY: Double = 0
            for (i, x) in xs.enumerated() {
                let v = Double(x), h = 1e-5
                let ref = (f(v + h) - f(v - h)) / (2 * h)
                worstD = max(worstD, abs(Double(d[i]) - ref) / max(1, abs(ref)))
                worstY = max(worstY, abs(Double(y[i]) - f(v)) / max(1, abs(f(v))))
            }
            print("kernel \(act) derivative vs binary64 central difference: \(worstD), forward: \(worstY)")
            #expect(worstD <= 2e-6, "\(act) derivative")
            #expect(worstY <= 1e-6, "\(act) forward")
        }
    }

    @Test func geglu() throws {
        let f = try KernelFixtures.load(), name = "geglu"
        let (inDim, inner) = (try f.config(name, "in"), try f.config(name, "out"))
        let proj = try Linear(weight: try f.param(name, "proj.weight"), bias: try f.param(name, "proj.bias"), out: 2 * inner, in: inDim)
        let layer = try GEGLU(proj: proj)
        let x = try f.input(name)
        let xm = try Matrix(rows: x.count / inDim, cols: inDim, data: x)
        expectClose(try layer.forward(xm).data, try f.output(name), "geglu y")
        let gy = try Matrix(rows: xm.rows, cols: inner, data: try f.upstream(name))
        expectClose(try layer.backward(gradOutput: gy, input: xm).data, try f.grad(name), "geglu grad x")
    }

    /// Bands of rows (the projection recomputed per band) give the same output, input gradient
    /// and projection-term gradients as one band.
    @Test func gegluBands() throws {
        var rng = TestRandom(seed: 21)
        let (n, c, inner) = (10, 6, 5)
        let term = try LowRankTerm.lora(down: rng.values(2 * c), up: rng.values(2 * inner * 2), out: 2 * inner, in: c, rank: 2, alpha: 2)
        var layer = try GEGLU(proj: try Linear(weight: rng.values(2 * inner * c), bias: rng.values(2 * inner), out: 2 * inner, in: c, terms: [term]))
        let x = try Matrix(rows: n, cols: c, data: rng.values(n * c)), gy = try Matrix(rows: n, cols: inner, data: rng.values(n * inner))
        let y = try layer.forward(x), gx = try layer.backward(gradOutput: gy, input: x)
        let (gd, gu) = (term.gradDown, term.gradUp)
        term.zeroGradients()
        layer.bandRows = 3
        #expect(relativeError(try layer.forward(x).data, y.data) <= 1e-6)
        #expect(relativeError(try layer.backward(gradOutput: gy, input: x).data, gx.data) <= 1e-6)
        #expect(relativeError(term.gradDown, gd) <= 1e-6 && relativeError(term.gradUp, gu) <= 1e-6)
    }

    @Test func softmax() throws {
        let f = try KernelFixtures.load(), name = "softmax"
        let shape = try f.inputShape(name)
        let x = try Matrix(rows: shape[0], cols: shape[1], data: try f.input(name))
        expectClose(try Softmax.forward(x).data, try f.output(name), "softmax y")
        let gy = try Matrix(rows: shape[0], cols: shape[1], data: try f.upstream(name))
        expectClose(try Softmax.backward(gradOutput: gy, input: x).data, try f.grad(name), "softmax grad x")
    }

    @Test func upsampleNearest2x() throws {
        let f = try KernelFixtures.load(), name = "upsample_nearest2x"
        let s = try f.inputShape(name)
        let x = try FeatureMap(c: s[0] * s[1], h: s[2], w: s[3], data: try f.input(name))
        let y = try UpsampleNearest2x.forward(x)
        expectClose(y.data, try f.output(name), "upsample_nearest2x y")
        let gy = try FeatureMap(c: x.c, h: y.h, w: y.w, data: try f.upstream(name))
        expectClose(try UpsampleNearest2x.backward(gradOutput: gy).data, try f.grad(name), "upsample_nearest2x grad x")
        #expect(throws: ComputeError.self) { try UpsampleNearest2x.backward(gradOutput: try FeatureMap(zerosC: 1, h: 3, w: 4)) }
    }

    @Test func meanSquaredError() throws {
        let f = try KernelFixtures.load(), name = "mse"
        let (loss, g) = try Loss.meanSquaredError(prediction: try f.input(name), target: try f.input(name, "target"))
        expectClose([loss], try f.output(name), "mse loss")
        expectClose(g, try f.grad(name), "mse grad x")
        #expect(throws: ComputeError.self) { try Loss.meanSquaredError(prediction: [1, 2], target: [1]) }
        #expect(throws: ComputeError.self) { try Loss.meanSquaredError(prediction: [], target: []) }
    }

    @Test func timestepEmbedding() throws {
        let f = try KernelFixtures.load(), name = "timestep_embedding"
        let (channels, dim) = (try f.config(name, "channels"), try f.config(name, "time_embed_dim"))
        let layer = try TimestepEmbedding(
            linear1: try Linear(weight: try f.param(name, "linear_1.weight"), bias: try f.param(name, "linear_1.bias"), out: dim, in: channels),
            linear2: try Linear(weight: try f.param(name, "linear_2.weight"), bias: try f.param(name, "linear_2.bias"), out: dim, in: dim),
            flipSinToCos: try f.entry(name)["config"]?["flip_sin_to_cos"] == .bool(true), freqShift: Float(try f.configDouble(name, "freq_shift")))
        let stored = try f.input(name)
        let ts = try f.int64s(try f.tensorName(name, "inputs", "timesteps")).map { Float($0) }
        let feats = try layer.features(ts)
        expectClose(feats.data, stored, "timestep_embedding sinusoidal features")
        let x = try Matrix(rows: ts.count, cols: channels, data: stored)
        expectClose(try layer.forward(x).data, try f.output(name), "timestep_embedding y")
        let gy = try Matrix(rows: ts.count, cols: dim, data: try f.upstream(name))
        expectClose(try layer.backward(gradOutput: gy, input: x).data, try f.grad(name), "timestep_embedding grad x")
    }
}
