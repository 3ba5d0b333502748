/// The shape of a diffusers `UNet2DConditionModel` in SD 1.x/2.x configurations: plain numbers
/// and flags, from which `UNetNetwork` builds its layers and names its weights (spec/compute.md §7).
public struct UNetArchitecture: Sendable, Equatable {
    /// `block_out_channels`: one entry per resolution level of the down path.
    public var blockChannels: [Int]
    /// ResNet blocks per down level (the up path has one more per level).
    public var layersPerBlock: Int
    /// Whether each down level (`CrossAttnDownBlock2D`) and each up level in up-path order
    /// (`CrossAttnUpBlock2D`) has a transformer after every ResNet block.
    public var downAttention: [Bool], upAttention: [Bool]
    /// Attention heads per down level (the up path uses them reversed, the middle block the last).
    public var heads: [Int]
    /// Transformer blocks per `Transformer2DModel` (`transformer_layers_per_block`; 1 for SD).
    public var transformerDepth: Int
    /// Group-norm groups, and the epsilon of the ResNet and output group norms (`norm_eps`).
    public var groups: Int
    public var eps: Float
    /// The transformers' group norm epsilon (diffusers: 1e-6) and the blocks' layer norm epsilon (1e-5).
    public var transformerNormEps: Float
    public var layerNormEps: Float
    public var inChannels: Int, outChannels: Int
    /// Features per text token (`cross_attention_dim`).
    public var contextDim: Int
    /// The GEGLU feed-forward's inner size is `feedForwardMultiplier · channels` (4 in SD).
    public var feedForwardMultiplier: Int
    /// Timestep features (`flip_sin_to_cos`, `freq_shift`).
    public var flipSinToCos: Bool
    public var freqShift: Float
    /// SD 2.x's linear `proj_in`/`proj_out` (`[c, c]`) instead of SD 1.x's 1×1 convolutions
    /// (`[c, c, 1, 1]`): the same matrix, the same number of values.
    public var linearProjection: Bool

    public init(blockChannels: [Int], layersPerBlock: Int, downAttention: [Bool], upAttention: [Bool], heads: [Int],
                transformerDepth: Int = 1, groups: Int, eps: Float, transformerNormEps: Float = 1e-6, layerNormEps: Float = 1e-5,
                inChannels: Int, outChannels: Int, contextDim: Int, feedForwardMultiplier: Int = 4,
                flipSinToCos: Bool = true, freqShift: Float = 0, linearProjection: Bool) {
        self.blockChannels = blockChannels; self.layersPerBlock = layersPerBlock
        self.downAttention = downAttention; self.upAttention = upAttention; self.heads = heads
        self.transformerDepth = transformerDepth; self.groups = groups; self.eps = eps
        self.transformerNormEps = transformerNormEps; self.layerNormEps = layerNormEps
        self.inChannels = inChannels; self.outChannels = outChannels; self.contextDim = contextDim
        self.feedForwardMultiplier = feedForwardMultiplier; self.flipSinToCos = flipSinToCos; self.freqShift = freqShift
        self.linearProjection = linearProjection
    }

    /// Upper bounds that keep every derived size far from overflow and within BLAS's 32 bits.
    public static let maxLevels = 8, maxChannels = 1 << 14, maxLayers = 64, maxDepth = 64, maxMultiplier = 64

    /// Time-embedding channels (`4 · block_out_channels[0]`; 0 for an architecture without
    /// levels or whose first level is too wide, which `validate()` refuses).
    public var timeEmbeddingChannels: Int {
        let (v, overflow) = (blockChannels.first ?? 0).multipliedReportingOverflow(by: 4)
        return overflow ? 0 : v
    }

    /// Throws a `ComputeError` naming the field unless every number is in range and the sizes
    /// chain (channels divisible by the groups and by the heads, an even number of timestep
    /// features, every weight's size within BLAS's 32-bit range).
    public func validate() throws(ComputeError) {
        func fail(_ field: String, _ problem: String) -> ComputeError { ComputeError("UNet architecture: \(field) \(problem)") }
        let n = blockChannels.count
        guard (1...Self.maxLevels).contains(n) else { throw fail("blockChannels", "has \(n) levels, expected 1…\(Self.maxLevels)") }
        for (i, c) in blockChannels.enumerated() where !(1...Self.maxChannels).contains(c) {
            throw fail("blockChannels[\(i)]", "is \(c), expected 1…\(Self.maxChannels)")
        }
        guard (1...Self.maxLayers).contains(layersPerBlock) else { throw fail("layersPerBlock", "is \(layersPerBlock), expected 1…\(Self.maxLayers)") }
        guard downAttention.count == n else { throw fail("downAttention", "has \(downAttention.count) entries for \(n) levels") }
        guard upAttention.count == n else { throw fail("upAttention", "has \(upAttention.count) entries for \(n) levels") }
        guard heads.count == n else { throw fail("heads", "has \(heads.count) entries for \(n) levels") }
        for (i, h) in heads.enumerated() {
            guard h >= 1, blockChannels[i] % h == 0 else { throw fail("heads[\(i)]", "is \(h): must be positive and divide \(blockChannels[i]) channels") }
        }
        guard (1...Self.maxDepth).contains(transformerDepth) else { throw fail("transformerDepth", "is \(transformerDepth), expected 1…\(Self.maxDepth)") }
        guard groups >= 1 else { throw fail("groups", "is \(groups), expected at least 1") }
        if let bad = blockChannels.first(where: { $0 % groups != 0 }) { throw fail("groups", "(\(groups)) does not divide \(bad) channels") }
        for (field, e) in [("eps", eps), ("transformerNormEps", transformerNormEps), ("layerNormEps", layerNormEps)] {
            guard e.isFinite, e > 0 else { throw fail(field, "is \(e), expected a finite number above 0") }
        }
        guard (1...Self.maxChannels).contains(inChannels) else { throw fail("inChannels", "is \(inChannels), expected 1…\(Self.maxChannels)") }
        guard (1...Self.maxChannels).contains(outChannels) else { throw fail("outChannels", "is \(outChannels), expected 1…\(Self.maxChannels)") }
        guard (1...Self.maxChannels).contains(contextDim) else { throw fail("contextDim", "is \(contextDim), expected 1…\(Self.maxChannels)") }
        guard (1...Self.maxMultiplier).contains(feedForwardMultiplier) else {
            throw fail("feedForwardMultiplier", "is \(feedForwardMultiplier), expected 1…\(Self.maxMultiplier)")
        }
        guard blockChannels[0] % 2 == 0 else { throw fail("blockChannels[0]", "is \(blockChannels[0]): the timestep features need an even number") }
        guard freqShift.isFinite, freqShift != Float(blockChannels[0] / 2) else { throw fail("freqShift", "is \(freqShift)") }
        // Every weight's size, checked (the largest: the GEGLU projection and the up path's first convolution).
        for (name, count) in try weightSizes() { _ = try Size.blas(count, what: "UNet weight \(name)") }
    }

    /// Every weight `UNetNetwork` reads, named as diffusers names them (without `unet.`), with its
    /// number of values, in the network's order.
    public func expectedWeights() throws(ComputeError) -> [(name: String, count: Int)] {
        try validate()
        return try layout().weights
    }

    /// Every layer `UNetNetwork` holds as a `Linear` (the names of `UNetNetwork.linearNames`,
    /// without `.weight`), with its `[out, in]`: what a delta term for the layer must match, known
    /// without loading a weight.
    public func linearShapes() throws(ComputeError) -> [String: (out: Int, in: Int)] {
        try validate()
        var shapes: [String: (out: Int, in: Int)] = [:]
        for l in try layout().linears { shapes[l.name] = (l.out, l.in) }
        return shapes
    }

    /// Input channels of every ResNet block of the up path (the previous output plus the skip
    /// connection it is concatenated with), `[level][block]`.
    var upResnetInputs: [[Int]] {
        var skips = [blockChannels[0]], x = blockChannels[0]
        for (b, ch) in blockChannels.enumerated() {
            for _ in 0..<layersPerBlock { x = ch; skips.append(ch) }
            if b < blockChannels.count - 1 { skips.append(ch) }
        }
        var out: [[Int]] = []
        for ch in blockChannels.reversed() {
            var level: [Int] = []
            for _ in 0...layersPerBlock {
                level.append(x + (skips.popLast() ?? 0))
                x = ch
            }
            out.append(level)
        }
        return out
    }

    func weightSizes() throws(ComputeError) -> [(name: String, count: Int)] { try layout().weights }

    private func layout() throws(ComputeError) -> (weights: [(name: String, count: Int)], linears: [(name: String, out: Int, in: Int)]) {
        var out: [(name: String, count: Int)] = []
        var linears: [(name: String, out: Int, in: Int)] = []
        func p(_ f: Int...) throws(ComputeError) -> Int {
            var r = 1
            for x in f {
                let (v, o) = r.multipliedReportingOverflow(by: x)
                guard !o, x >= 0 else { throw ComputeError("UNet architecture: a weight size overflows") }
                r = v
            }
            return r
        }
        func add(_ n: String, _ weight: Int, _ bias: Int?) {
            out.append((n + ".weight", weight))
            if let bias { out.append((n + ".bias", bias)) }
        }
        func linear(_ n: String, _ o: Int, _ i: Int, bias: Bool) throws(ComputeError) {
            add(n, try p(o, i), bias ? o : nil)
            linears.append((n, o, i))
        }
        let c0 = blockChannels[0], temb = try p(4, c0)
        func resnet(_ n: String, _ i: Int, _ o: Int) throws(ComputeError) {
            add(n + ".norm1", i, i); add(n + ".conv1", try p(o, i, 9), o); try linear(n + ".time_emb_proj", o, temb, bias: true)
            add(n + ".norm2", o, o); add(n + ".conv2", try p(o, o, 9), o)
            if i != o { add(n + ".conv_shortcut", try p(o, i), o) }
        }
        func transformer(_ n: String, _ c: Int) throws(ComputeError) {
            let inner = try p(feedForwardMultiplier, c)
            add(n + ".norm", c, c); try linear(n + ".proj_in", c, c, bias: true)
            for k in 0..<transformerDepth {
                let b = n + ".transformer_blocks.\(k)"
                add(b + ".norm1", c, c)
                for x in ["to_q", "to_k", "to_v"] { try linear(b + ".attn1." + x, c, c, bias: false) }
                try linear(b + ".attn1.to_out.0", c, c, bias: true)
                add(b + ".norm2", c, c)
                try linear(b + ".attn2.to_q", c, c, bias: false)
                for x in ["to_k", "to_v"] { try linear(b + ".attn2." + x, c, contextDim, bias: false) }
                try linear(b + ".attn2.to_out.0", c, c, bias: true)
                add(b + ".norm3", c, c)
                try linear(b + ".ff.net.0.proj", try p(2, inner), c, bias: true); try linear(b + ".ff.net.2", c, inner, bias: true)
            }
            try linear(n + ".proj_out", c, c, bias: true)
        }
        try linear("time_embedding.linear_1", temb, c0, bias: true); try linear("time_embedding.linear_2", temb, temb, bias: true)
        add("conv_in", try p(c0, inChannels, 9), c0)
        var x = c0
        for (b, ch) in blockChannels.enumerated() {
            for r in 0..<layersPerBlock {
                try resnet("down_blocks.\(b).resnets.\(r)", x, ch)
                x = ch
                if downAttention[b] { try transformer("down_blocks.\(b).attentions.\(r)", ch) }
            }
            if b < blockChannels.count - 1 { add("down_blocks.\(b).downsamplers.0.conv", try p(ch, ch, 9), ch) }
        }
        try resnet("mid_block.resnets.0", x, x); try transformer("mid_block.attentions.0", x); try resnet("mid_block.resnets.1", x, x)
        for (b, ch) in blockChannels.reversed().enumerated() {
            for (r, i) in upResnetInputs[b].enumerated() {
                try resnet("up_blocks.\(b).resnets.\(r)", i, ch)
                if upAttention[b] { try transformer("up_blocks.\(b).attentions.\(r)", ch) }
            }
            if b < blockChannels.count - 1 { add("up_blocks.\(b).upsamplers.0.conv", try p(ch, ch, 9), ch) }
        }
        add("conv_norm_out", c0, c0); add("conv_out", try p(outChannels, c0, 9), outChannels)
        return (out, linears)
    }
}
