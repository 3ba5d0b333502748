import Testing
@testable import Compute

/// Convolutions against PyTorch autograd (`torch.nn.Conv2d`, input gradient).
@Suite struct ConvolutionTests {
    func layer(_ f: KernelFixtures, _ name: String) throws -> Conv2d {
        try Conv2d(weight: try f.param(name, "weight"), bias: try f.param(name, "bias"), out: try f.config(name, "out"),
                   in: try f.config(name, "in"), kernel: try f.config(name, "kernel"), stride: try f.config(name, "stride"),
                   padding: try f.config(name, "padding"))
    }

    /// Forward and input gradient of a fixture case, batch item by batch item, with `algorithm`.
    func check(_ name: String, algorithm: ConvAlgorithm, label: String) throws {
        let f = try KernelFixtures.load()
        let conv = try layer(f, name)
        let shape = try f.inputShape(name)
        let (n, h, w) = (shape[0], shape[2], shape[3])
        let x = try f.input(name), gy = try f.upstream(name), y = try f.output(name), gx = try f.grad(name)
        var gotY: [Float] = [], gotGX: [Float] = []
        for b in 0..<n {
            let xb = try FeatureMap(c: conv.inChannels, h: h, w: w, data: item(x, b, of: n))
            let yb = try conv.forward(xb, algorithm: algorithm)
            gotY += yb.data
            let gyb = try FeatureMap(c: conv.outChannels, h: yb.h, w: yb.w, data: item(gy, b, of: n))
            gotGX += try conv.backward(gradOutput: gyb, inputHeight: h, inputWidth: w, algorithm: algorithm).data
        }
        expectClose(gotY, y, "\(name) y (\(label))")
        expectClose(gotGX, gx, "\(name) grad x (\(label))")
    }

    @Test func conv3x3Stride1() throws {
        try check("conv3x3_s1", algorithm: .direct, label: "im2col")
        try check("conv3x3_s1", algorithm: .winograd, label: "Winograd")
    }

    /// 16 → 16 channels on 16×16: the size where `automatic` picks Winograd (forward and backward).
    @Test func conv3x3Stride1Wide() throws {
        #expect(Conv2d.winogradPays(in: 16, out: 16, h: 16, w: 16))
        try check("conv3x3_s1_wide", algorithm: .automatic, label: "automatic: Winograd")
        try check("conv3x3_s1_wide", algorithm: .direct, label: "im2col")
    }

    @Test func conv3x3Stride2() throws {
        try check("conv3x3_s2", algorithm: .automatic, label: "im2col + col2im")
    }

    @Test func conv1x1() throws {
        try check("conv1x1", algorithm: .automatic, label: "GEMM")
    }

    /// The input gradient is the adjoint of the forward: ⟨conv(x) − bias, g⟩ = ⟨x, ∂(g)⟩ (binary64
    /// sums), on shapes the fixtures do not cover — odd sizes, stride 2 and 3, padding 0 and 2,
    /// 5×5 kernels, and bands of output positions far smaller than the map (col2im across bands).
    @Test(arguments: [
        (3, 4, 3, 2, 1, 9, 7), (2, 3, 5, 1, 2, 6, 8), (4, 2, 3, 3, 0, 11, 10), (3, 3, 1, 2, 0, 7, 5), (5, 17, 3, 1, 1, 13, 9),
    ])
    func adjointIdentity(_ c: Int, _ out: Int, _ k: Int, _ stride: Int, _ pad: Int, _ h: Int, _ w: Int) throws {
        var rng = TestRandom(seed: UInt64(c * 1000 + out * 100 + k * 10 + stride))
        let conv = try Conv2d(weight: rng.values(out * c * k * k), bias: nil, out: out, in: c, kernel: k, stride: stride, padding: pad)
        let x = try FeatureMap(c: c, h: h, w: w, data: rng.values(c * h * w))
        for algorithm in [ConvAlgorithm.direct, .winograd] {
            let y = try conv.forward(x, algorithm: algorithm)
            #expect(relativeError(try conv.forward(x, algorithm: algorithm, band: 7).data, y.data) <= 1e-6)
            let g = try FeatureMap(c: out, h: y.h, w: y.w, data: rng.values(y.data.count))
            for band in [nil, 1, 7] as [Int?] {
                let gx = try conv.backward(gradOutput: g, inputHeight: h, inputWidth: w, algorithm: algorithm, band: band)
                var lhs: Double = 0, rhs: Double = 0, scale: Double = 0
                for (a, b) in zip(y.data, g.data) { lhs += Double(a) * Double(b); scale += abs(Double(a) * Double(b)) }
                for (a, b) in zip(x.data, gx.data) { rhs += Double(a) * Double(b) }
                #expect(abs(lhs - rhs) <= 1e-5 * scale, "\(c)→\(out) k\(k) s\(stride) p\(pad) \(h)×\(w) \(algorithm) band \(band ?? 0): \(lhs) vs \(rhs)")
            }
        }
    }

    /// The fused forms (group norm + SiLU read by the Winograd input transform; upsampling read
    /// on the fly) equal the two separate steps, on a map where Winograd is used and on one where not.
    @Test(arguments: [(16, 16, 9, 16), (3, 5, 4, 5)])
    func fusedForwardsEqualTheSeparateSteps(_ c: Int, _ out: Int, _ h: Int, _ w: Int) throws {
        var rng = TestRandom(seed: UInt64(c + h))
        let conv = try Conv2d(weight: rng.values(out * c * 9), bias: rng.values(out), out: out, in: c, kernel: 3, padding: 1)
        let gn = try GroupNorm(groups: c == 16 ? 4 : 1, channels: c, eps: 1e-5, weight: rng.values(c).map { $0 + 1 }, bias: rng.values(c), silu: true)
        let x = try FeatureMap(c: c, h: h, w: w, data: rng.values(c * h * w, scale: 2))
        for algorithm in [ConvAlgorithm.automatic, .winograd, .direct] {
            let fused = try conv.forward(normalizing: x, with: gn, algorithm: algorithm)
            let separate = try conv.forward(try gn.forward(x), algorithm: algorithm)
            #expect(relativeError(fused.data, separate.data) <= 1e-6, "group norm + conv, \(algorithm)")
            let up = try conv.forward(upsampling: x, algorithm: algorithm)
            let upSeparate = try conv.forward(try UpsampleNearest2x.forward(x), algorithm: algorithm)
            #expect(up.h == 2 * h && up.w == 2 * w)
            #expect(relativeError(up.data, upSeparate.data) <= 1e-6, "upsample + conv, \(algorithm)")
        }
    }

    @Test func refusesMismatchedShapes() throws {
        let conv = try Conv2d(weight: [Float](repeating: 0, count: 2 * 3 * 9), bias: nil, out: 2, in: 3, kernel: 3, stride: 2, padding: 1)
        let x = try FeatureMap(zerosC: 4, h: 5, w: 5)
        #expect(throws: ComputeError.self) { try conv.forward(x) }
        let g = try FeatureMap(zerosC: 2, h: 3, w: 3)
        #expect(throws: ComputeError.self) { try conv.backward(gradOutput: g, inputHeight: 7, inputWidth: 7) }
        #expect(throws: ComputeError.self) { try conv.backward(gradOutput: g, inputHeight: Int.max, inputWidth: 5) }
        #expect(throws: ComputeError.self) { try Conv2d(weight: [1], bias: nil, out: 2, in: 3, kernel: 3, padding: 1) }
        #expect(throws: ComputeError.self) { try Conv2d(weight: [], bias: nil, out: Int.max, in: Int.max, kernel: 3, padding: 1) }
        var bad = x
        bad.data.removeLast()
        #expect(throws: ComputeError.self) { try conv.forward(bad) }
        #expect(throws: ComputeError.self) { try bad.tokens() }
        #expect(throws: ComputeError.self) { try FeatureMap(tokens: try Matrix(rows: 5, cols: 2, data: .init(repeating: 0, count: 10)), h: 2, w: 3) }
        let round = try FeatureMap(tokens: try x.tokens(), h: x.h, w: x.w)
        #expect(round == x)
    }
}
