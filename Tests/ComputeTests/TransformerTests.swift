import Foundation
import Testing
@testable import Compute
import TensorFile

/// diffusers `Transformer2DModel` (one `BasicTransformerBlock`) with convolution and linear
/// projections, with and without LoRA terms on the eight attention projections, against PyTorch
/// autograd (converters/fixtures/make_compute_fixtures.py): output, gradients at the input and at
/// the text context, and every LoRA factor's gradient.
@Suite struct TransformerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

    struct Case {
        let file: SafetensorsFile
        let name: String
        let config: JSONValue
        func t(_ key: String) throws -> [Float] {
            let n = name + "." + key
            guard let e = file.entry(n), e.info.dtype == .F32 else { throw FixtureError("no F32 tensor \(n) in transformer.safetensors") }
            let b = try file.tensorBytes(n)
            var out = [Float](repeating: 0, count: e.info.elementCount)
            out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: .F32, into: $0, to: .F32, count: e.info.elementCount) }
            return out
        }
        func int(_ key: String) throws -> Int {
            guard let v = config[key]?.int64Value else { throw FixtureError("\(name): no config \(key)") }
            return Int(v)
        }
        func has(_ key: String) -> Bool { file.entry(name + "." + key) != nil }
    }

    func check(_ name: String) throws {
        let file = try SafetensorsFile(path: Self.root + "/transformer.safetensors")
        let manifest = try JSONValue.parse([UInt8](Data(contentsOf: URL(fileURLWithPath: Self.root + "/transformer.json"))))
        guard let config = manifest["cases"]?.arrayValue?.first(where: { $0["name"] == .string(name) })?["config"] else {
            throw FixtureError("no case \(name) in transformer.json")
        }
        let f = Case(file: file, name: name, config: config)
        let (c, heads, d, ctx, h, w) = (try f.int("channels"), try f.int("heads"), try f.int("dim_head"), try f.int("cross_attention_dim"),
                                        try f.int("height"), try f.int("width"))
        let lora = config["lora"]
        let rank = Int(lora?["rank"]?.int64Value ?? 0), alpha = Float(lora?["alpha"]?.doubleValue ?? 0)
        var terms: [String: LowRankTerm] = [:]
        func linear(_ p: String, in inDim: Int) throws -> Linear {
            let loraHere = f.has("param." + p + ".lora.down")
            let base = loraHere ? p + ".base" : p
            let wgt = try f.t("param." + base + ".weight")
            var l = try Linear(weight: wgt, bias: f.has("param." + base + ".bias") ? try f.t("param." + base + ".bias") : nil,
                               out: wgt.count / inDim, in: inDim)
            if loraHere {
                let t = try LowRankTerm.lora(down: try f.t("param." + p + ".lora.down"), up: try f.t("param." + p + ".lora.up"),
                                             out: l.outFeatures, in: inDim, rank: rank, alpha: alpha)
                try l.attach(t)
                terms[p] = t
            }
            return l
        }
        func ln(_ p: String) throws -> LayerNorm {
            try LayerNorm(channels: c, eps: 1e-5, weight: try f.t("param." + p + ".weight"), bias: try f.t("param." + p + ".bias"))
        }
        let b = "transformer_blocks.0."
        func attention(_ a: String, context inDim: Int) throws -> Attention {
            try Attention(toQ: try linear(b + a + ".to_q", in: c), toK: try linear(b + a + ".to_k", in: inDim),
                          toV: try linear(b + a + ".to_v", in: inDim), toOut: try linear(b + a + ".to_out.0", in: heads * d), heads: heads)
        }
        let inner = try f.int("ff_inner")
        let block = try BasicTransformerBlock(norm1: try ln(b + "norm1"), attn1: try attention("attn1", context: c), norm2: try ln(b + "norm2"),
                                              attn2: try attention("attn2", context: ctx), norm3: try ln(b + "norm3"),
                                              ff: try GEGLU(proj: try linear(b + "ff.net.0.proj", in: c)), ffOut: try linear(b + "ff.net.2", in: inner))
        let model = try Transformer2D(norm: try GroupNorm(groups: try f.int("groups"), channels: c, eps: 1e-6, weight: try f.t("param.norm.weight"),
                                                          bias: try f.t("param.norm.bias")),
                                      projIn: try linear("proj_in", in: c), blocks: [block], projOut: try linear("proj_out", in: c))
        let x = try FeatureMap(c: c, h: h, w: w, data: try f.t("x"))
        let context = try Matrix(rows: try f.int("context_tokens"), cols: ctx, data: try f.t("context"))
        let y = try model.forward(x, context: context)
        expectClose(y.data, try f.t("y"), "transformer \(name) y")
        let gy = try FeatureMap(c: c, h: h, w: w, data: try f.t("gy"))
        let (gx, gc) = try model.backward(gradOutput: gy, input: x, context: context)
        expectClose(gx.data, try f.t("grad.x"), "transformer \(name) grad x")
        expectClose(gc?.data ?? [], try f.t("grad.context"), "transformer \(name) grad context")
        #expect(terms.count == (lora == nil ? 0 : 8))
        for (p, t) in terms.sorted(by: { $0.key < $1.key }) {
            expectClose(t.gradDown, try f.t("grad." + p + ".lora.down"), "transformer \(name) grad \(p).lora.down")
            expectClose(t.gradUp, try f.t("grad." + p + ".lora.up"), "transformer \(name) grad \(p).lora.up")
        }
        // A training forward keeps the blocks' states (the UNet's backward uses them): the same
        // output, and the backward from them, recomputing no attention forward, matches PyTorch too.
        for t in terms.values { t.zeroGradients() }
        let kept = try model.forwardKeeping(x, context: context)
        #expect(kept.output.data == y.data)
        #expect(kept.saved.blocks.count == 1 && (kept.saved.blocks[0].attended1 != nil) == (lora != nil))
        let (kx, kc) = try model.backward(gradOutput: gy, input: x, context: context, contextGradient: true, saved: kept.saved)
        expectClose(kx.data, try f.t("grad.x"), "transformer \(name) grad x from kept states")
        expectClose(kc?.data ?? [], try f.t("grad.context"), "transformer \(name) grad context from kept states")
        for (p, t) in terms.sorted(by: { $0.key < $1.key }) {
            expectClose(t.gradDown, try f.t("grad." + p + ".lora.down"), "transformer \(name) grad \(p).lora.down from kept states")
            expectClose(t.gradUp, try f.t("grad." + p + ".lora.up"), "transformer \(name) grad \(p).lora.up from kept states")
        }
    }

    @Test func convolutionProjections() throws { try check("conv") }
    @Test func linearProjections() throws { try check("linear") }
    @Test func convolutionProjectionsWithLoRA() throws { try check("conv_lora") }
    @Test func linearProjectionsWithLoRA() throws { try check("linear_lora") }
}
