import Checkpoint
import Compute
import TensorFile

/// diffusers' `AutoencoderKL` decoder (post-quant conv, mid block with single-head attention,
/// up blocks in reverse channel order, nearest upsampling), composed of `Compute` layers.
public struct VAEDecoder: Sendable {
    public let latentChannels: Int, outChannels: Int
    public let scalingFactor: Float
    /// Pixels per latent along each side, `2^(blocks − 1)` (`VAEConfig.scaleFactor`).
    public let scaleFactor: Int
    var postQuantConv: Conv2d, convIn: Conv2d
    var mid: VAEMidBlock
    var upBlocks: [(resnets: [VAEResnet], upsampler: Conv2d?)]
    var normOut: GroupNorm, convOut: Conv2d

    public init(base: BaseModel) throws(TensorFileError) {
        let cfg = try VAEConfig(base: base)
        scaleFactor = cfg.scaleFactor
        let ch = cfg.channels
        latentChannels = cfg.latentChannels
        outChannels = cfg.outChannels
        scalingFactor = cfg.scalingFactor
        let w = try cfg.weights(base, prefixes: ["vae.decoder.", "vae.post_quant_conv."])
        let top = ch[ch.count - 1], lat = latentChannels, n = cfg.layersPerBlock
        var expected = VAEBlocks.conv("post_quant_conv", lat, lat, k: 1) + VAEBlocks.conv("decoder.conv_in", lat, top, k: 3)
        expected += VAEBlocks.mid("decoder.mid_block", top, w)
        var x = top
        for (b, c) in ch.reversed().enumerated() {
            for r in 0...n { expected += VAEBlocks.resnet("decoder.up_blocks.\(b).resnets.\(r)", x, c, w); x = c }
            if b < ch.count - 1 { expected += VAEBlocks.conv("decoder.up_blocks.\(b).upsamplers.0.conv", c, c, k: 3) }
        }
        expected += VAEBlocks.norm("decoder.conv_norm_out", x) + VAEBlocks.conv("decoder.conv_out", x, outChannels, k: 3)
        try checkWeights(w, expected: expected, prefix: "vae.", file: base.file.path)
        let blocks = VAEBlocks(w: w, groups: cfg.groups, file: base.file.path)
        postQuantConv = try blocks.conv("post_quant_conv", lat, lat, k: 1)
        convIn = try blocks.conv("decoder.conv_in", lat, top, k: 3)
        mid = try blocks.mid("decoder.mid_block", top)
        var ups: [(resnets: [VAEResnet], upsampler: Conv2d?)] = []
        x = top
        for (b, c) in ch.reversed().enumerated() {
            var resnets: [VAEResnet] = []
            for r in 0...n { resnets.append(try blocks.resnet("decoder.up_blocks.\(b).resnets.\(r)", x, c)); x = c }
            ups.append((resnets, b < ch.count - 1 ? try blocks.conv("decoder.up_blocks.\(b).upsamplers.0.conv", c, c, k: 3) : nil))
        }
        upBlocks = ups
        normOut = try blocks.norm("decoder.conv_norm_out", x, silu: true)
        convOut = try blocks.conv("decoder.conv_out", x, outChannels, k: 3)
    }

    /// Decodes latents (already divided by the scaling factor), `[latent, h, w]`, to an image
    /// `[out, h·f, w·f]` in [-1, 1] (roughly).
    public func callAsFunction(_ latents: FeatureMap) throws(ComputeError) -> FeatureMap {
        var x = try postQuantConv.forward(latents)
        x = try convIn.forward(x)
        x = try mid.forward(x)
        for block in upBlocks {
            for r in block.resnets { x = try r.forward(x) }
            if let up = block.upsampler { x = try up.forward(upsampling: x) }
        }
        return try convOut.forward(normalizing: x, with: normOut)
    }

    /// The algorithm every convolution uses (`.automatic` unless set; tests force one).
    public var convolutionAlgorithm: ConvAlgorithm {
        get { convIn.algorithm }
        set {
            postQuantConv.algorithm = newValue; convIn.algorithm = newValue; convOut.algorithm = newValue
            mid.setAlgorithm(newValue)
            for b in upBlocks.indices {
                for r in upBlocks[b].resnets.indices { upBlocks[b].resnets[r].setAlgorithm(newValue) }
                upBlocks[b].upsampler?.algorithm = newValue
            }
        }
    }
}

/// diffusers' `AutoencoderKL` encoder: image `[3, H, W]` in [-1, 1] → the latent distribution's
/// mean and log-variance (`[latent, H/f, W/f]` each, `f` = `scaleFactor`, 8 for SD's VAEs), for
/// img2img and finetuning; composed of `Compute` layers.
public struct VAEEncoder: Sendable {
    public let latentChannels: Int, inChannels: Int
    public let scalingFactor: Float
    /// Pixels per latent along each side, `2^(blocks − 1)` (`VAEConfig.scaleFactor`).
    public let scaleFactor: Int
    var convIn: Conv2d
    var downBlocks: [(resnets: [VAEResnet], downsampler: Conv2d?)]
    var mid: VAEMidBlock
    var normOut: GroupNorm, convOut: Conv2d, quantConv: Conv2d

    public init(base: BaseModel) throws(TensorFileError) {
        let cfg = try VAEConfig(base: base)
        scaleFactor = cfg.scaleFactor
        inChannels = cfg.inChannels
        let ch = cfg.channels, n = cfg.layersPerBlock
        latentChannels = cfg.latentChannels
        scalingFactor = cfg.scalingFactor
        let w = try cfg.weights(base, prefixes: ["vae.encoder.", "vae.quant_conv."])
        let lat = latentChannels, inCh = cfg.inChannels
        var expected = VAEBlocks.conv("encoder.conv_in", inCh, ch[0], k: 3)
        var x = ch[0]
        for (b, c) in ch.enumerated() {
            for r in 0..<n { expected += VAEBlocks.resnet("encoder.down_blocks.\(b).resnets.\(r)", x, c, w); x = c }
            if b < ch.count - 1 { expected += VAEBlocks.conv("encoder.down_blocks.\(b).downsamplers.0.conv", c, c, k: 3) }
        }
        expected += VAEBlocks.mid("encoder.mid_block", x, w) + VAEBlocks.norm("encoder.conv_norm_out", x)
        expected += VAEBlocks.conv("encoder.conv_out", x, 2 * lat, k: 3) + VAEBlocks.conv("quant_conv", 2 * lat, 2 * lat, k: 1)
        try checkWeights(w, expected: expected, prefix: "vae.", file: base.file.path)
        let blocks = VAEBlocks(w: w, groups: cfg.groups, file: base.file.path)
        convIn = try blocks.conv("encoder.conv_in", inCh, ch[0], k: 3)
        var downs: [(resnets: [VAEResnet], downsampler: Conv2d?)] = []
        x = ch[0]
        for (b, c) in ch.enumerated() {
            var resnets: [VAEResnet] = []
            for r in 0..<n { resnets.append(try blocks.resnet("encoder.down_blocks.\(b).resnets.\(r)", x, c)); x = c }
            // diffusers pads right and bottom by one, then a stride-2 3×3 convolution without padding.
            downs.append((resnets, b < ch.count - 1 ? try blocks.conv("encoder.down_blocks.\(b).downsamplers.0.conv", c, c, k: 3, stride: 2, padding: 0) : nil))
        }
        downBlocks = downs
        mid = try blocks.mid("encoder.mid_block", x)
        normOut = try blocks.norm("encoder.conv_norm_out", x, silu: true)
        convOut = try blocks.conv("encoder.conv_out", x, 2 * lat, k: 3)
        quantConv = try blocks.conv("quant_conv", 2 * lat, 2 * lat, k: 1)
    }

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
        do { return try self(image) } catch { throw TensorFileError(file: "VAE encoder", .invalidArgument(error.message)) }
    }

    /// `encode` for an image given as `[in_channels, height, width]` values.
    public func encode(pixels: [Float], height: Int, width: Int) throws(TensorFileError) -> (mean: FeatureMap, logvar: FeatureMap) {
        let image: FeatureMap
        do { image = try FeatureMap(c: inChannels, h: height, w: width, data: pixels) } catch {
            throw TensorFileError(file: "VAE encoder", .invalidArgument(error.message))
        }
        return try encode(image)
    }

    public func callAsFunction(_ image: FeatureMap) throws(ComputeError) -> (mean: FeatureMap, logvar: FeatureMap) {
        var x = try convIn.forward(image)
        for block in downBlocks {
            for r in block.resnets { x = try r.forward(x) }
            if let down = block.downsampler { x = try down.forward(try Self.padRightBottom(x)) }
        }
        x = try mid.forward(x)
        x = try convOut.forward(normalizing: x, with: normOut)
        x = try quantConv.forward(x)
        let half = latentChannels * x.h * x.w
        let mean = try FeatureMap(c: latentChannels, h: x.h, w: x.w, data: Array(x.data[0..<half]))
        let logvar = try FeatureMap(c: latentChannels, h: x.h, w: x.w, data: x.data[half...].map { min(max($0, -30), 20) })
        return (mean, logvar)
    }

    /// `x` with one row of zeros below and one column of zeros to the right.
    static func padRightBottom(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        var padded = try FeatureMap(zerosC: x.c, h: x.h + 1, w: x.w + 1)
        let (h, w) = (x.h, x.w)
        x.data.withUnsafeBufferPointer { src in padded.data.withUnsafeMutableBufferPointer { dst in
            guard let s = src.baseAddress, let d = dst.baseAddress else { return }
            for c in 0..<x.c { for i in 0..<h { (d + (c * (h + 1) + i) * (w + 1)).update(from: s + (c * h + i) * w, count: w) } }
        } }
        return padded
    }

    /// The algorithm every convolution uses (`.automatic` unless set; tests force one).
    public var convolutionAlgorithm: ConvAlgorithm {
        get { convIn.algorithm }
        set {
            convIn.algorithm = newValue; convOut.algorithm = newValue; quantConv.algorithm = newValue
            mid.setAlgorithm(newValue)
            for b in downBlocks.indices {
                for r in downBlocks[b].resnets.indices { downBlocks[b].resnets[r].setAlgorithm(newValue) }
                downBlocks[b].downsampler?.algorithm = newValue
            }
        }
    }
}

/// The VAE's ResNet block (group norm eps 1e-6 + SiLU, 3×3 convolutions, no time embedding,
/// a 1×1 shortcut when the channels change).
struct VAEResnet: Sendable {
    var norm1: GroupNorm, conv1: Conv2d, norm2: GroupNorm, conv2: Conv2d
    var shortcut: Conv2d?

    func forward(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        let h = try conv1.forward(normalizing: x, with: norm1)
        var y = try conv2.forward(normalizing: h, with: norm2)
        try y.add(try shortcut?.forward(x) ?? x)
        return y
    }

    mutating func setAlgorithm(_ a: ConvAlgorithm) { conv1.algorithm = a; conv2.algorithm = a; shortcut?.algorithm = a }
}

/// The VAE's single-head self-attention over the `h·w` positions: group norm (no SiLU), the
/// attention with biased projections, plus the input.
struct VAEAttention: Sendable {
    var norm: GroupNorm
    var attention: Attention

    func forward(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        let t = try norm.forward(x).tokens()
        var y = try FeatureMap(tokens: try attention.forward(t), h: x.h, w: x.w)
        try y.add(x)
        return y
    }
}

/// ResNet, attention, ResNet.
struct VAEMidBlock: Sendable {
    var resnet0: VAEResnet, attention: VAEAttention, resnet1: VAEResnet

    func forward(_ x: FeatureMap) throws(ComputeError) -> FeatureMap {
        try resnet1.forward(try attention.forward(try resnet0.forward(x)))
    }

    mutating func setAlgorithm(_ a: ConvAlgorithm) { resnet0.setAlgorithm(a); resnet1.setAlgorithm(a) }
}

/// The VAE's weights (checked against the config by `checkWeights` first) made into layers.
struct VAEBlocks {
    let w: [String: [Float]]
    let groups: Int
    let file: String
    /// Group norm epsilon of every VAE norm.
    static let eps: Float = 1e-6

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

    func p(_ n: String) throws(TensorFileError) -> [Float] {
        guard let v = w[n] else { throw TensorFileError(file: file, tensor: "vae." + n, .tensorNotFound) }
        return v
    }

    func layer<L>(_ n: String, _ make: () throws(ComputeError) -> L) throws(TensorFileError) -> L {
        do { return try make() } catch { throw TensorFileError(file: file, tensor: "vae." + n, .invalidArgument(error.message)) }
    }

    func conv(_ n: String, _ i: Int, _ o: Int, k: Int, stride: Int = 1, padding: Int? = nil) throws(TensorFileError) -> Conv2d {
        let (weight, bias) = (try p(n + ".weight"), try p(n + ".bias"))
        return try layer(n) { () throws(ComputeError) in
            try Conv2d(weight: weight, bias: bias, out: o, in: i, kernel: k, stride: stride, padding: padding ?? k / 2)
        }
    }

    func norm(_ n: String, _ c: Int, silu: Bool) throws(TensorFileError) -> GroupNorm {
        let (weight, bias) = (try p(n + ".weight"), try p(n + ".bias"))
        return try layer(n) { () throws(ComputeError) in
            try GroupNorm(groups: groups, channels: c, eps: Self.eps, weight: weight, bias: bias, silu: silu)
        }
    }

    func linear(_ n: String, _ c: Int) throws(TensorFileError) -> Linear {
        let (weight, bias) = (try p(n + ".weight"), try p(n + ".bias"))
        return try layer(n) { () throws(ComputeError) in try Linear(weight: weight, bias: bias, out: c, in: c) }
    }

    func resnet(_ n: String, _ i: Int, _ o: Int) throws(TensorFileError) -> VAEResnet {
        VAEResnet(norm1: try norm(n + ".norm1", i, silu: true), conv1: try conv(n + ".conv1", i, o, k: 3),
                  norm2: try norm(n + ".norm2", o, silu: true), conv2: try conv(n + ".conv2", o, o, k: 3),
                  shortcut: i != o || w[n + ".conv_shortcut.weight"] != nil ? try conv(n + ".conv_shortcut", i, o, k: 1) : nil)
    }

    func mid(_ n: String, _ c: Int) throws(TensorFileError) -> VAEMidBlock {
        let a = n + ".attentions.0"
        let (q, k, v, o) = (try linear(a + ".to_q", c), try linear(a + ".to_k", c), try linear(a + ".to_v", c), try linear(a + ".to_out.0", c))
        let attention = try layer(a) { () throws(ComputeError) in try Attention(toQ: q, toK: k, toV: v, toOut: o, heads: 1) }
        return VAEMidBlock(resnet0: try resnet(n + ".resnets.0", c, c),
                           attention: VAEAttention(norm: try norm(a + ".group_norm", c, silu: false), attention: attention),
                           resnet1: try resnet(n + ".resnets.1", c, c))
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
    /// Large weights of any base (F32, F16 or BF16) rounded to bfloat16 once at load and held so,
    /// converted to f32 layer by layer when they run: half the resident weight memory of f32. For
    /// `--precision bf16`, whose products round their operands to bfloat16 anyway; in f32 the
    /// weights are simply rounded.
    case bf16PerLayer = "bf16-per-layer"
}
