import Testing
@testable import Compute

/// diffusers `Attention` (self and cross, with to_out, with and without LoRA terms) and a CLIP
/// text transformer (causal self-attention) against PyTorch autograd.
@Suite struct AttentionTests {
    /// `name.weight` `[out × in]` (out inferred) with `name.bias` when the fixture has one.
    func linear(_ f: KernelFixtures, _ kernel: String, _ prefix: String, in inDim: Int, lora: (rank: Int, alpha: Float)? = nil) throws -> (Linear, LowRankTerm?) {
        let base = lora == nil ? prefix : prefix + ".base"
        let w = try f.param(kernel, base + ".weight")
        let bias = (try f.entry(kernel)["params"]?[base + ".bias"]) == nil ? nil : try f.param(kernel, base + ".bias")
        var l = try Linear(weight: w, bias: bias, out: w.count / inDim, in: inDim)
        var term: LowRankTerm?
        if let lora {
            let t = try LowRankTerm.lora(down: try f.param(kernel, prefix + ".lora.down"), up: try f.param(kernel, prefix + ".lora.up"),
                                         out: l.outFeatures, in: inDim, rank: lora.rank, alpha: lora.alpha)
            try l.attach(t)
            term = t
        }
        return (l, term)
    }

    func check(_ name: String, cross: Bool, lora: (rank: Int, alpha: Float)? = nil) throws {
        let f = try KernelFixtures.load()
        let dim = try f.config(name, "query_dim"), heads = try f.config(name, "heads"), dh = try f.config(name, "dim_head")
        let ctxDim = cross ? try f.config(name, "cross_attention_dim") : dim
        let (q, tq) = try linear(f, name, "to_q", in: dim, lora: lora)
        let (k, tk) = try linear(f, name, "to_k", in: ctxDim, lora: lora)
        let (v, tv) = try linear(f, name, "to_v", in: ctxDim, lora: lora)
        let (o, to) = try linear(f, name, "to_out.0", in: heads * dh, lora: lora)
        let attn = try Attention(toQ: q, toK: k, toV: v, toOut: o, heads: heads)
        #expect(attn.headDim == dh)
        let x = try f.input(name)
        let xm = try Matrix(rows: x.count / dim, cols: dim, data: x)
        var cm: Matrix?
        if cross {
            let c = try f.input(name, "context")
            cm = try Matrix(rows: c.count / ctxDim, cols: ctxDim, data: c)
        }
        expectClose(try attn.forward(xm, context: cm).data, try f.output(name), "\(name) y")
        let gy = try Matrix(rows: xm.rows, cols: dim, data: try f.upstream(name))
        let (gx, gc) = try attn.backward(gradOutput: gy, input: xm, context: cm)
        expectClose(gx.data, try f.grad(name), "\(name) grad x")
        if cross {
            expectClose(gc?.data ?? [], try f.grad(name, "context"), "\(name) grad context")
        } else {
            #expect(gc == nil)
        }
        for (p, t) in [("to_q", tq), ("to_k", tk), ("to_v", tv), ("to_out.0", to)] {
            guard let t else { continue }
            expectClose(t.gradDown, try f.grad(name, p + ".lora.down"), "\(name) grad \(p).lora.down")
            expectClose(t.gradUp, try f.grad(name, p + ".lora.up"), "\(name) grad \(p).lora.up")
        }
        // Without the context gradient, the terms' gradients are the same (accumulated once more).
        if cross, let tk {
            let before = tk.gradUp
            tk.zeroGradients()
            let (gx2, gc2) = try attn.backward(gradOutput: gy, input: xm, context: cm, contextGradient: false)
            #expect(gc2 == nil && gx2 == gx)
            #expect(relativeError(tk.gradUp, before) <= 1e-6)
        }
    }

    @Test func selfAttention() throws { try check("attn_self", cross: false) }
    @Test func crossAttention() throws { try check("attn_cross", cross: true) }
    @Test func crossAttentionLoRA() throws {
        let f = try KernelFixtures.load()
        let rank = try f.config("attn_cross_lora", "rank", in: "lora")
        try check("attn_cross_lora", cross: true, lora: (rank, Float(try f.configDouble("attn_cross_lora", "lora", "alpha"))))
    }

    /// Many queries (several 128-row chunks), more heads than cores, causal and not: the
    /// gradients satisfy the adjoint identity of the linearisation, checked with a central
    /// difference of the binary32 forward in binary64 sums along a random direction.
    @Test(arguments: [false, true])
    func chunkedAttentionAgainstDirectionalDerivative(causal: Bool) throws {
        var rng = TestRandom(seed: causal ? 11 : 12)
        let (lq, lk, heads, d) = (300, causal ? 300 : 37, 3, 4)
        let w = heads * d
        let q = try Matrix(rows: lq, cols: w, data: rng.values(lq * w)), k = try Matrix(rows: lk, cols: w, data: rng.values(lk * w))
        let v = try Matrix(rows: lk, cols: w, data: rng.values(lk * w)), go = try Matrix(rows: lq, cols: w, data: rng.values(lq * w))
        let (dq, dk, dv, o) = try ScaledDotProductAttention.backward(gradOutput: go, q: q, k: k, v: v, heads: heads, causal: causal, output: true)
        // The output recomputed inside the backward is the forward's.
        #expect(o?.data == (try ScaledDotProductAttention.forward(q: q, k: k, v: v, heads: heads, causal: causal)).data)
        let plain = try ScaledDotProductAttention.backward(gradOutput: go, q: q, k: k, v: v, heads: heads, causal: causal)
        #expect(plain.q == dq && plain.k == dk && plain.v == dv)
        let (uq, uk, uv) = (rng.values(lq * w), rng.values(lk * w), rng.values(lk * w))
        func loss(_ t: Float) throws -> Double {
            func shift(_ m: Matrix, _ u: [Float]) throws -> Matrix { try Matrix(rows: m.rows, cols: m.cols, data: zip(m.data, u).map { $0 + t * $1 }) }
            let o = try ScaledDotProductAttention.forward(q: try shift(q, uq), k: try shift(k, uk), v: try shift(v, uv), heads: heads, causal: causal)
            return zip(o.data, go.data).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        let h: Float = 1e-2
        let numeric = (try loss(h) - loss(-h)) / Double(2 * h)
        var analytic: Double = 0
        for (g, u) in [(dq.data, uq), (dk.data, uk), (dv.data, uv)] { for (a, b) in zip(g, u) { analytic += Double(a) * Double(b) } }
        print("attention (causal: \(causal)) directional derivative: analytic \(analytic), central difference \(numeric)")
        #expect(abs(analytic - numeric) <= 2e-3 * max(1, abs(analytic)))
        if causal {
            // The last key is seen only by the last query.
            let o1 = try ScaledDotProductAttention.forward(q: q, k: k, v: v, heads: heads, causal: true)
            var v2 = v
            for j in 0..<w { v2.data[(lk - 1) * w + j] += 1 }
            let o2 = try ScaledDotProductAttention.forward(q: q, k: k, v: v2, heads: heads, causal: true)
            #expect(Array(o1.data[0..<((lq - 1) * w)]) == Array(o2.data[0..<((lq - 1) * w)]))
        }
    }

    @Test func clipTextTransformer() throws {
        let f = try KernelFixtures.load(), name = "clip_text"
        let hidden = try f.config(name, "hidden"), heads = try f.config(name, "heads"), layers = try f.config(name, "layers")
        let eps = Float(try f.configDouble(name, "eps"))
        #expect(try f.entry(name)["config"]?["act"] == .string("quick_gelu"))
        func ln(_ p: String) throws -> LayerNorm {
            try LayerNorm(channels: hidden, eps: eps, weight: try f.param(name, p + ".weight"), bias: try f.param(name, p + ".bias"))
        }
        var blocks: [CLIPEncoderLayer] = []
        for i in 0..<layers {
            let p = "encoder.layers.\(i)."
            func lin(_ n: String, in inDim: Int) throws -> Linear { try linear(f, name, p + n, in: inDim).0 }
            let attn = try Attention(toQ: try lin("self_attn.q_proj", in: hidden), toK: try lin("self_attn.k_proj", in: hidden),
                                     toV: try lin("self_attn.v_proj", in: hidden), toOut: try lin("self_attn.out_proj", in: hidden),
                                     heads: heads, causal: true)
            let fc1 = try lin("mlp.fc1", in: hidden)
            blocks.append(try CLIPEncoderLayer(layerNorm1: try ln(p + "layer_norm1"), selfAttention: attn, layerNorm2: try ln(p + "layer_norm2"),
                                               fc1: fc1, fc2: try lin("mlp.fc2", in: fc1.outFeatures), activation: .quickGELU))
        }
        let final = try ln("final_layer_norm")
        let x = try f.input(name)
        let xm = try Matrix(rows: x.count / hidden, cols: hidden, data: x)
        // Forward, keeping each layer's input (what a checkpointed backward stores).
        var inputs: [Matrix] = []
        var h = xm
        for b in blocks { inputs.append(h); h = try b.forward(h) }
        expectClose(try final.forward(h).data, try f.output(name), "clip_text y")
        var g = try final.backward(gradOutput: try Matrix(rows: xm.rows, cols: hidden, data: try f.upstream(name)), input: h)
        for (b, input) in zip(blocks, inputs).reversed() { g = try b.backward(gradOutput: g, input: input) }
        expectClose(g.data, try f.grad(name), "clip_text grad x")
    }
}
