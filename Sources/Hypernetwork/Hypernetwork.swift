import Compute
import Crypto
import SubjectDelta
import TensorFile

/// What the hypernetwork predicts for one target layer: LiDB factors in the orientation of
/// spec/subject.md (`down_train` `[rank, a]`, `up_train` `[b, rank]`, row-major).
public struct LayerPrediction: Sendable, Equatable {
    public var target: TargetLayer
    public var rank: Int, a: Int, b: Int
    public var downTrain: [Float]
    public var upTrain: [Float]
}

/// The HyperDreamBooth hypernetwork (spec/hypernetwork.md): a ViT image encoder, a transformer
/// weight decoder refining one token per target layer over k iterations from zero, and per-layer
/// linear heads to `down_train`/`up_train`. Weights are read once as f32.
public final class Hypernetwork {
    public let path: String
    public let config: HypernetworkConfig
    /// SHA-256 (hex) of the file's stored header, which holds the config and every tensor's CRC-32C.
    public let fingerprint: String

    /// A pre-norm ViT / CLIP-vision layer: `x += attention(norm1(x))`, `x += fc2(act(fc1(norm2(x))))`.
    struct EncoderLayer: Sendable {
        var norm1: LayerNorm, attention: Attention, norm2: LayerNorm, fc1: Linear, fc2: Linear
    }
    /// A `TransformerDecoderLayer` with `norm_first`: self-attention among the weight tokens,
    /// cross-attention to the image tokens, a GELU MLP.
    struct DecoderLayer: Sendable {
        var norm1: LayerNorm, selfAttention: Attention, norm2: LayerNorm, crossAttention: Attention
        var norm3: LayerNorm, linear1: Linear, linear2: Linear
    }

    // Encoder
    let patchEmbedding: Linear, classToken: [Float], positions: Matrix, activation: Activation
    let preNorm: LayerNorm?, finalNorm: LayerNorm
    let encoderLayers: [EncoderLayer]
    // Decoder
    let imageProj: Linear, weightIn: Linear, weightPos: Matrix
    let decoderLayers: [DecoderLayer]
    let decoderNorm: LayerNorm
    let heads: [Linear]

    public convenience init(path: String) throws(HypernetworkError) {
        let file: LidbFile
        do throws(TensorFileError) { file = try LidbFile(path: path) } catch { throw HypernetworkError(file: path, .file(error)) }
        try self.init(file: file)
    }

    /// Validates the file's config and tensor table against each other, then reads the weights.
    public init(file: LidbFile) throws(HypernetworkError) {
        path = file.path
        guard file.kind == "hypernetwork" else { throw HypernetworkError(file: path, .wrongKind(file.kind)) }
        let cfg = try HypernetworkConfig(json: file.metadata, file: path)
        config = cfg
        try cfg.check(tensors: file.tensors, file: path)
        let header = UnsafeRawBufferPointer(rebasing: file.map.bytes[64..<(64 + Int(file.layout.headerStoredLength))])
        let digits = Array("0123456789abcdef")
        fingerprint = String(SHA256.hash(data: header).flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })

        let p = path
        func f32(_ name: String) throws(HypernetworkError) -> [Float] {
            do throws(TensorFileError) {
                guard let e = file.entry(name) else { throw TensorFileError(file: p, tensor: name, .tensorNotFound) }
                let b = try file.tensorBytes(name)
                var out = [Float](repeating: 0, count: e.info.elementCount)
                out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: e.info.dtype, into: $0, to: .F32, count: e.info.elementCount) }
                b.releasePages()
                return out
            } catch { throw HypernetworkError(file: p, .file(error)) }
        }
        /// The typed layers refuse inconsistent sizes (which the config check has ruled out).
        func layer<T>(_ build: () throws(ComputeError) -> T) throws(HypernetworkError) -> T {
            do throws(ComputeError) { return try build() } catch { throw HypernetworkError(file: p, .compute(error.message)) }
        }
        func linear(_ name: String, out: Int, in inDim: Int, bias: Bool = true) throws(HypernetworkError) -> Linear {
            let w = try f32(name + ".weight"), b = bias ? try f32(name + ".bias") : nil
            return try layer { () throws(ComputeError) in try Linear(weight: w, bias: b, out: out, in: inDim) }
        }
        func norm(_ name: String, channels: Int, eps: Float) throws(HypernetworkError) -> LayerNorm {
            let w = try f32(name + ".weight"), b = try f32(name + ".bias")
            return try layer { () throws(ComputeError) in try LayerNorm(channels: channels, eps: eps, weight: w, bias: b) }
        }
        /// `nn.MultiheadAttention`: q, k, v packed in `in_proj_weight` `[3D, D]` (rows q, k, v).
        func packedAttention(_ name: String, width D: Int, heads: Int) throws(HypernetworkError) -> Attention {
            let w = try f32(name + ".in_proj_weight"), b = try f32(name + ".in_proj_bias")
            let out = try linear(name + ".out_proj", out: D, in: D)
            return try layer { () throws(ComputeError) in
                guard w.count == 3 * D * D, b.count == 3 * D else { throw ComputeError("\(name): in_proj for width \(D)") }
                func part(_ i: Int) throws(ComputeError) -> Linear {
                    try Linear(weight: Array(w[(i * D * D)..<((i + 1) * D * D)]), bias: Array(b[(i * D)..<((i + 1) * D)]), out: D, in: D)
                }
                return try Attention(toQ: part(0), toK: part(1), toV: part(2), toOut: out, heads: heads)
            }
        }
        let e = cfg.encoder, ie = "image_encoder.", W = e.hiddenSize, I = e.intermediateSize
        /// One pre-norm encoder layer; the two encoder types differ only in the names.
        func encoderLayer(_ l: String, ln1: String, ln2: String, attention a: String, out: String) throws(HypernetworkError) -> EncoderLayer {
            let q = try linear(l + a + "q_proj", out: W, in: W), k = try linear(l + a + "k_proj", out: W, in: W)
            let v = try linear(l + a + "v_proj", out: W, in: W), o = try linear(l + a + out, out: W, in: W)
            return EncoderLayer(
                norm1: try norm(l + ln1, channels: W, eps: e.eps),
                attention: try layer { () throws(ComputeError) in try Attention(toQ: q, toK: k, toV: v, toOut: o, heads: e.heads) },
                norm2: try norm(l + ln2, channels: W, eps: e.eps),
                fc1: try linear(l + "mlp.fc1", out: I, in: W), fc2: try linear(l + "mlp.fc2", out: W, in: I))
        }
        guard let act = Activation(configName: e.activation) else {
            throw HypernetworkError(file: path, .invalidConfig(field: "encoder.hidden_act", reason: "'\(e.activation)' has no kernel"))
        }
        activation = act
        let patchIn = 3 * e.patchSize * e.patchSize
        let positionNames: String
        var layers: [EncoderLayer] = []
        switch e.type {
        case .clipVision:
            patchEmbedding = try linear(ie + "embeddings.patch_embedding", out: W, in: patchIn, bias: false)
            classToken = try f32(ie + "embeddings.class_embedding")
            positionNames = ie + "embeddings.position_embedding.weight"
            preNorm = try norm(ie + "pre_layrnorm", channels: W, eps: e.eps)
            finalNorm = try norm(ie + "post_layernorm", channels: W, eps: e.eps)
            for i in 0..<e.layers {
                layers.append(try encoderLayer(ie + "encoder.layers.\(i).", ln1: "layer_norm1", ln2: "layer_norm2", attention: "self_attn.", out: "out_proj"))
            }
        case .vit:
            patchEmbedding = try linear(ie + "embeddings.patch_embeddings.projection", out: W, in: patchIn)
            classToken = try f32(ie + "embeddings.cls_token")
            positionNames = ie + "embeddings.position_embeddings"
            preNorm = nil
            finalNorm = try norm(ie + "layernorm", channels: W, eps: e.eps)
            for i in 0..<e.layers {
                layers.append(try encoderLayer(ie + "layers.\(i).", ln1: "layernorm_before", ln2: "layernorm_after", attention: "attention.", out: "o_proj"))
            }
        }
        let pos = try f32(positionNames), S = e.sequence
        positions = try layer { () throws(ComputeError) in try Matrix(rows: S, cols: W, data: pos) }
        encoderLayers = layers
        let dec = cfg.decoder, D = dec.hiddenSize, F = dec.intermediateSize, L = cfg.layers.count
        imageProj = try linear("image_proj", out: D, in: W)
        weightIn = try linear("weight_in", out: D, in: cfg.paddedSize)
        let wp = try f32("weight_pos")
        weightPos = try layer { () throws(ComputeError) in try Matrix(rows: L, cols: D, data: wp) }
        var dl: [DecoderLayer] = []
        for j in 0..<dec.layers {
            let l = "decoder.layers.\(j)."
            dl.append(DecoderLayer(
                norm1: try norm(l + "norm1", channels: D, eps: dec.eps),
                selfAttention: try packedAttention(l + "self_attn", width: D, heads: dec.heads),
                norm2: try norm(l + "norm2", channels: D, eps: dec.eps),
                crossAttention: try packedAttention(l + "multihead_attn", width: D, heads: dec.heads),
                norm3: try norm(l + "norm3", channels: D, eps: dec.eps),
                linear1: try linear(l + "linear1", out: F, in: D), linear2: try linear(l + "linear2", out: D, in: F)))
        }
        decoderLayers = dl
        decoderNorm = try norm("decoder.norm", channels: D, eps: dec.eps)
        var hs: [Linear] = []
        for i in 0..<L {
            let (_, _, nd, nu) = cfg.layerDims[i]
            hs.append(try linear("heads.\(i)", out: nd + nu, in: D))
        }
        heads = hs
    }

    /// The image tokens the decoder attends to, `[tokens × encoder width]`, from preprocessed
    /// pixel values (CHW, `3 × image_size × image_size`).
    public func features(pixels: [Float]) throws(HypernetworkError) -> [Float] {
        let e = config.encoder, W = e.hiddenSize, S = e.sequence, p = e.patchSize, side = e.patchesPerSide, n = e.imageSize
        guard pixels.count == 3 * n * n else {
            throw HypernetworkError(file: path, .invalidInput("pixel values: \(pixels.count) values, the encoder takes 3 × \(n) × \(n) = \(3 * n * n)"))
        }
        guard pixels.allSatisfy({ $0.isFinite }) else { throw HypernetworkError(file: path, .invalidInput("pixel values must be finite")) }
        // Patch embedding as one GEMM: rows are patches, columns (channel, y, x) as the conv weight.
        let K = 3 * p * p
        var patches = [Float](repeating: 0, count: (S - 1) * K)
        for py in 0..<side { for px in 0..<side {
            let row = (py * side + px) * K
            for c in 0..<3 { for ky in 0..<p { for kx in 0..<p {
                patches[row + (c * p + ky) * p + kx] = pixels[c * n * n + (py * p + ky) * n + px * p + kx]
            } } }
        } }
        let h: Matrix
        do throws(ComputeError) {
            let embedded = try patchEmbedding.forward(try Matrix(rows: S - 1, cols: K, data: patches))
            var x = try Matrix(rows: S, cols: W, data: classToken + embedded.data)
            try x.add(positions)
            if let preNorm { x = try preNorm.forward(x) }
            for layer in encoderLayers {
                try x.add(try layer.attention.forward(try layer.norm1.forward(x)))
                var m = try layer.fc1.forward(try layer.norm2.forward(x))
                activation.apply(&m.data)
                try x.add(try layer.fc2.forward(m))
            }
            h = try finalNorm.forward(x)
        } catch { throw HypernetworkError(file: path, .compute(error.message)) }
        switch e.tokens {
        case .all: return h.data
        case .class: return Array(h.data[0..<W])
        case .patch: return Array(h.data[W...])
        }
    }

    /// Runs the encoder and the k decoder iterations; returns one prediction per target layer,
    /// in table order.
    public func predict(pixels: [Float]) throws(HypernetworkError) -> [LayerPrediction] {
        let feats = try features(pixels: pixels)
        do throws(ComputeError) { return try decode(features: feats) } catch { throw HypernetworkError(file: path, .compute(error.message)) }
    }

    /// The weight decoder on given image tokens.
    func decode(features: [Float]) throws(ComputeError) -> [LayerPrediction] {
        let c = config, dec = c.decoder, T = c.encoder.outputTokens, W = c.encoder.hiddenSize
        let L = c.layers.count, r = c.subject.rank
        let dims = c.layerDims, padded = c.paddedSize, A = c.subject.a
        let memory = try imageProj.forward(try Matrix(rows: T, cols: W, data: features))
        // Cross-attention keys and values depend only on the image: once per decoder layer.
        var keys: [Matrix] = [], values: [Matrix] = []
        for layer in decoderLayers {
            keys.append(try layer.crossAttention.toK.forward(memory))
            values.append(try layer.crossAttention.toV.forward(memory))
        }
        var downs = dims.map { [Float](repeating: 0, count: $0.down) }, ups = dims.map { [Float](repeating: 0, count: $0.up) }
        var pad = try Matrix(zeros: L, cols: padded)
        for _ in 0..<dec.iterations {
            // Current estimates, padded: down_train [r, a'] → [r, a], up_train [b', r] → [b, r].
            for i in 0..<L {
                let base = i * padded, (ai, bi, _, _) = dims[i]
                for k in 0..<padded { pad.data[base + k] = 0 }
                for row in 0..<r { for col in 0..<ai { pad.data[base + row * A + col] = downs[i][row * ai + col] } }
                for row in 0..<bi { for col in 0..<r { pad.data[base + r * A + row * r + col] = ups[i][row * r + col] } }
            }
            var x = try weightIn.forward(pad)
            try x.add(weightPos)
            for (j, layer) in decoderLayers.enumerated() {
                try x.add(try layer.selfAttention.forward(try layer.norm1.forward(x)))
                let ca = layer.crossAttention
                let q = try ca.toQ.forward(try layer.norm2.forward(x))
                try x.add(try ca.toOut.forward(try ScaledDotProductAttention.forward(q: q, k: keys[j], v: values[j], heads: ca.heads)))
                var m = try layer.linear1.forward(try layer.norm3.forward(x))
                Activation.gelu.apply(&m.data)
                try x.add(try layer.linear2.forward(m))
            }
            let h = try decoderNorm.forward(x)
            let D = h.cols
            for i in 0..<L {
                let (_, _, nd, nu) = dims[i]
                let delta = try heads[i].forward(try Matrix(rows: 1, cols: D, data: Array(h.data[(i * D)..<((i + 1) * D)])))
                for k in 0..<nd { downs[i][k] += delta.data[k] }
                for k in 0..<nu { ups[i][k] += delta.data[nd + k] }
            }
        }
        return (0..<L).map { i in
            LayerPrediction(target: c.layers[i], rank: r, a: dims[i].a, b: dims[i].b, downTrain: downs[i], upTrain: ups[i])
        }
    }
}
