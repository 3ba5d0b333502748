import Compute
import CLidbSupport
import Checkpoint
import SubjectDelta
import Foundation
import TensorFile

/// diffusers' `UNet2DConditionModel` for SD 1.x / 2.x configurations (cross-attention down/up
/// blocks, `UNetMidBlock2DCrossAttn`, conv or linear transformer projections, GEGLU feed-forward),
/// f32 on the CPU. Weights are read once from the base and kept as f32, or — with
/// `.f16PerLayer` and an F16 base — kept as F16 and converted to f32 layer by layer as they run.
public final class UNet: @unchecked Sendable {
    public let config: JSONValue
    var w: [String: [Float]]
    /// F16 weights converted on each use (`WeightResidency.f16PerLayer`); a name is in `w` or here.
    var half: [String: [UInt16]] = [:]
    let blockChannels: [Int]
    let layersPerBlock: Int
    let downAttention: [Bool], upAttention: [Bool]
    let heads: [Int]
    let groups: Int
    let eps: Float
    let linearProjection: Bool
    public let inChannels: Int, outChannels: Int, contextDim: Int
    let flipSinToCos: Bool, freqShift: Float
    /// Adds a subject's ΔW·x on the fly for weight names the live delta covers.
    public var live: ((String, UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>) -> Void)?

    /// `halfMinimum`: with `.f16PerLayer`, F16 tensors of at least this many values stay F16.
    public init(base: BaseModel, residency: WeightResidency = .f32, halfMinimum: Int = 4096) throws(TensorFileError) {
        let cfg = try UNetConfig(base: base)
        config = base.config("unet") ?? .null
        blockChannels = cfg.channels
        layersPerBlock = cfg.layersPerBlock
        downAttention = cfg.downAttention
        upAttention = cfg.upAttention
        heads = cfg.heads
        groups = cfg.groups
        eps = cfg.eps
        linearProjection = cfg.linearProjection
        inChannels = cfg.inChannels
        outChannels = cfg.outChannels
        contextDim = cfg.contextDim
        flipSinToCos = cfg.flipSinToCos
        freqShift = cfg.freqShift
        _ = Parallel.allocatorConfigured
        let loader = WeightLoader(base: base)
        if residency == .f16PerLayer {
            // Large F16 tensors stay F16 (copied out of the mapped file, whose pages are released);
            // norms, biases and anything not F16 are converted once.
            half = try loader.halfWeights(prefix: "unet.", minimumCount: halfMinimum)
        }
        w = try loader.all(prefix: "unet.", excluding: Set(half.keys))
        try checkWeights({ [w, half] in w[$0]?.count ?? half[$0]?.count }, expected: expectedWeights(), prefix: "unet.", file: base.file.path)
    }

    /// Every weight the forward pass reads, with the number of values the config implies (the
    /// channel bookkeeping mirrors `callAsFunction`, including the skip connections).
    func expectedWeights() -> [(String, Int)] {
        var out: [(String, Int)] = []
        func add(_ n: String, _ weight: Int, _ bias: Int?) {
            out.append((n + ".weight", weight))
            if let bias { out.append((n + ".bias", bias)) }
        }
        let c0 = blockChannels[0], temb = 4 * c0
        func resnet(_ n: String, _ i: Int, _ o: Int) {
            add(n + ".norm1", i, i); add(n + ".conv1", o * i * 9, o); add(n + ".time_emb_proj", o * temb, o)
            add(n + ".norm2", o, o); add(n + ".conv2", o * o * 9, o)
            if i != o || has(n + ".conv_shortcut.weight") { add(n + ".conv_shortcut", o * i, o) }
        }
        func transformer(_ n: String, _ c: Int) {
            let b = n + ".transformer_blocks.0"
            add(n + ".norm", c, c); add(n + ".proj_in", c * c, c); add(n + ".proj_out", c * c, c)
            for x in ["norm1", "norm2", "norm3"] { add(b + "." + x, c, c) }
            for x in ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q"] { add(b + "." + x, c * c, nil) }
            for x in ["attn2.to_k", "attn2.to_v"] { add(b + "." + x, c * contextDim, nil) }
            add(b + ".attn1.to_out.0", c * c, c); add(b + ".attn2.to_out.0", c * c, c)
            let inner = (w[b + ".ff.net.2.weight"]?.count ?? half[b + ".ff.net.2.weight"]?.count ?? 0) / c
            add(b + ".ff.net.0.proj", 2 * inner * c, 2 * inner); add(b + ".ff.net.2", c * inner, c)
        }
        add("time_embedding.linear_1", temb * c0, temb); add("time_embedding.linear_2", temb * temb, temb)
        add("conv_in", c0 * inChannels * 9, c0); add("conv_norm_out", c0, c0); add("conv_out", outChannels * c0 * 9, outChannels)
        var skips = [c0], x = c0
        for (b, ch) in blockChannels.enumerated() {
            for r in 0..<layersPerBlock {
                resnet("down_blocks.\(b).resnets.\(r)", x, ch)
                x = ch
                if downAttention[b] { transformer("down_blocks.\(b).attentions.\(r)", ch) }
                skips.append(ch)
            }
            if b < blockChannels.count - 1 { add("down_blocks.\(b).downsamplers.0.conv", ch * ch * 9, ch); skips.append(ch) }
        }
        resnet("mid_block.resnets.0", x, x); transformer("mid_block.attentions.0", x); resnet("mid_block.resnets.1", x, x)
        for (b, ch) in blockChannels.reversed().enumerated() {
            for r in 0...layersPerBlock {
                resnet("up_blocks.\(b).resnets.\(r)", x + (skips.popLast() ?? 0), ch)
                x = ch
                if upAttention[b] { transformer("up_blocks.\(b).attentions.\(r)", ch) }
            }
            if b < blockChannels.count - 1 { add("up_blocks.\(b).upsamplers.0.conv", ch * ch * 9, ch) }
        }
        return out
    }

    func p(_ name: String) -> [Float] {
        if let v = w[name] { return v }
        guard let h = half[name] else { fatalError("missing UNet weight \(name)") }
        return halfToFloat(h)
    }

    /// Adds `U·D` to a weight in memory (merging a subject); `name` is the base name. A weight kept
    /// as F16 becomes f32 first (exactly), so merged results equal the all-f32 path's.
    public func addLowRank(weight name: String, up: [Float], down: [Float], rank: Int, sign: Float = 1) -> Bool {
        let key = String(name.dropFirst(5))
        if name.hasPrefix("unet."), let h = half[key] {
            w[key] = halfToFloat(h)
            half[key] = nil
        }
        guard name.hasPrefix("unet."), var v = w[key] else { return false }
        let out = up.count / rank, inDim = down.count / rank
        guard out * inDim == v.count else { return false }
        v.withUnsafeMutableBufferPointer { vp in addLowRankUpdate(up, down, out: out, in: inDim, rank: rank, into: vp.baseAddress!, sign: sign) }
        w[String(name.dropFirst(5))] = v
        return true
    }

    func has(_ name: String) -> Bool { w[name] != nil || half[name] != nil }

    /// Sinusoidal timestep embedding as diffusers' `get_timestep_embedding`.
    func timestepEmbedding(_ t: Float, dim: Int) -> [Float] {
        let half = dim / 2
        var e = [Float](repeating: 0, count: dim)
        for i in 0..<half {
            let exponent = -Foundation.log(Float(10000)) * Float(i) / (Float(half) - freqShift)
            let arg = t * Foundation.exp(exponent)
            let s = Foundation.sin(arg), co = Foundation.cos(arg)
            if flipSinToCos { e[i] = co; e[half + i] = s } else { e[i] = s; e[half + i] = co }
        }
        return e
    }

    func linear(_ name: String, _ x: [Float], rows: Int, in inDim: Int, out: Int, bias: Bool = true) -> [Float] {
        var y = Ops.linear(x, rows: rows, in: inDim, weight: p(name + ".weight"), bias: bias ? p(name + ".bias") : nil, out: out)
        if let live { x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in live("unet." + name + ".weight", xp.baseAddress!, rows, yp.baseAddress!) } } }
        return y
    }

    func conv(_ name: String, _ x: FeatureMap, out: Int, k: Int, stride: Int = 1) -> FeatureMap {
        Ops.conv2d(x, weight: p(name + ".weight"), bias: p(name + ".bias"), out: out, kernel: k, stride: stride, padding: k / 2)
    }

    func resnet(_ name: String, _ x: FeatureMap, temb: [Float], out: Int) -> FeatureMap {
        var h = Ops.groupNormConv3x3(x, groups: groups, normWeight: p(name + ".norm1.weight"), normBias: p(name + ".norm1.bias"), eps: eps, silu: true,
                                     weight: p(name + ".conv1.weight"), bias: p(name + ".conv1.bias"), out: out)
        var t = temb
        Ops.silu(&t)
        let tp = Ops.linear(t, rows: 1, in: t.count, weight: p(name + ".time_emb_proj.weight"), bias: p(name + ".time_emb_proj.bias"), out: out)
        let hw = h.h * h.w
        h.data.withUnsafeMutableBufferPointer { lidb_add_channel_bias($0.baseAddress!, tp, out, hw) }
        h = Ops.groupNormConv3x3(h, groups: groups, normWeight: p(name + ".norm2.weight"), normBias: p(name + ".norm2.bias"), eps: eps, silu: true,
                                 weight: p(name + ".conv2.weight"), bias: p(name + ".conv2.bias"), out: out)
        let skip = has(name + ".conv_shortcut.weight") ? conv(name + ".conv_shortcut", x, out: out, k: 1) : x
        Ops.add(&h.data, skip.data)
        return h
    }

    func transformer(_ name: String, _ x: FeatureMap, context: [Float], contextTokens: Int, heads: Int) -> FeatureMap {
        let c = x.c, n = x.h * x.w
        var h = Ops.groupNorm(x, groups: groups, weight: p(name + ".norm.weight"), bias: p(name + ".norm.bias"), eps: 1e-6)
        var tokens: [Float]
        if linearProjection {
            tokens = linear(name + ".proj_in", Ops.toTokens(h), rows: n, in: c, out: c)
        } else {
            h = Ops.conv2d(h, weight: p(name + ".proj_in.weight"), bias: p(name + ".proj_in.bias"), out: c, kernel: 1, padding: 0)
            tokens = Ops.toTokens(h)
        }
        let b = name + ".transformer_blocks.0"
        let d = c / heads
        // Self-attention.
        var nrm = Ops.layerNorm(tokens, rows: n, channels: c, weight: p(b + ".norm1.weight"), bias: p(b + ".norm1.bias"), eps: 1e-5)
        var a = Ops.attention(q: linear(b + ".attn1.to_q", nrm, rows: n, in: c, out: c, bias: false),
                              k: linear(b + ".attn1.to_k", nrm, rows: n, in: c, out: c, bias: false),
                              v: linear(b + ".attn1.to_v", nrm, rows: n, in: c, out: c, bias: false), queries: n, keys: n, heads: heads, headDim: d,
                              chunk: Self.attentionChunk)
        var o = linear(b + ".attn1.to_out.0", a, rows: n, in: c, out: c)
        Ops.add(&tokens, o)
        // Cross-attention to the text.
        nrm = Ops.layerNorm(tokens, rows: n, channels: c, weight: p(b + ".norm2.weight"), bias: p(b + ".norm2.bias"), eps: 1e-5)
        a = Ops.attention(q: linear(b + ".attn2.to_q", nrm, rows: n, in: c, out: c, bias: false),
                          k: linear(b + ".attn2.to_k", context, rows: contextTokens, in: contextDim, out: c, bias: false),
                          v: linear(b + ".attn2.to_v", context, rows: contextTokens, in: contextDim, out: c, bias: false),
                          queries: n, keys: contextTokens, heads: heads, headDim: d)
        o = linear(b + ".attn2.to_out.0", a, rows: n, in: c, out: c)
        Ops.add(&tokens, o)
        // GEGLU feed-forward.
        nrm = Ops.layerNorm(tokens, rows: n, channels: c, weight: p(b + ".norm3.weight"), bias: p(b + ".norm3.bias"), eps: 1e-5)
        let inner = p(b + ".ff.net.2.weight").count / c
        // In bands of rows, so the 2·inner-wide projection stays small.
        let band = max(1, min(n, (1 << 20) / max(inner, 1)))
        var start = 0
        while start < n {
            let rows = min(band, n - start)
            let proj = linear(b + ".ff.net.0.proj", Array(nrm[(start * c)..<((start + rows) * c)]), rows: rows, in: c, out: 2 * inner)
            let gated = [Float](unsafeUninitializedCapacity: rows * inner) { g, count in
                lidb_geglu(proj, g.baseAddress!, rows, inner)
                count = rows * inner
            }
            o = linear(b + ".ff.net.2", gated, rows: rows, in: inner, out: c)
            tokens.withUnsafeMutableBufferPointer { lidb_add($0.baseAddress! + start * c, o, rows * c) }
            start += rows
        }
        var y: FeatureMap
        if linearProjection {
            y = Ops.fromTokens(linear(name + ".proj_out", tokens, rows: n, in: c, out: c), c: c, h: x.h, w: x.w)
        } else {
            y = Ops.conv2d(Ops.fromTokens(tokens, c: c, h: x.h, w: x.w), weight: p(name + ".proj_out.weight"), bias: p(name + ".proj_out.bias"), out: c, kernel: 1, padding: 0)
        }
        Ops.add(&y.data, x.data)
        return y
    }

    /// Queries per block of self-attention scores: 128 × 4,096 keys (64×64 latents) is 2 MiB, so
    /// the scores stay in cache between the two products and the softmax.
    static let attentionChunk = 128

    /// One evaluation for one batch item: `sample` `[in, h, w]`, `context` `[tokens × cross_attention_dim]`.
    public func callAsFunction(_ sample: FeatureMap, timestep t: Float, context: [Float], contextTokens: Int) -> FeatureMap {
        let c0 = blockChannels[0]
        var temb = timestepEmbedding(t, dim: c0)
        temb = Ops.linear(temb, rows: 1, in: c0, weight: p("time_embedding.linear_1.weight"), bias: p("time_embedding.linear_1.bias"), out: 4 * c0)
        Ops.silu(&temb)
        temb = Ops.linear(temb, rows: 1, in: 4 * c0, weight: p("time_embedding.linear_2.weight"), bias: p("time_embedding.linear_2.bias"), out: 4 * c0)
        var x = conv("conv_in", sample, out: c0, k: 3)
        var skips: [FeatureMap] = [x]
        for (b, ch) in blockChannels.enumerated() {
            for r in 0..<layersPerBlock {
                x = resnet("down_blocks.\(b).resnets.\(r)", x, temb: temb, out: ch)
                if downAttention[b] { x = transformer("down_blocks.\(b).attentions.\(r)", x, context: context, contextTokens: contextTokens, heads: heads[b]) }
                skips.append(x)
            }
            if b < blockChannels.count - 1 {
                x = conv("down_blocks.\(b).downsamplers.0.conv", x, out: ch, k: 3, stride: 2)
                skips.append(x)
            }
        }
        let top = blockChannels.last!
        x = resnet("mid_block.resnets.0", x, temb: temb, out: top)
        x = transformer("mid_block.attentions.0", x, context: context, contextTokens: contextTokens, heads: heads.last!)
        x = resnet("mid_block.resnets.1", x, temb: temb, out: top)
        let upChannels = Array(blockChannels.reversed()), upHeads = Array(heads.reversed())
        for (b, ch) in upChannels.enumerated() {
            for r in 0...layersPerBlock {
                let skip = skips.removeLast()
                var cat = FeatureMap(c: x.c + skip.c, h: x.h, w: x.w)
                cat.data.replaceSubrange(0..<x.data.count, with: x.data)
                cat.data.replaceSubrange(x.data.count..<cat.data.count, with: skip.data)
                x = resnet("up_blocks.\(b).resnets.\(r)", cat, temb: temb, out: ch)
                if upAttention[b] { x = transformer("up_blocks.\(b).attentions.\(r)", x, context: context, contextTokens: contextTokens, heads: upHeads[b]) }
            }
            if b < upChannels.count - 1, let next = skips.last {
                let wn = "up_blocks.\(b).upsamplers.0.conv"
                if next.h == 2 * x.h && next.w == 2 * x.w {
                    x = Ops.upsampleConv3x3(x, weight: p(wn + ".weight"), bias: p(wn + ".bias"), out: ch)
                } else {
                    // A latent side that is not a multiple of 2^(blocks − 1): as diffusers
                    // (`forward_upsample_size`), upsample to the size of the skip connection it
                    // is concatenated with next.
                    x = Ops.conv2d(Ops.resizeNearest(x, h: next.h, w: next.w), weight: p(wn + ".weight"), bias: p(wn + ".bias"), out: ch, kernel: 3, padding: 1)
                }
            }
        }
        return Ops.groupNormConv3x3(x, groups: groups, normWeight: p("conv_norm_out.weight"), normBias: p("conv_norm_out.bias"), eps: eps, silu: true,
                                    weight: p("conv_out.weight"), bias: p("conv_out.bias"), out: outChannels)
    }
}

/// diffusers' `AutoencoderKL` decoder (post-quant conv, mid block with single-head attention,
/// up blocks in reverse channel order, nearest upsampling).
public final class VAEDecoder {
    let w: [String: [Float]]
    let channels: [Int]
    let layersPerBlock: Int
    let groups: Int
    public let latentChannels: Int, outChannels: Int
    public let scalingFactor: Float
    /// Pixels per latent along each side, `2^(blocks − 1)` (`VAEConfig.scaleFactor`).
    public let scaleFactor: Int

    public init(base: BaseModel) throws(TensorFileError) {
        let cfg = try VAEConfig(base: base)
        scaleFactor = cfg.scaleFactor
        let ch = cfg.channels
        channels = ch
        layersPerBlock = cfg.layersPerBlock
        groups = cfg.groups
        latentChannels = cfg.latentChannels
        outChannels = cfg.outChannels
        scalingFactor = cfg.scalingFactor
        w = try cfg.weights(base, prefixes: ["vae.decoder.", "vae.post_quant_conv."])
        let top = ch.last!, lat = latentChannels
        var expected = VAEBlocks.conv("post_quant_conv", lat, lat, k: 1) + VAEBlocks.conv("decoder.conv_in", lat, top, k: 3)
        expected += VAEBlocks.mid("decoder.mid_block", top, w)
        var x = top
        for (b, c) in ch.reversed().enumerated() {
            for r in 0...layersPerBlock { expected += VAEBlocks.resnet("decoder.up_blocks.\(b).resnets.\(r)", x, c, w); x = c }
            if b < ch.count - 1 { expected += VAEBlocks.conv("decoder.up_blocks.\(b).upsamplers.0.conv", c, c, k: 3) }
        }
        expected += VAEBlocks.norm("decoder.conv_norm_out", x) + VAEBlocks.conv("decoder.conv_out", x, outChannels, k: 3)
        try checkWeights(w, expected: expected, prefix: "vae.", file: base.file.path)
    }

    var blocks: VAEBlocks { VAEBlocks(w: w, groups: groups) }
    func p(_ n: String) -> [Float] { blocks.p(n) }
    func conv(_ n: String, _ x: FeatureMap, out: Int, k: Int) -> FeatureMap { blocks.conv(n, x, out: out, k: k) }
    func resnet(_ n: String, _ x: FeatureMap, out: Int) -> FeatureMap { blocks.resnet(n, x, out: out) }
    func attention(_ n: String, _ x: FeatureMap) -> FeatureMap { blocks.attention(n, x) }

    /// Decodes latents (already divided by the scaling factor) to an image in [-1, 1] (roughly).
    public func callAsFunction(_ latents: FeatureMap) -> FeatureMap {
        var x = conv("post_quant_conv", latents, out: latentChannels, k: 1)
        let top = channels.last!
        x = conv("decoder.conv_in", x, out: top, k: 3)
        x = resnet("decoder.mid_block.resnets.0", x, out: top)
        x = attention("decoder.mid_block.attentions.0", x)
        x = resnet("decoder.mid_block.resnets.1", x, out: top)
        let rev = Array(channels.reversed())
        for (b, ch) in rev.enumerated() {
            for r in 0...layersPerBlock { x = resnet("decoder.up_blocks.\(b).resnets.\(r)", x, out: ch) }
            if b < rev.count - 1 {
                let n = "decoder.up_blocks.\(b).upsamplers.0.conv"
                x = Ops.upsampleConv3x3(x, weight: p(n + ".weight"), bias: p(n + ".bias"), out: ch)
            }
        }
        return Ops.groupNormConv3x3(x, groups: groups, normWeight: p("decoder.conv_norm_out.weight"), normBias: p("decoder.conv_norm_out.bias"), eps: 1e-6,
                                    silu: true, weight: p("decoder.conv_out.weight"), bias: p("decoder.conv_out.bias"), out: outChannels)
    }
}

/// diffusers' `AutoencoderKL` encoder: image `[3, H, W]` in [-1, 1] → the latent distribution's
/// mean and log-variance (`[latent, H/f, W/f]` each, `f` = `scaleFactor`, 8 for SD's VAEs), for
/// img2img and finetuning.
public final class VAEEncoder {
    let w: [String: [Float]]
    let channels: [Int]
    let layersPerBlock: Int
    let groups: Int
    public let latentChannels: Int, inChannels: Int
    public let scalingFactor: Float
    /// Pixels per latent along each side, `2^(blocks − 1)` (`VAEConfig.scaleFactor`).
    public let scaleFactor: Int

    public init(base: BaseModel) throws(TensorFileError) {
        let cfg = try VAEConfig(base: base)
        scaleFactor = cfg.scaleFactor
        inChannels = cfg.inChannels
        let ch = cfg.channels
        channels = ch
        layersPerBlock = cfg.layersPerBlock
        groups = cfg.groups
        latentChannels = cfg.latentChannels
        scalingFactor = cfg.scalingFactor
        w = try cfg.weights(base, prefixes: ["vae.encoder.", "vae.quant_conv."])
        let lat = latentChannels, inCh = cfg.inChannels
        var expected = VAEBlocks.conv("encoder.conv_in", inCh, ch[0], k: 3)
        var x = ch[0]
        for (b, c) in ch.enumerated() {
            for r in 0..<layersPerBlock { expected += VAEBlocks.resnet("encoder.down_blocks.\(b).resnets.\(r)", x, c, w); x = c }
            if b < ch.count - 1 { expected += VAEBlocks.conv("encoder.down_blocks.\(b).downsamplers.0.conv", c, c, k: 3) }
        }
        expected += VAEBlocks.mid("encoder.mid_block", x, w) + VAEBlocks.norm("encoder.conv_norm_out", x)
        expected += VAEBlocks.conv("encoder.conv_out", x, 2 * lat, k: 3) + VAEBlocks.conv("quant_conv", 2 * lat, 2 * lat, k: 1)
        try checkWeights(w, expected: expected, prefix: "vae.", file: base.file.path)
    }

    var blocks: VAEBlocks { VAEBlocks(w: w, groups: groups) }
    func p(_ n: String) -> [Float] { blocks.p(n) }
    func conv(_ n: String, _ x: FeatureMap, out: Int, k: Int) -> FeatureMap { blocks.conv(n, x, out: out, k: k) }
    func resnet(_ n: String, _ x: FeatureMap, out: Int) -> FeatureMap { blocks.resnet(n, x, out: out) }

    /// Encodes an image after checking it fits this VAE: `in_channels` channels, sides positive
    /// multiples of `scaleFactor` and at most `GenerateOptions.maxSide`. The latents are
    /// `[latent, H/f, W/f]`.
    public func encode(_ image: FeatureMap) throws(TensorFileError) -> (mean: FeatureMap, logvar: FeatureMap) {
        guard image.c == inChannels, image.data.count == image.c * image.h * image.w else {
            throw TensorFileError(file: "VAE encoder", .invalidArgument("the image has \(image.c) channels, the VAE takes \(inChannels)"))
        }
        for (name, v) in [("height", image.h), ("width", image.w)] where v < 1 || v > GenerateOptions.maxSide || v % scaleFactor != 0 {
            throw TensorFileError(file: "VAE encoder", .invalidArgument(
                "image \(name) \(v): must be a multiple of \(scaleFactor) (this VAE's pixels per latent) from \(scaleFactor) to \(GenerateOptions.maxSide)"))
        }
        return self(image)
    }

    public func callAsFunction(_ image: FeatureMap) -> (mean: FeatureMap, logvar: FeatureMap) {
        var x = conv("encoder.conv_in", image, out: channels[0], k: 3)
        for (b, ch) in channels.enumerated() {
            for r in 0..<layersPerBlock { x = resnet("encoder.down_blocks.\(b).resnets.\(r)", x, out: ch) }
            if b < channels.count - 1 {
                // diffusers pads right and bottom by one, then a stride-2 3×3 convolution without padding.
                var padded = FeatureMap(c: x.c, h: x.h + 1, w: x.w + 1)
                for c in 0..<x.c { for i in 0..<x.h { for j in 0..<x.w { padded.data[(c * padded.h + i) * padded.w + j] = x.data[(c * x.h + i) * x.w + j] } } }
                x = Ops.conv2d(padded, weight: p("encoder.down_blocks.\(b).downsamplers.0.conv.weight"), bias: p("encoder.down_blocks.\(b).downsamplers.0.conv.bias"),
                               out: ch, kernel: 3, stride: 2, padding: 0)
            }
        }
        let top = channels.last!
        x = resnet("encoder.mid_block.resnets.0", x, out: top)
        x = blocks.attention("encoder.mid_block.attentions.0", x)
        x = resnet("encoder.mid_block.resnets.1", x, out: top)
        x = Ops.groupNorm(x, groups: groups, weight: p("encoder.conv_norm_out.weight"), bias: p("encoder.conv_norm_out.bias"), eps: 1e-6, silu: true)
        x = conv("encoder.conv_out", x, out: 2 * latentChannels, k: 3)
        x = conv("quant_conv", x, out: 2 * latentChannels, k: 1)
        let half = latentChannels * x.h * x.w
        let mean = FeatureMap(c: latentChannels, h: x.h, w: x.w, data: Array(x.data[0..<half]))
        let logvar = FeatureMap(c: latentChannels, h: x.h, w: x.w, data: x.data[half...].map { min(max($0, -30), 20) })
        return (mean, logvar)
    }
}

/// The building blocks shared by the VAE's encoder and decoder: convolutions, ResNet blocks
/// (GroupNorm eps 1e-6, no time embedding) and the single-head mid-block attention.
struct VAEBlocks {
    let w: [String: [Float]]
    let groups: Int

    /// Weights (with their numbers of values) of the blocks, for `checkWeights`.
    static func conv(_ n: String, _ i: Int, _ o: Int, k: Int) -> [(String, Int)] { [(n + ".weight", o * i * k * k), (n + ".bias", o)] }
    static func norm(_ n: String, _ c: Int) -> [(String, Int)] { [(n + ".weight", c), (n + ".bias", c)] }
    static func resnet(_ n: String, _ i: Int, _ o: Int, _ w: [String: [Float]]) -> [(String, Int)] {
        var out = norm(n + ".norm1", i) + conv(n + ".conv1", i, o, k: 3) + norm(n + ".norm2", o) + conv(n + ".conv2", o, o, k: 3)
        if i != o || w[n + ".conv_shortcut.weight"] != nil { out += conv(n + ".conv_shortcut", i, o, k: 1) }
        return out
    }
    static func mid(_ n: String, _ c: Int, _ w: [String: [Float]]) -> [(String, Int)] {
        resnet(n + ".resnets.0", c, c, w) + resnet(n + ".resnets.1", c, c, w) + norm(n + ".attentions.0.group_norm", c)
            + ["to_q", "to_k", "to_v", "to_out.0"].flatMap { conv(n + ".attentions.0." + $0, c, c, k: 1) }
    }

    func p(_ n: String) -> [Float] {
        guard let v = w[n] else { fatalError("missing VAE weight \(n)") }
        return v
    }

    func conv(_ n: String, _ x: FeatureMap, out: Int, k: Int) -> FeatureMap {
        Ops.conv2d(x, weight: p(n + ".weight"), bias: p(n + ".bias"), out: out, kernel: k, padding: k / 2)
    }

    func resnet(_ n: String, _ x: FeatureMap, out: Int) -> FeatureMap {
        var h = Ops.groupNormConv3x3(x, groups: groups, normWeight: p(n + ".norm1.weight"), normBias: p(n + ".norm1.bias"), eps: 1e-6, silu: true,
                                     weight: p(n + ".conv1.weight"), bias: p(n + ".conv1.bias"), out: out)
        h = Ops.groupNormConv3x3(h, groups: groups, normWeight: p(n + ".norm2.weight"), normBias: p(n + ".norm2.bias"), eps: 1e-6, silu: true,
                                 weight: p(n + ".conv2.weight"), bias: p(n + ".conv2.bias"), out: out)
        let skip = w[n + ".conv_shortcut.weight"] != nil ? conv(n + ".conv_shortcut", x, out: out, k: 1) : x
        Ops.add(&h.data, skip.data)
        return h
    }

    func attention(_ n: String, _ x: FeatureMap) -> FeatureMap {
        let c = x.c, hw = x.h * x.w
        let h = Ops.groupNorm(x, groups: groups, weight: p(n + ".group_norm.weight"), bias: p(n + ".group_norm.bias"), eps: 1e-6)
        let t = Ops.toTokens(h)
        let q = Ops.linear(t, rows: hw, in: c, weight: p(n + ".to_q.weight"), bias: p(n + ".to_q.bias"), out: c)
        let k = Ops.linear(t, rows: hw, in: c, weight: p(n + ".to_k.weight"), bias: p(n + ".to_k.bias"), out: c)
        let v = Ops.linear(t, rows: hw, in: c, weight: p(n + ".to_v.weight"), bias: p(n + ".to_v.bias"), out: c)
        let a = Ops.attention(q: q, k: k, v: v, queries: hw, keys: hw, heads: 1, headDim: c)
        let o = Ops.linear(a, rows: hw, in: c, weight: p(n + ".to_out.0.weight"), bias: p(n + ".to_out.0.bias"), out: c)
        var y = Ops.fromTokens(o, c: c, h: x.h, w: x.w)
        Ops.add(&y.data, x.data)
        return y
    }
}

/// Refuses weights a model would read that are missing or of another size than its config says,
/// naming the tensor (a base whose config and weights disagree must not crash a generation).
func checkWeights(_ w: [String: [Float]], expected: [(String, Int)], prefix: String, file: String) throws(TensorFileError) {
    try checkWeights({ w[$0]?.count }, expected: expected, prefix: prefix, file: file)
}

func checkWeights(_ count: (String) -> Int?, expected: [(String, Int)], prefix: String, file: String) throws(TensorFileError) {
    for (n, want) in expected {
        guard let have = count(n) else { throw TensorFileError(file: file, tensor: prefix + n, .tensorNotFound) }
        guard have == want else {
            throw TensorFileError(file: file, tensor: prefix + n, .invalidShape("\(have) values where the model's config needs \(want)"))
        }
    }
}

/// Where a model's weights live while it runs.
public enum WeightResidency: String, Sendable, CaseIterable {
    /// Every weight converted to f32 once, at load (fastest; an SD 1.5 UNet holds 3.4 GB).
    case f32
    /// An F16 base's large weights kept as F16 and converted to f32 layer by layer when they run
    /// (half the resident weight memory; each evaluation converts them again). Other bases: as `.f32`.
    case f16PerLayer = "f16-per-layer"
}

/// F16 bit patterns → f32 (exact; F16C when available).
func halfToFloat(_ h: [UInt16]) -> [Float] {
    [Float](unsafeUninitializedCapacity: h.count) { buf, n in
        h.withUnsafeBytes { _ = DTypeConversion.convert($0, from: .F16, into: UnsafeMutableRawBufferPointer(buf), to: .F32, count: h.count) }
        n = h.count
    }
}
