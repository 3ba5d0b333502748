import Crypto
import Diffusion
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

    struct EncoderLayer {
        var ln1w: [Float], ln1b: [Float], wqkv: [Float], bqkv: [Float], wo: [Float], bo: [Float]
        var ln2w: [Float], ln2b: [Float], w1: [Float], b1: [Float], w2: [Float], b2: [Float]
    }
    struct DecoderLayer {
        var saW: [Float], saB: [Float], saOW: [Float], saOB: [Float]
        var caWq: [Float], caBq: [Float], caWkv: [Float], caBkv: [Float], caOW: [Float], caOB: [Float]
        var l1W: [Float], l1B: [Float], l2W: [Float], l2B: [Float]
        var n1W: [Float], n1B: [Float], n2W: [Float], n2B: [Float], n3W: [Float], n3B: [Float]
    }

    // Encoder
    let patchW: [Float], patchB: [Float]?, classToken: [Float], positions: [Float]
    let preNorm: (w: [Float], b: [Float])?, finalNorm: (w: [Float], b: [Float])
    let encoderLayers: [EncoderLayer]
    // Decoder
    let imageProjW: [Float], imageProjB: [Float], weightInW: [Float], weightInB: [Float], weightPos: [Float]
    let decoderLayers: [DecoderLayer]
    let decoderNorm: (w: [Float], b: [Float])
    let heads: [(w: [Float], b: [Float])]

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
        /// One pre-norm encoder layer; the two encoder types differ only in the names.
        func encoderLayer(_ l: String, ln1: String, ln2: String, attention a: String, out: String) throws(HypernetworkError) -> EncoderLayer {
            EncoderLayer(
                ln1w: try f32(l + ln1 + ".weight"), ln1b: try f32(l + ln1 + ".bias"),
                wqkv: try f32(l + a + "q_proj.weight") + f32(l + a + "k_proj.weight") + f32(l + a + "v_proj.weight"),
                bqkv: try f32(l + a + "q_proj.bias") + f32(l + a + "k_proj.bias") + f32(l + a + "v_proj.bias"),
                wo: try f32(l + a + out + ".weight"), bo: try f32(l + a + out + ".bias"),
                ln2w: try f32(l + ln2 + ".weight"), ln2b: try f32(l + ln2 + ".bias"),
                w1: try f32(l + "mlp.fc1.weight"), b1: try f32(l + "mlp.fc1.bias"), w2: try f32(l + "mlp.fc2.weight"), b2: try f32(l + "mlp.fc2.bias"))
        }
        let e = cfg.encoder, ie = "image_encoder."
        var layers: [EncoderLayer] = []
        switch e.type {
        case .clipVision:
            patchW = try f32(ie + "embeddings.patch_embedding.weight")
            patchB = nil
            classToken = try f32(ie + "embeddings.class_embedding")
            positions = try f32(ie + "embeddings.position_embedding.weight")
            preNorm = (try f32(ie + "pre_layrnorm.weight"), try f32(ie + "pre_layrnorm.bias"))
            finalNorm = (try f32(ie + "post_layernorm.weight"), try f32(ie + "post_layernorm.bias"))
            for i in 0..<e.layers {
                layers.append(try encoderLayer(ie + "encoder.layers.\(i).", ln1: "layer_norm1", ln2: "layer_norm2", attention: "self_attn.", out: "out_proj"))
            }
        case .vit:
            patchW = try f32(ie + "embeddings.patch_embeddings.projection.weight")
            patchB = try f32(ie + "embeddings.patch_embeddings.projection.bias")
            classToken = try f32(ie + "embeddings.cls_token")
            positions = try f32(ie + "embeddings.position_embeddings")
            preNorm = nil
            finalNorm = (try f32(ie + "layernorm.weight"), try f32(ie + "layernorm.bias"))
            for i in 0..<e.layers {
                layers.append(try encoderLayer(ie + "layers.\(i).", ln1: "layernorm_before", ln2: "layernorm_after", attention: "attention.", out: "o_proj"))
            }
        }
        encoderLayers = layers
        let D = cfg.decoder.hiddenSize
        imageProjW = try f32("image_proj.weight"); imageProjB = try f32("image_proj.bias")
        weightInW = try f32("weight_in.weight"); weightInB = try f32("weight_in.bias"); weightPos = try f32("weight_pos")
        var dl: [DecoderLayer] = []
        for j in 0..<cfg.decoder.layers {
            let l = "decoder.layers.\(j)."
            let caW = try f32(l + "multihead_attn.in_proj_weight"), caB = try f32(l + "multihead_attn.in_proj_bias")
            dl.append(DecoderLayer(
                saW: try f32(l + "self_attn.in_proj_weight"), saB: try f32(l + "self_attn.in_proj_bias"),
                saOW: try f32(l + "self_attn.out_proj.weight"), saOB: try f32(l + "self_attn.out_proj.bias"),
                caWq: Array(caW[0..<(D * D)]), caBq: Array(caB[0..<D]), caWkv: Array(caW[(D * D)...]), caBkv: Array(caB[D...]),
                caOW: try f32(l + "multihead_attn.out_proj.weight"), caOB: try f32(l + "multihead_attn.out_proj.bias"),
                l1W: try f32(l + "linear1.weight"), l1B: try f32(l + "linear1.bias"), l2W: try f32(l + "linear2.weight"), l2B: try f32(l + "linear2.bias"),
                n1W: try f32(l + "norm1.weight"), n1B: try f32(l + "norm1.bias"), n2W: try f32(l + "norm2.weight"), n2B: try f32(l + "norm2.bias"),
                n3W: try f32(l + "norm3.weight"), n3B: try f32(l + "norm3.bias")))
        }
        decoderLayers = dl
        decoderNorm = (try f32("decoder.norm.weight"), try f32("decoder.norm.bias"))
        var hs: [(w: [Float], b: [Float])] = []
        for i in 0..<cfg.layers.count { hs.append((try f32("heads.\(i).weight"), try f32("heads.\(i).bias"))) }
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
        var x = [Float](repeating: 0, count: S * W)
        x.withUnsafeMutableBufferPointer { xp in
            let b = xp.baseAddress!
            patches.withUnsafeBufferPointer { pp in Kernels.linear(pp.baseAddress!, rows: S - 1, in: K, weight: patchW, bias: patchB, out: W, into: b + W) }
            for j in 0..<W { b[j] = classToken[j] }
            for i in 0..<(S * W) { b[i] += positions[i] }
        }
        var h = [Float](repeating: 0, count: S * W)
        if let pre = preNorm {
            let copy = x
            copy.withUnsafeBufferPointer { cp in x.withUnsafeMutableBufferPointer { Kernels.layerNorm(cp.baseAddress!, rows: S, channels: W, weight: pre.w, bias: pre.b, eps: e.eps, into: $0.baseAddress!) } }
        }
        var qkv = [Float](repeating: 0, count: S * 3 * W), att = [Float](repeating: 0, count: S * W), mlp = [Float](repeating: 0, count: S * e.intermediateSize)
        let heads = e.heads, d = W / heads, I = e.intermediateSize
        x.withUnsafeMutableBufferPointer { xb in h.withUnsafeMutableBufferPointer { hb in qkv.withUnsafeMutableBufferPointer { qb in
        att.withUnsafeMutableBufferPointer { ab in mlp.withUnsafeMutableBufferPointer { mb in
            let x = xb.baseAddress!, h = hb.baseAddress!, q = qb.baseAddress!, a = ab.baseAddress!, m = mb.baseAddress!
            for L in encoderLayers {
                Kernels.layerNorm(x, rows: S, channels: W, weight: L.ln1w, bias: L.ln1b, eps: e.eps, into: h)
                Kernels.linear(h, rows: S, in: W, weight: L.wqkv, bias: L.bqkv, out: 3 * W, into: q)
                Kernels.attention(q: q, qStride: 3 * W, k: q + W, kStride: 3 * W, v: q + 2 * W, vStride: 3 * W, queries: S, keys: S, heads: heads, headDim: d, into: a)
                Kernels.linear(a, rows: S, in: W, weight: L.wo, bias: L.bo, out: W, into: x, accumulate: true)
                Kernels.layerNorm(x, rows: S, channels: W, weight: L.ln2w, bias: L.ln2b, eps: e.eps, into: h)
                Kernels.linear(h, rows: S, in: W, weight: L.w1, bias: L.b1, out: I, into: m)
                Kernels.activate(m, count: S * I, e.activation)
                Kernels.linear(m, rows: S, in: I, weight: L.w2, bias: L.b2, out: W, into: x, accumulate: true)
            }
            Kernels.layerNorm(x, rows: S, channels: W, weight: finalNorm.w, bias: finalNorm.b, eps: e.eps, into: h)
        } } } } }
        switch e.tokens {
        case .all: return h
        case .class: return Array(h[0..<W])
        case .patch: return Array(h[W...])
        }
    }

    /// Runs the encoder and the k decoder iterations; returns one prediction per target layer,
    /// in table order.
    public func predict(pixels: [Float]) throws(HypernetworkError) -> [LayerPrediction] {
        let feats = try features(pixels: pixels)
        return decode(features: feats)
    }

    /// The weight decoder on given image tokens.
    func decode(features: [Float]) -> [LayerPrediction] {
        let c = config, dec = c.decoder, D = dec.hiddenSize, T = c.encoder.outputTokens, W = c.encoder.hiddenSize
        let L = c.layers.count, F = dec.intermediateSize, nHeads = dec.heads, hd = D / nHeads, r = c.subject.rank
        let dims = c.layerDims, padded = c.paddedSize, A = c.subject.a
        var memory = [Float](repeating: 0, count: T * D)
        features.withUnsafeBufferPointer { fp in memory.withUnsafeMutableBufferPointer { Kernels.linear(fp.baseAddress!, rows: T, in: W, weight: imageProjW, bias: imageProjB, out: D, into: $0.baseAddress!) } }
        // Cross-attention keys and values depend only on the image: once per decoder layer.
        let kvs: [[Float]] = decoderLayers.map { layer in
            var kv = [Float](repeating: 0, count: T * 2 * D)
            memory.withUnsafeBufferPointer { mp in kv.withUnsafeMutableBufferPointer { Kernels.linear(mp.baseAddress!, rows: T, in: D, weight: layer.caWkv, bias: layer.caBkv, out: 2 * D, into: $0.baseAddress!) } }
            return kv
        }
        var downs = dims.map { [Float](repeating: 0, count: $0.down) }, ups = dims.map { [Float](repeating: 0, count: $0.up) }
        var pad = [Float](repeating: 0, count: L * padded), x = [Float](repeating: 0, count: L * D), h = x, a = x
        var qkv = [Float](repeating: 0, count: L * 3 * D), mlp = [Float](repeating: 0, count: L * F), delta = [Float]()
        for _ in 0..<dec.iterations {
            // Current estimates, padded: down_train [r, a'] → [r, a], up_train [b', r] → [b, r].
            for i in 0..<L {
                let base = i * padded, (ai, bi, _, _) = dims[i]
                for k in 0..<padded { pad[base + k] = 0 }
                for row in 0..<r { for col in 0..<ai { pad[base + row * A + col] = downs[i][row * ai + col] } }
                for row in 0..<bi { for col in 0..<r { pad[base + r * A + row * r + col] = ups[i][row * r + col] } }
            }
            pad.withUnsafeBufferPointer { pp in x.withUnsafeMutableBufferPointer { Kernels.linear(pp.baseAddress!, rows: L, in: padded, weight: weightInW, bias: weightInB, out: D, into: $0.baseAddress!) } }
            for k in 0..<(L * D) { x[k] += weightPos[k] }
            x.withUnsafeMutableBufferPointer { xb in h.withUnsafeMutableBufferPointer { hb in a.withUnsafeMutableBufferPointer { ab in
            qkv.withUnsafeMutableBufferPointer { qb in mlp.withUnsafeMutableBufferPointer { mb in
                let x = xb.baseAddress!, h = hb.baseAddress!, a = ab.baseAddress!, q = qb.baseAddress!, m = mb.baseAddress!
                for (j, Ly) in decoderLayers.enumerated() {
                    Kernels.layerNorm(x, rows: L, channels: D, weight: Ly.n1W, bias: Ly.n1B, eps: dec.eps, into: h)
                    Kernels.linear(h, rows: L, in: D, weight: Ly.saW, bias: Ly.saB, out: 3 * D, into: q)
                    Kernels.attention(q: q, qStride: 3 * D, k: q + D, kStride: 3 * D, v: q + 2 * D, vStride: 3 * D, queries: L, keys: L, heads: nHeads, headDim: hd, into: a)
                    Kernels.linear(a, rows: L, in: D, weight: Ly.saOW, bias: Ly.saOB, out: D, into: x, accumulate: true)
                    Kernels.layerNorm(x, rows: L, channels: D, weight: Ly.n2W, bias: Ly.n2B, eps: dec.eps, into: h)
                    Kernels.linear(h, rows: L, in: D, weight: Ly.caWq, bias: Ly.caBq, out: D, into: q)
                    kvs[j].withUnsafeBufferPointer { kv in
                        Kernels.attention(q: q, qStride: D, k: kv.baseAddress!, kStride: 2 * D, v: kv.baseAddress! + D, vStride: 2 * D, queries: L, keys: T, heads: nHeads, headDim: hd, into: a)
                    }
                    Kernels.linear(a, rows: L, in: D, weight: Ly.caOW, bias: Ly.caOB, out: D, into: x, accumulate: true)
                    Kernels.layerNorm(x, rows: L, channels: D, weight: Ly.n3W, bias: Ly.n3B, eps: dec.eps, into: h)
                    Kernels.linear(h, rows: L, in: D, weight: Ly.l1W, bias: Ly.l1B, out: F, into: m)
                    Kernels.activate(m, count: L * F, "gelu")
                    Kernels.linear(m, rows: L, in: F, weight: Ly.l2W, bias: Ly.l2B, out: D, into: x, accumulate: true)
                }
                Kernels.layerNorm(x, rows: L, channels: D, weight: decoderNorm.w, bias: decoderNorm.b, eps: dec.eps, into: h)
            } } } } }
            for i in 0..<L {
                let (_, _, nd, nu) = dims[i]
                if delta.count != nd + nu { delta = [Float](repeating: 0, count: nd + nu) }
                h.withUnsafeBufferPointer { hp in delta.withUnsafeMutableBufferPointer { Kernels.linear(hp.baseAddress! + i * D, rows: 1, in: D, weight: heads[i].w, bias: heads[i].b, out: nd + nu, into: $0.baseAddress!) } }
                for k in 0..<nd { downs[i][k] += delta[k] }
                for k in 0..<nu { ups[i][k] += delta[nd + k] }
            }
        }
        return (0..<L).map { i in
            LayerPrediction(target: c.layers[i], rank: r, a: dims[i].a, b: dims[i].b, downTrain: downs[i], upTrain: ups[i])
        }
    }
}
