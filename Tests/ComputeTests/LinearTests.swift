import Testing
@testable import Compute

/// `Linear` with LiDB and LoRA delta terms against PyTorch autograd: output, input gradient and
/// the trained factors' gradients.
@Suite struct LinearTests {
    func check(_ name: String) throws {
        let f = try KernelFixtures.load()
        let (out, inDim) = (try f.config(name, "out"), try f.config(name, "in"))
        var linear = try Linear(weight: try f.param(name, "base.weight"), bias: try f.param(name, "base.bias"), out: out, in: inDim)
        let entry = try f.entry(name)
        var lidb: LowRankTerm?, lora: LowRankTerm?
        if entry["config"]?["lidb"] != nil {
            let rank = try f.config(name, "rank", in: "lidb")
            let t = try LowRankTerm.lidb(downAux: try f.param(name, "lidb.down_aux"), downTrain: try f.param(name, "lidb.down_train"),
                                         upTrain: try f.param(name, "lidb.up_train"), upAux: try f.param(name, "lidb.up_aux"),
                                         out: out, in: inDim, rank: rank, alpha: Float(try f.configDouble(name, "lidb", "alpha")))
            let (a, b) = (try f.config(name, "a", in: "lidb"), try f.config(name, "b", in: "lidb"))
            #expect(t.a == a && t.b == b)
            try linear.attach(t)
            lidb = t
        }
        if entry["config"]?["lora"] != nil {
            let rank = try f.config(name, "rank", in: "lora")
            let t = try LowRankTerm.lora(down: try f.param(name, "lora.down"), up: try f.param(name, "lora.up"), out: out, in: inDim,
                                         rank: rank, alpha: Float(try f.configDouble(name, "lora", "alpha")))
            try linear.attach(t)
            lora = t
        }
        let x = try f.input(name)
        let xm = try Matrix(rows: x.count / inDim, cols: inDim, data: x)
        expectClose(try linear.forward(xm).data, try f.output(name), "\(name) y")
        let gy = try Matrix(rows: xm.rows, cols: out, data: try f.upstream(name))
        expectClose(try linear.backward(gradOutput: gy, input: xm).data, try f.grad(name), "\(name) grad x")
        if let lidb {
            expectClose(lidb.gradDown, try f.grad(name, "lidb.down_train"), "\(name) grad lidb.down_train")
            expectClose(lidb.gradUp, try f.grad(name, "lidb.up_train"), "\(name) grad lidb.up_train")
        }
        if let lora {
            expectClose(lora.gradDown, try f.grad(name, "lora.down"), "\(name) grad lora.down")
            expectClose(lora.gradUp, try f.grad(name, "lora.up"), "\(name) grad lora.up")
        }
        // Gradients accumulate: a second backward doubles them; accumulateGradients alone gives the same.
        let terms = [lidb, lora].compactMap { $0 }
        let before = terms.map { ($0.gradDown, $0.gradUp) }
        try linear.accumulateGradients(gradOutput: gy, input: xm)
        for (t, (d, u)) in zip(terms, before) {
            #expect(relativeError(t.gradDown, d.map { 2 * $0 }) <= 1e-6 && relativeError(t.gradUp, u.map { 2 * $0 }) <= 1e-6)
            t.zeroGradients()
            #expect(t.gradDown.allSatisfy { $0 == 0 } && t.gradUp.allSatisfy { $0 == 0 })
        }
    }

    @Test func linearLiDB() throws { try check("linear_lidb") }
    @Test func linearLoRA() throws { try check("linear_lora") }
    @Test func linearLiDBAndLoRA() throws { try check("linear_lidb_lora") }

    /// `weightDelta()` is the dense ΔW the factored forward applies: `x·(W + ΔW)ᵀ` equals the
    /// layer with the term attached.
    @Test func weightDeltaMatchesTheFactoredForward() throws {
        var rng = TestRandom(seed: 5)
        let (out, inDim, rank, a, b) = (9, 11, 2, 6, 4)
        let w = rng.values(out * inDim)
        let term = try LowRankTerm.lidb(downAux: rng.values(a * inDim), downTrain: rng.values(rank * a), upTrain: rng.values(b * rank),
                                        upAux: rng.values(out * b), out: out, in: inDim, rank: rank, alpha: 3)
        let adapted = try Linear(weight: w, bias: nil, out: out, in: inDim, terms: [term])
        let delta = term.weightDelta()
        let merged = try Linear(weight: zip(w, delta).map { $0 + $1 }, bias: nil, out: out, in: inDim)
        let x = try Matrix(rows: 5, cols: inDim, data: rng.values(5 * inDim))
        #expect(relativeError(try adapted.forward(x).data, try merged.forward(x).data) <= 1e-6)
    }

    /// A frozen term passes its input gradient through and accumulates nothing.
    @Test func frozenTermHasNoGradients() throws {
        var rng = TestRandom(seed: 6)
        let term = try LowRankTerm.lora(down: rng.values(2 * 4), up: rng.values(3 * 2), out: 3, in: 4, rank: 2, alpha: 2, trainable: false)
        let linear = try Linear(weight: [Float](repeating: 0, count: 12), bias: nil, out: 3, in: 4, terms: [term])
        let x = try Matrix(rows: 2, cols: 4, data: rng.values(8)), gy = try Matrix(rows: 2, cols: 3, data: rng.values(6))
        let gx = try linear.backward(gradOutput: gy, input: x)
        // ∂x = gy · ΔW (W is zero).
        let d = term.weightDelta()
        var ref = [Float](repeating: 0, count: 8)
        for r in 0..<2 { for i in 0..<4 { for o in 0..<3 { ref[r * 4 + i] += gy.data[r * 3 + o] * d[o * 4 + i] } } }
        #expect(relativeError(gx.data, ref) <= 1e-6)
        #expect(term.gradDown.allSatisfy { $0 == 0 } && term.gradUp.allSatisfy { $0 == 0 })
    }

    @Test func refusesMismatchedShapes() throws {
        #expect(throws: ComputeError.self) { try Linear(weight: [1, 2, 3], bias: nil, out: 2, in: 2) }
        #expect(throws: ComputeError.self) { try Linear(weight: [], bias: nil, out: Int.max, in: 3) }
        var l = try Linear(weight: [1, 2, 3, 4], bias: [0, 0], out: 2, in: 2)
        #expect(throws: ComputeError.self) { try l.forward(try Matrix(rows: 1, cols: 3, data: [1, 2, 3])) }
        let wrong = try LowRankTerm.lora(down: [1, 1, 1], up: [1, 1], out: 2, in: 3, rank: 1, alpha: 1)
        #expect(throws: ComputeError.self) { try l.attach(wrong) }
        #expect(throws: ComputeError.self) { try LowRankTerm.lora(down: [1, 1], up: [1], out: 2, in: 2, rank: 1, alpha: 1) }
        #expect(throws: ComputeError.self) { try LowRankTerm.lora(down: [.nan, 1], up: [1, 1], out: 2, in: 2, rank: 1, alpha: 1) }
        #expect(throws: ComputeError.self) {
            try LowRankTerm.lidb(downAux: [1, 2, 3], downTrain: [1, 1], upTrain: [1, 1], upAux: [1, 1, 1, 1], out: 2, in: 2, rank: 1, alpha: 1)
        }
        let t = try LowRankTerm.lora(down: [1, 1], up: [1, 1], out: 2, in: 2, rank: 1, alpha: 1)
        // Called directly (not through a Linear), a term checks its shapes too.
        var y = try Matrix(zeros: 1, cols: 2), gx = try Matrix(zeros: 1, cols: 2)
        let wide = try Matrix(rows: 1, cols: 3, data: [1, 2, 3]), two = try Matrix(rows: 2, cols: 2, data: [1, 2, 3, 4])
        #expect(throws: ComputeError.self) { try t.forward(wide, into: &y) }
        #expect(throws: ComputeError.self) { try t.forward(two, into: &y) }
        #expect(throws: ComputeError.self) { try t.addInputGradient(gradOutput: two, into: &gx) }
        #expect(throws: ComputeError.self) { try t.accumulateGradients(gradOutput: y, input: wide) }
        #expect(throws: ComputeError.self) { try t.backward(gradOutput: y, input: two, gradInput: &gx) }
        var short = y
        short.data.removeLast()
        #expect(throws: ComputeError.self) { try t.forward(try Matrix(rows: 1, cols: 2, data: [1, 2]), into: &short) }
        #expect(throws: ComputeError.self) { try t.setFactors(down: [1], up: [1, 1]) }
        #expect(throws: ComputeError.self) { try t.setFactors(down: [1, .infinity], up: [1, 1]) }
        #expect(throws: ComputeError.self) { try Matrix(rows: 2, cols: 2, data: [1]) }
        #expect(throws: ComputeError.self) { try Matrix(rows: Int.max, cols: 2, data: []) }
        #expect(throws: ComputeError.self) {
            try l.backward(gradOutput: try Matrix(rows: 2, cols: 2, data: [1, 2, 3, 4]), input: try Matrix(rows: 1, cols: 2, data: [1, 2]))
        }
    }
}

extension KernelFixtures {
    func config(_ kernel: String, _ key: String, in group: String) throws -> Int {
        guard let v = try entry(kernel)["config"]?[group]?[key]?.int64Value else { throw FixtureError("\(kernel): no config.\(group).\(key)") }
        return Int(v)
    }
}
