import Checkpoint
import TensorFile

/// Weights of a base, read as f32 on demand (each tensor converted once from the base's dtype).
public final class WeightLoader {
    public let base: BaseModel
    public init(base: BaseModel) { self.base = base }

    public func f32(_ name: String) throws(TensorFileError) -> [Float] {
        guard let e = base.file.entry(name) else { throw TensorFileError(file: base.file.path, tensor: name, .tensorNotFound) }
        guard DTypeConversion.canConvert(from: e.info.dtype, to: .F32) else {
            throw TensorFileError(file: base.file.path, tensor: name, .unsupportedConversion(from: e.info.dtype.name, to: "F32"))
        }
        let b = try base.file.tensorBytes(name)
        var out = [Float](repeating: 0, count: e.info.elementCount)
        out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: e.info.dtype, into: $0, to: .F32, count: e.info.elementCount) }
        return out
    }

    public func shape(_ name: String) -> [Int]? { base.file.entry(name)?.info.shape }
}

/// transformers' `CLIPTextModel` forward pass (SD 1.x: CLIP ViT-L, quick_gelu; SD 2.x: OpenCLIP
/// ViT-H's first 23 layers, gelu), configured from the base's `text_encoder` config. Returns the
/// last hidden state after the final layer norm, `[77 × hidden]` per prompt.
public final class CLIPTextEncoder {
    struct Layer {
        var ln1w: [Float], ln1b: [Float], ln2w: [Float], ln2b: [Float]
        var qw: [Float], qb: [Float], kw: [Float], kb: [Float], vw: [Float], vb: [Float], ow: [Float], ob: [Float]
        var fc1w: [Float], fc1b: [Float], fc2w: [Float], fc2b: [Float]
    }

    public let hidden: Int, heads: Int, intermediate: Int, maxPositions: Int, vocab: Int
    public let activation: String
    public let eps: Float
    let tokenEmbedding: [Float], positionEmbedding: [Float]
    let layers: [Layer]
    let finalW: [Float], finalB: [Float]

    public init(base: BaseModel) throws(TensorFileError) {
        guard let c = base.config("text_encoder") else { throw TensorFileError(file: base.file.path, .missingField("components.text_encoder.config")) }
        func int(_ k: String) throws(TensorFileError) -> Int {
            guard let v = c[k]?.int64Value else { throw TensorFileError(file: base.file.path, .missingField("text_encoder.config.\(k)")) }
            return Int(v)
        }
        hidden = try int("hidden_size")
        heads = try int("num_attention_heads")
        intermediate = try int("intermediate_size")
        maxPositions = try int("max_position_embeddings")
        vocab = try int("vocab_size")
        let n = try int("num_hidden_layers")
        activation = c["hidden_act"]?.stringValue ?? "quick_gelu"
        eps = Float(c["layer_norm_eps"]?.doubleValue ?? 1e-5)
        guard hidden % heads == 0 else { throw TensorFileError(file: base.file.path, .invalidArgument("hidden_size \(hidden) is not a multiple of \(heads) heads")) }
        let w = WeightLoader(base: base)
        let p = "text_encoder.text_model."
        tokenEmbedding = try w.f32(p + "embeddings.token_embedding.weight")
        positionEmbedding = try w.f32(p + "embeddings.position_embedding.weight")
        var ls: [Layer] = []
        for i in 0..<n {
            let l = p + "encoder.layers.\(i)."
            ls.append(Layer(ln1w: try w.f32(l + "layer_norm1.weight"), ln1b: try w.f32(l + "layer_norm1.bias"),
                            ln2w: try w.f32(l + "layer_norm2.weight"), ln2b: try w.f32(l + "layer_norm2.bias"),
                            qw: try w.f32(l + "self_attn.q_proj.weight"), qb: try w.f32(l + "self_attn.q_proj.bias"),
                            kw: try w.f32(l + "self_attn.k_proj.weight"), kb: try w.f32(l + "self_attn.k_proj.bias"),
                            vw: try w.f32(l + "self_attn.v_proj.weight"), vb: try w.f32(l + "self_attn.v_proj.bias"),
                            ow: try w.f32(l + "self_attn.out_proj.weight"), ob: try w.f32(l + "self_attn.out_proj.bias"),
                            fc1w: try w.f32(l + "mlp.fc1.weight"), fc1b: try w.f32(l + "mlp.fc1.bias"),
                            fc2w: try w.f32(l + "mlp.fc2.weight"), fc2b: try w.f32(l + "mlp.fc2.bias")))
        }
        layers = ls
        finalW = try w.f32(p + "final_layer_norm.weight")
        finalB = try w.f32(p + "final_layer_norm.bias")
        guard tokenEmbedding.count == vocab * hidden, positionEmbedding.count == maxPositions * hidden else {
            throw TensorFileError(file: base.file.path, .invalidArgument("text encoder embeddings do not match its config"))
        }
    }

    /// Encodes one sequence of token ids (at most `max_position_embeddings`).
    /// `hiddenLayer` −1 is the last layer (after the final layer norm, what SD uses); other values
    /// return that layer's output without the final norm (`hidden_states[k]` in transformers).
    public func encode(_ ids: [Int], hiddenState: Int? = nil) throws(TensorFileError) -> [Float] {
        let n = ids.count
        guard n <= maxPositions else { throw TensorFileError(file: "text encoder", .invalidArgument("\(n) tokens, at most \(maxPositions)")) }
        var x = [Float](repeating: 0, count: n * hidden)
        for (t, id) in ids.enumerated() {
            guard id >= 0 && id < vocab else { throw TensorFileError(file: "text encoder", .invalidArgument("token id \(id) outside the vocabulary (\(vocab))")) }
            for j in 0..<hidden { x[t * hidden + j] = tokenEmbedding[id * hidden + j] + positionEmbedding[t * hidden + j] }
        }
        for (i, l) in layers.enumerated() {
            if let k = hiddenState, k == i { return x }
            var h = Ops.layerNorm(x, rows: n, channels: hidden, weight: l.ln1w, bias: l.ln1b, eps: eps)
            let q = Ops.linear(h, rows: n, in: hidden, weight: l.qw, bias: l.qb, out: hidden)
            let k = Ops.linear(h, rows: n, in: hidden, weight: l.kw, bias: l.kb, out: hidden)
            let v = Ops.linear(h, rows: n, in: hidden, weight: l.vw, bias: l.vb, out: hidden)
            let a = Ops.attention(q: q, k: k, v: v, queries: n, keys: n, heads: heads, headDim: hidden / heads, causal: true)
            let o = Ops.linear(a, rows: n, in: hidden, weight: l.ow, bias: l.ob, out: hidden)
            for j in x.indices { x[j] += o[j] }
            h = Ops.layerNorm(x, rows: n, channels: hidden, weight: l.ln2w, bias: l.ln2b, eps: eps)
            var m = Ops.linear(h, rows: n, in: hidden, weight: l.fc1w, bias: l.fc1b, out: intermediate)
            switch activation {
            case "gelu": Ops.gelu(&m)
            case "gelu_new", "gelu_pytorch_tanh": Ops.geluTanh(&m)
            default: Ops.quickGELU(&m)
            }
            let f = Ops.linear(m, rows: n, in: intermediate, weight: l.fc2w, bias: l.fc2b, out: hidden)
            for j in x.indices { x[j] += f[j] }
        }
        if let k = hiddenState, k == layers.count { return x }
        return Ops.layerNorm(x, rows: n, channels: hidden, weight: finalW, bias: finalB, eps: eps)
    }
}
