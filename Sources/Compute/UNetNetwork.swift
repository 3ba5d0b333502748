/// diffusers' `UNet2DConditionModel` (SD 1.x/2.x configurations) composed of Compute's typed
/// layers: forward, and a backward that accumulates the gradients of the delta terms attached to
/// its `Linear` layers and returns `∂loss/∂context` (spec/compute.md §7).
///
/// The block order is that of diffusers (and of `Diffusion.UNet`): `conv_in`; per down level the
/// ResNet blocks (each followed by a transformer on cross-attention levels), then a stride-2
/// convolution except on the last level, every block output kept as a skip connection; the middle
/// block (ResNet, transformer, ResNet); per up level `layersPerBlock + 1` ResNet blocks on the
/// channel concatenation of the running map and the most recent unused skip (each followed by a
/// transformer on cross-attention levels), then 2× nearest upsampling + a 3×3 convolution except
/// on the last level; `conv_norm_out` + SiLU, `conv_out`. When a latent side is not a multiple of
/// `2^(levels − 1)`, the upsampling resizes to the size of the skip it is concatenated with next.
public struct UNetNetwork: Sendable {
    public let architecture: UNetArchitecture
    var timeEmbedding: TimestepEmbedding
    var convIn: Conv2d
    var down: [DownLevel]
    var mid: MidBlock
    var up: [UpLevel]
    var normOut: GroupNorm
    var convOut: Conv2d
    let index: LinearIndex<UNetNetwork>

    struct DownLevel: Sendable {
        var resnets: [ResnetBlock2D]
        var attentions: [Transformer2D]
        var downsampler: Conv2d?
    }

    struct MidBlock: Sendable {
        var resnet0: ResnetBlock2D
        var attention: Transformer2D
        var resnet1: ResnetBlock2D
    }

    struct UpLevel: Sendable {
        var resnets: [ResnetBlock2D]
        var attentions: [Transformer2D]
        var upsampler: Conv2d?
    }

    /// Builds the network from `weights`, which returns a weight's values by its diffusers name
    /// without `unet.` (`down_blocks.0.resnets.0.conv1.weight`). Throws a `ComputeError` for an
    /// invalid architecture or a weight of another size than the architecture needs (naming it),
    /// and whatever `weights` throws (a missing weight).
    public init(architecture arch: UNetArchitecture, weights: (String) throws -> [Float]) throws {
        try self.init(architecture: arch, values: { .f32(try weights($0)) })
    }

    /// The same, with weights as held (`WeightValues`): the `Linear` and `Conv2d` weights keep
    /// F16 values as given (converted each time they are used); every other tensor (norms,
    /// biases) is converted to binary32 once.
    public init(architecture arch: UNetArchitecture, values: (String) throws -> WeightValues) throws {
        let expected = try arch.expectedWeights()
        _ = Parallel.allocatorConfigured  // activations are freed and reallocated every step
        var sizes: [String: Int] = [:]
        for (n, c) in expected { sizes[n] = c }
        func held(_ name: String) throws -> WeightValues {
            let v = try values(name)
            let want = sizes[name] ?? 0
            guard v.count == want else { throw ComputeError("UNet weight \(name): \(v.count) values, expected \(want)") }
            return v
        }
        func load(_ name: String) throws -> [Float] { try held(name).floats }
        func linear(_ n: String, out: Int, in inDim: Int, bias: Bool = true) throws -> Linear {
            try Linear(values: try held(n + ".weight"), bias: bias ? try load(n + ".bias") : nil, out: out, in: inDim)
        }
        func conv(_ n: String, out: Int, in inDim: Int, kernel k: Int, stride: Int = 1) throws -> Conv2d {
            try Conv2d(values: try held(n + ".weight"), bias: try load(n + ".bias"), out: out, in: inDim, kernel: k, stride: stride, padding: k / 2)
        }
        func groupNorm(_ n: String, _ c: Int, eps: Float, silu: Bool) throws -> GroupNorm {
            try GroupNorm(groups: arch.groups, channels: c, eps: eps, weight: try load(n + ".weight"), bias: try load(n + ".bias"), silu: silu)
        }
        func layerNorm(_ n: String, _ c: Int) throws -> LayerNorm {
            try LayerNorm(channels: c, eps: arch.layerNormEps, weight: try load(n + ".weight"), bias: try load(n + ".bias"))
        }
        let temb = arch.timeEmbeddingChannels
        func resnet(_ n: String, _ i: Int, _ o: Int) throws -> ResnetBlock2D {
            try ResnetBlock2D(norm1: try groupNorm(n + ".norm1", i, eps: arch.eps, silu: true),
                              conv1: try conv(n + ".conv1", out: o, in: i, kernel: 3),
                              timeEmbProj: try linear(n + ".time_emb_proj", out: o, in: temb),
                              norm2: try groupNorm(n + ".norm2", o, eps: arch.eps, silu: true),
                              conv2: try conv(n + ".conv2", out: o, in: o, kernel: 3),
                              shortcut: i != o ? try conv(n + ".conv_shortcut", out: o, in: i, kernel: 1) : nil)
        }
        func transformer(_ n: String, _ c: Int, heads: Int) throws -> Transformer2D {
            let inner = arch.feedForwardMultiplier * c, ctx = arch.contextDim
            let norm = try groupNorm(n + ".norm", c, eps: arch.transformerNormEps, silu: false)
            let projIn = try linear(n + ".proj_in", out: c, in: c)
            var blocks: [BasicTransformerBlock] = []
            for k in 0..<arch.transformerDepth {
                let b = n + ".transformer_blocks.\(k)"
                let attn1 = try Attention(toQ: try linear(b + ".attn1.to_q", out: c, in: c, bias: false),
                                          toK: try linear(b + ".attn1.to_k", out: c, in: c, bias: false),
                                          toV: try linear(b + ".attn1.to_v", out: c, in: c, bias: false),
                                          toOut: try linear(b + ".attn1.to_out.0", out: c, in: c), heads: heads)
                let attn2 = try Attention(toQ: try linear(b + ".attn2.to_q", out: c, in: c, bias: false),
                                          toK: try linear(b + ".attn2.to_k", out: c, in: ctx, bias: false),
                                          toV: try linear(b + ".attn2.to_v", out: c, in: ctx, bias: false),
                                          toOut: try linear(b + ".attn2.to_out.0", out: c, in: c), heads: heads)
                blocks.append(try BasicTransformerBlock(norm1: try layerNorm(b + ".norm1", c), attn1: attn1,
                                                        norm2: try layerNorm(b + ".norm2", c), attn2: attn2,
                                                        norm3: try layerNorm(b + ".norm3", c),
                                                        ff: try GEGLU(proj: try linear(b + ".ff.net.0.proj", out: 2 * inner, in: c)),
                                                        ffOut: try linear(b + ".ff.net.2", out: c, in: inner)))
            }
            return try Transformer2D(norm: norm, projIn: projIn, blocks: blocks, projOut: try linear(n + ".proj_out", out: c, in: c))
        }

        let ch = arch.blockChannels, c0 = ch[0], levels = ch.count
        architecture = arch
        timeEmbedding = try TimestepEmbedding(linear1: try linear("time_embedding.linear_1", out: temb, in: c0),
                                              linear2: try linear("time_embedding.linear_2", out: temb, in: temb),
                                              flipSinToCos: arch.flipSinToCos, freqShift: arch.freqShift)
        convIn = try conv("conv_in", out: c0, in: arch.inChannels, kernel: 3)
        var downLevels: [DownLevel] = []
        var x = c0
        for b in 0..<levels {
            var level = DownLevel(resnets: [], attentions: [], downsampler: nil)
            for r in 0..<arch.layersPerBlock {
                level.resnets.append(try resnet("down_blocks.\(b).resnets.\(r)", x, ch[b]))
                x = ch[b]
                if arch.downAttention[b] { level.attentions.append(try transformer("down_blocks.\(b).attentions.\(r)", ch[b], heads: arch.heads[b])) }
            }
            if b < levels - 1 { level.downsampler = try conv("down_blocks.\(b).downsamplers.0.conv", out: ch[b], in: ch[b], kernel: 3, stride: 2) }
            downLevels.append(level)
        }
        down = downLevels
        mid = MidBlock(resnet0: try resnet("mid_block.resnets.0", x, x),
                       attention: try transformer("mid_block.attentions.0", x, heads: arch.heads[levels - 1]),
                       resnet1: try resnet("mid_block.resnets.1", x, x))
        let upChannels = Array(ch.reversed()), upHeads = Array(arch.heads.reversed()), upInputs = arch.upResnetInputs
        var upLevels: [UpLevel] = []
        for b in 0..<levels {
            var level = UpLevel(resnets: [], attentions: [], upsampler: nil)
            for (r, i) in upInputs[b].enumerated() {
                level.resnets.append(try resnet("up_blocks.\(b).resnets.\(r)", i, upChannels[b]))
                if arch.upAttention[b] {
                    level.attentions.append(try transformer("up_blocks.\(b).attentions.\(r)", upChannels[b], heads: upHeads[b]))
                }
            }
            if b < levels - 1 { level.upsampler = try conv("up_blocks.\(b).upsamplers.0.conv", out: upChannels[b], in: upChannels[b], kernel: 3) }
            upLevels.append(level)
        }
        up = upLevels
        normOut = try groupNorm("conv_norm_out", c0, eps: arch.eps, silu: true)
        convOut = try conv("conv_out", out: arch.outChannels, in: c0, kernel: 3)
        index = Self.linearIndex(down: downLevels, up: upLevels, depth: arch.transformerDepth)
    }

    // MARK: - Delta terms

    /// The names of every `Linear` layer (diffusers names without `unet.` and `.weight`), in the
    /// network's order: the time embedding, then per block its time projection or its
    /// transformer's `proj_in`, attention projections, feed-forward and `proj_out`.
    public var linearNames: [String] { index.names }

    /// The `Linear` layer named `name`, or nil.
    public func linear(named name: String) -> Linear? { index.paths[name].map { self[keyPath: $0] } }

    /// Adds `term` to the adapter slot of the layer named `name`; throws for an unknown name or a
    /// term of another shape than the layer's `[out × in]`.
    public mutating func attach(_ term: any DeltaTerm, to name: String) throws(ComputeError) {
        guard let path = index.paths[name] else { throw ComputeError("UNet: no linear layer named '\(name)'") }
        do { try self[keyPath: path].attach(term) } catch { throw ComputeError("UNet layer \(name): \(error.message)") }
    }

    /// Removes every delta term.
    public mutating func detachAllTerms() {
        for p in index.paths.values { self[keyPath: p].detachTerms() }
    }

    /// Merges `terms` into the weight of the layer named `name` (`Linear.addWeightDeltas`: one
    /// rounding per weight; an F16-held weight becomes binary32). Throws for an unknown name, a
    /// term of another shape or a result that is not finite, changing nothing.
    public mutating func addWeightDeltas(_ terms: [any DeltaTerm], to name: String, sign: Float = 1) throws(ComputeError) {
        guard let path = index.paths[name] else { throw ComputeError("UNet: no linear layer named '\(name)'") }
        do { try self[keyPath: path].addWeightDeltas(terms, sign: sign) } catch { throw ComputeError("UNet layer \(name): \(error.message)") }
    }

    /// The algorithm every convolution uses (`.automatic` unless set; tests force `.winograd`
    /// or `.direct` for a whole model).
    public var convolutionAlgorithm: ConvAlgorithm {
        get { convIn.algorithm }
        set {
            func resnet(_ r: inout ResnetBlock2D) {
                r.conv1.algorithm = newValue; r.conv2.algorithm = newValue; r.shortcut?.algorithm = newValue
            }
            convIn.algorithm = newValue; convOut.algorithm = newValue
            for b in down.indices {
                for r in down[b].resnets.indices { resnet(&down[b].resnets[r]) }
                down[b].downsampler?.algorithm = newValue
            }
            resnet(&mid.resnet0); resnet(&mid.resnet1)
            for b in up.indices {
                for r in up[b].resnets.indices { resnet(&up[b].resnets[r]) }
                up[b].upsampler?.algorithm = newValue
            }
        }
    }

    /// How many values of `Linear` and `Conv2d` weights are held as F16 (converted per use).
    public var halfWeightCount: Int {
        var n = 0
        func conv(_ c: Conv2d?) { if let c, c.values.isHalf { n += c.values.count } }
        func resnet(_ r: ResnetBlock2D) { conv(r.conv1); conv(r.conv2); conv(r.shortcut) }
        conv(convIn); conv(convOut)
        for l in down { l.resnets.forEach(resnet); conv(l.downsampler) }
        resnet(mid.resnet0); resnet(mid.resnet1)
        for l in up { l.resnets.forEach(resnet); conv(l.upsampler) }
        for p in index.paths.values where self[keyPath: p].values.isHalf { n += self[keyPath: p].values.count }
        return n
    }

    static func linearIndex(down: [DownLevel], up: [UpLevel], depth: Int) -> LinearIndex<UNetNetwork> {
        var table: [(String, WritableKeyPath<UNetNetwork, Linear>)] = [
            ("time_embedding.linear_1", \.timeEmbedding.linear1), ("time_embedding.linear_2", \.timeEmbedding.linear2),
        ]
        func resnet(_ n: String, _ p: WritableKeyPath<UNetNetwork, ResnetBlock2D>) {
            table.append((n + ".time_emb_proj", p.appending(path: \ResnetBlock2D.timeEmbProj)))
        }
        let attentions: [(String, WritableKeyPath<BasicTransformerBlock, Attention>)] = [("attn1", \BasicTransformerBlock.attn1),
                                                                                        ("attn2", \BasicTransformerBlock.attn2)]
        let projections: [(String, WritableKeyPath<Attention, Linear>)] = [("to_q", \Attention.toQ), ("to_k", \Attention.toK),
                                                                           ("to_v", \Attention.toV), ("to_out.0", \Attention.toOut)]
        func transformer(_ n: String, _ p: WritableKeyPath<UNetNetwork, Transformer2D>) {
            table.append((n + ".proj_in", p.appending(path: \Transformer2D.projIn)))
            for k in 0..<depth {
                let b: WritableKeyPath<UNetNetwork, BasicTransformerBlock> = p.appending(path: \Transformer2D.blocks[k])
                let bn = n + ".transformer_blocks.\(k)"
                for (an, ap) in attentions {
                    let a: WritableKeyPath<UNetNetwork, Attention> = b.appending(path: ap)
                    for (pn, pp) in projections { table.append((bn + "." + an + "." + pn, a.appending(path: pp))) }
                }
                table.append((bn + ".ff.net.0.proj", b.appending(path: \BasicTransformerBlock.ff.proj)))
                table.append((bn + ".ff.net.2", b.appending(path: \BasicTransformerBlock.ffOut)))
            }
            table.append((n + ".proj_out", p.appending(path: \Transformer2D.projOut)))
        }
        for (b, level) in down.enumerated() {
            for r in level.resnets.indices {
                resnet("down_blocks.\(b).resnets.\(r)", \UNetNetwork.down[b].resnets[r])
                if r < level.attentions.count { transformer("down_blocks.\(b).attentions.\(r)", \UNetNetwork.down[b].attentions[r]) }
            }
        }
        resnet("mid_block.resnets.0", \UNetNetwork.mid.resnet0)
        transformer("mid_block.attentions.0", \UNetNetwork.mid.attention)
        resnet("mid_block.resnets.1", \UNetNetwork.mid.resnet1)
        for (b, level) in up.enumerated() {
            for r in level.resnets.indices {
                resnet("up_blocks.\(b).resnets.\(r)", \UNetNetwork.up[b].resnets[r])
                if r < level.attentions.count { transformer("up_blocks.\(b).attentions.\(r)", \UNetNetwork.up[b].attentions[r]) }
            }
        }
        return LinearIndex(table)
    }

    // MARK: - Forward

    /// The block inputs a backward pass keeps from its forward (gradient checkpointing); every
    /// block recomputes its own intermediates from them.
    struct Checkpoints {
        var features: Matrix, temb: Matrix
        /// Skip connections in the order they are made: `conv_in`'s output, each down-level block
        /// output, each downsampler output. The input of every down block is the latest of them.
        var skips: [FeatureMap] = []
        /// Per down level, the input of each transformer (its ResNet block's output).
        var downAttentionInputs: [[FeatureMap]] = []
        var midAttentionInput: FeatureMap?, midResnet1Input: FeatureMap?
        /// Per up level, the running map each ResNet block concatenates with its skip, and each
        /// transformer's input.
        var upInputs: [[FeatureMap]] = []
        var upAttentionInputs: [[FeatureMap]] = []
        var upsamplerInputs: [FeatureMap?] = []
        /// The input of `conv_norm_out`.
        var outputInput: FeatureMap?
        /// What each transformer's forward kept for its backward (`Transformer2D.Saved`), laid out
        /// as the attention inputs: the blocks' attention forwards are not recomputed.
        var downAttentionSaved: [[Transformer2D.Saved]] = [], upAttentionSaved: [[Transformer2D.Saved]] = []
        var midAttentionSaved: Transformer2D.Saved?
        /// Each ResNet block's middle map (`ResnetBlock2D.forwardKeeping`), laid out as the blocks:
        /// the backward does not recompute their first convolution.
        var downMiddles: [[FeatureMap]] = [], upMiddles: [[FeatureMap]] = [], midMiddles: [FeatureMap] = []
    }

    /// A ResNet block's forward; with `keep`, its middle map is appended to `middles`.
    private static func resnet(_ block: ResnetBlock2D, _ x: consuming FeatureMap, temb: Matrix, keep: Bool,
                               into middles: inout [FeatureMap]) throws(ComputeError) -> FeatureMap {
        guard keep else { return try block.forward(consume x, temb: temb) }
        let r = try block.forwardKeeping(x, temb: temb)
        middles.append(r.middle)
        return r.output
    }

    /// A transformer's forward; with `keep`, what it keeps for the backward is appended to `saved`.
    private static func attend(_ t: Transformer2D, _ x: FeatureMap, context: Matrix, keep: Bool,
                               into saved: inout [Transformer2D.Saved]) throws(ComputeError) -> FeatureMap {
        guard keep else { return try t.forward(x, context: context) }
        let r = try t.forwardKeeping(x, context: context)
        saved.append(r.saved)
        return r.output
    }

    /// `sample` `[in, h, w]` (one batch item), `context` `[text tokens × contextDim]`: the
    /// predicted `[out, h, w]`.
    public func forward(_ sample: FeatureMap, timestep: Float, context: Matrix) throws(ComputeError) -> FeatureMap {
        try evaluate(sample, timestep: timestep, context: context, keep: false).output
    }

    func checkInputs(_ sample: FeatureMap, timestep: Float, context: Matrix) throws(ComputeError) {
        try sample.validate("UNet sample", channels: architecture.inChannels)
        guard sample.h > 0, sample.w > 0 else { throw ComputeError("UNet sample: \(sample.h) × \(sample.w) has no positions") }
        guard timestep.isFinite else { throw ComputeError("UNet timestep \(timestep) is not finite") }
        try context.validate("UNet context", cols: architecture.contextDim)
        guard context.rows > 0 else { throw ComputeError("UNet context: no text tokens") }
    }

    private func evaluate(_ sample: FeatureMap, timestep: Float, context: Matrix, keep: Bool) throws(ComputeError) -> (output: FeatureMap, saved: Checkpoints) {
        try checkInputs(sample, timestep: timestep, context: context)
        let features = try timeEmbedding.features([timestep])
        let temb = try timeEmbedding.forward(features)
        var cp = Checkpoints(features: features, temb: temb)
        var x = try convIn.forward(sample)
        cp.skips.append(x)
        for level in down {
            var attentionInputs: [FeatureMap] = [], attentionSaved: [Transformer2D.Saved] = [], middles: [FeatureMap] = []
            for r in level.resnets.indices {
                x = try Self.resnet(level.resnets[r], x, temb: temb, keep: keep, into: &middles)
                if r < level.attentions.count {
                    if keep { attentionInputs.append(x) }
                    x = try Self.attend(level.attentions[r], x, context: context, keep: keep, into: &attentionSaved)
                }
                cp.skips.append(x)
            }
            if keep { cp.downAttentionInputs.append(attentionInputs); cp.downAttentionSaved.append(attentionSaved); cp.downMiddles.append(middles) }
            if let ds = level.downsampler {
                x = try ds.forward(x)
                cp.skips.append(x)
            }
        }
        var midMiddles: [FeatureMap] = []
        x = try Self.resnet(mid.resnet0, x, temb: temb, keep: keep, into: &midMiddles)
        if keep { cp.midAttentionInput = x }
        var midSaved: [Transformer2D.Saved] = []
        x = try Self.attend(mid.attention, x, context: context, keep: keep, into: &midSaved)
        cp.midAttentionSaved = midSaved.first
        if keep { cp.midResnet1Input = x }
        x = try Self.resnet(mid.resnet1, x, temb: temb, keep: keep, into: &midMiddles)
        cp.midMiddles = midMiddles
        var remaining = cp.skips.count
        for level in up {
            var inputs: [FeatureMap] = [], attentionInputs: [FeatureMap] = [], attentionSaved: [Transformer2D.Saved] = []
            var middles: [FeatureMap] = []
            for r in level.resnets.indices {
                guard remaining > 0 else { throw ComputeError("UNet: the up path has more blocks than skip connections") }
                remaining -= 1
                if keep { inputs.append(x) }
                var joined = try Self.concatenate(x, cp.skips[remaining])
                if !keep {
                    // A forward alone frees each skip and the block's input once joined: the
                    // block then holds only the joined map (and frees it before its conv2).
                    cp.skips[remaining] = Self.empty
                    x = Self.empty
                }
                x = try Self.resnet(level.resnets[r], consume joined, temb: temb, keep: keep, into: &middles)
                if r < level.attentions.count {
                    if keep { attentionInputs.append(x) }
                    x = try Self.attend(level.attentions[r], x, context: context, keep: keep, into: &attentionSaved)
                }
            }
            if keep { cp.upInputs.append(inputs); cp.upAttentionInputs.append(attentionInputs); cp.upAttentionSaved.append(attentionSaved); cp.upMiddles.append(middles) }
            if let us = level.upsampler {
                guard remaining > 0 else { throw ComputeError("UNet: an upsampler has no skip connection to match") }
                let next = cp.skips[remaining - 1]
                if keep { cp.upsamplerInputs.append(x) }
                x = try Self.upsample(us, x, h: next.h, w: next.w)
            } else if keep {
                cp.upsamplerInputs.append(nil)
            }
        }
        if keep { cp.outputInput = x }
        return (try convOut.forward(normalizing: x, with: normOut), cp)
    }

    static let empty = FeatureMap(checkedC: 0, h: 0, w: 0, data: [])

    /// 2× nearest upsampling then the convolution; to `h × w` by nearest resizing when that is
    /// not twice the input (a side that is not a multiple of `2^(levels − 1)`).
    static func upsample(_ conv: Conv2d, _ x: FeatureMap, h: Int, w: Int) throws(ComputeError) -> FeatureMap {
        if h == 2 * x.h && w == 2 * x.w { return try conv.forward(upsampling: x) }
        return try conv.forward(try ResizeNearest.forward(x, h: h, w: w))
    }

    /// `[a; b]` along the channels.
    static func concatenate(_ a: FeatureMap, _ b: FeatureMap) throws(ComputeError) -> FeatureMap {
        guard a.h == b.h, a.w == b.w else { throw ComputeError("UNet: a skip connection of \(b.h) × \(b.w) for a map of \(a.h) × \(a.w)") }
        let c = try Size.sum(a.c, b.c, what: "UNet skip concatenation")
        let n = try Size.product(c, a.h, a.w, what: "UNet skip concatenation")
        var data = [Float]()
        data.reserveCapacity(n)
        data.append(contentsOf: a.data)
        data.append(contentsOf: b.data)
        return FeatureMap(checkedC: c, h: a.h, w: a.w, data: data)
    }

    /// The gradient of a concatenation split back into its two parts (`first` channels, the rest).
    static func split(_ g: FeatureMap, first c1: Int) -> (FeatureMap, FeatureMap) {
        let n1 = c1 * g.h * g.w
        return (FeatureMap(checkedC: c1, h: g.h, w: g.w, data: Array(g.data[0..<n1])),
                FeatureMap(checkedC: g.c - c1, h: g.h, w: g.w, data: Array(g.data[n1...])))
    }

    // MARK: - Backward

    /// Accumulates the factor gradients of every trainable delta term for `∂loss/∂output` =
    /// `gradOutput`, and returns `∂loss/∂context` when `contextGradient` (nil otherwise).
    ///
    /// One forward keeps each block's input and the skip connections (`Checkpoints`); then the
    /// blocks run backward in reverse order, each recomputing its own intermediates. The gradient
    /// of a skip connection is the up-path ResNet block's input gradient for the skip's channels;
    /// it is added where the skip was made. The time embedding's gradient is summed over every
    /// ResNet block and passed back through its MLP (to the sinusoidal features, where it stops).
    /// No gradient reaches the frozen base weights or the sample.
    public func backward(gradOutput: FeatureMap, sample: FeatureMap, timestep: Float, context: Matrix,
                         contextGradient: Bool) throws(ComputeError) -> Matrix? {
        try checkInputs(sample, timestep: timestep, context: context)
        try gradOutput.validate("UNet output gradient", channels: architecture.outChannels)
        guard gradOutput.h == sample.h, gradOutput.w == sample.w else {
            throw ComputeError("UNet output gradient: \(gradOutput.h) × \(gradOutput.w) for a sample of \(sample.h) × \(sample.w)")
        }
        var (_, cp) = try evaluate(sample, timestep: timestep, context: context, keep: true)
        return try backward(gradOutput: gradOutput, checkpoints: &cp, context: context, contextGradient: contextGradient)
    }

    /// A training evaluation in one pass: the forward (keeping the checkpoints), `lossGradient`
    /// turns its output into `∂loss/∂output`, then the backward of `backward(gradOutput:…)` —
    /// without the second forward that calling `forward` and `backward` separately costs.
    /// Returns the output and, when `contextGradient`, `∂loss/∂context`.
    public func forwardBackward(_ sample: FeatureMap, timestep: Float, context: Matrix, contextGradient: Bool,
                                lossGradient: (FeatureMap) throws -> FeatureMap) throws -> (output: FeatureMap, context: Matrix?) {
        var (output, cp) = try evaluate(sample, timestep: timestep, context: context, keep: true)
        let gradOutput = try lossGradient(output)
        try gradOutput.validate("UNet output gradient", channels: architecture.outChannels)
        guard gradOutput.h == output.h, gradOutput.w == output.w else {
            throw ComputeError("UNet output gradient: \(gradOutput.h) × \(gradOutput.w) for an output of \(output.h) × \(output.w)")
        }
        let g = try backward(gradOutput: gradOutput, checkpoints: &cp, context: context, contextGradient: contextGradient)
        return (output, g)
    }

    private func backward(gradOutput: FeatureMap, checkpoints cp: inout Checkpoints, context: Matrix,
                          contextGradient: Bool) throws(ComputeError) -> Matrix? {
        guard let last = cp.outputInput, let midAttentionInput = cp.midAttentionInput, let midResnet1Input = cp.midResnet1Input else {
            throw ComputeError("UNet backward: the forward kept no checkpoints")
        }
        var gctx: Matrix?
        func addContext(_ g: Matrix?) throws(ComputeError) {
            guard let g else { return }
            if gctx == nil { gctx = g } else { try gctx?.add(g) }
        }
        var gtemb = try Matrix(zeros: 1, cols: architecture.timeEmbeddingChannels)
        let temb = cp.temb
        // conv_out ← conv_norm_out (+ SiLU).
        var g = try normOut.backward(gradOutput: try convOut.backward(gradOutput: gradOutput, inputHeight: last.h, inputWidth: last.w), input: last)
        cp.outputInput = nil
        // The up path, last level first; skip gradients in the reverse order of their use.
        var skipGradients = [FeatureMap?](repeating: nil, count: cp.skips.count)
        var used = 0
        for b in up.indices.reversed() {
            let level = up[b]
            if let us = level.upsampler, b < cp.upsamplerInputs.count, let input = cp.upsamplerInputs[b] {
                let gu = try us.backward(gradOutput: g, inputHeight: g.h, inputWidth: g.w)
                g = g.h == 2 * input.h && g.w == 2 * input.w ? try UpsampleNearest2x.backward(gradOutput: gu)
                    : try ResizeNearest.backward(gradOutput: gu, inputHeight: input.h, inputWidth: input.w)
            }
            for r in level.resnets.indices.reversed() {
                if r < level.attentions.count {
                    let saved = b < cp.upAttentionSaved.count && r < cp.upAttentionSaved[b].count ? cp.upAttentionSaved[b][r] : nil
                    let t = try level.attentions[r].backward(gradOutput: g, input: cp.upAttentionInputs[b][r], context: context,
                                                             contextGradient: contextGradient, saved: saved)
                    g = t.input
                    try addContext(t.context)
                }
                guard used < cp.skips.count else { throw ComputeError("UNet backward: more up blocks than skip connections") }
                let x = cp.upInputs[b][r]
                let middle = b < cp.upMiddles.count && r < cp.upMiddles[b].count ? cp.upMiddles[b][r] : nil
                let t = try level.resnets[r].backward(gradOutput: g, input: try Self.concatenate(x, cp.skips[used]), temb: temb, middle: middle)
                try gtemb.add(t.temb)
                let (gx, gskip) = Self.split(t.input, first: x.c)
                g = gx
                skipGradients[used] = gskip
                used += 1
            }
            cp.upInputs[b] = []; cp.upAttentionInputs[b] = []; cp.upsamplerInputs[b] = nil
            if b < cp.upAttentionSaved.count { cp.upAttentionSaved[b] = [] }
            if b < cp.upMiddles.count { cp.upMiddles[b] = [] }
        }
        // The middle block.
        let midMiddles = cp.midMiddles.count == 2 ? cp.midMiddles : [FeatureMap?](repeating: nil, count: 2)
        cp.midMiddles = []
        var t = try mid.resnet1.backward(gradOutput: g, input: midResnet1Input, temb: temb, middle: midMiddles[1])
        try gtemb.add(t.temb)
        let m = try mid.attention.backward(gradOutput: t.input, input: midAttentionInput, context: context, contextGradient: contextGradient,
                                           saved: cp.midAttentionSaved)
        cp.midAttentionSaved = nil
        try addContext(m.context)
        guard let midInput = cp.skips.last else { throw ComputeError("UNet backward: no skip connections") }
        t = try mid.resnet0.backward(gradOutput: m.input, input: midInput, temb: temb, middle: midMiddles[0])
        try gtemb.add(t.temb)
        g = t.input
        // The down path, last block first: each block's output is a skip connection, whose
        // gradient from the up path joins here; each block's input is the previous skip.
        var made = cp.skips.count - 1
        func joinSkip() throws(ComputeError) {
            if let s = skipGradients[made] { try g.add(s); skipGradients[made] = nil }
        }
        for b in down.indices.reversed() {
            let level = down[b]
            if let ds = level.downsampler {
                try joinSkip()
                let input = cp.skips[made - 1]
                g = try ds.backward(gradOutput: g, inputHeight: input.h, inputWidth: input.w)
                cp.skips[made] = Self.empty
                made -= 1
            }
            for r in level.resnets.indices.reversed() {
                try joinSkip()
                if r < level.attentions.count {
                    let saved = b < cp.downAttentionSaved.count && r < cp.downAttentionSaved[b].count ? cp.downAttentionSaved[b][r] : nil
                    let a = try level.attentions[r].backward(gradOutput: g, input: cp.downAttentionInputs[b][r], context: context,
                                                             contextGradient: contextGradient, saved: saved)
                    g = a.input
                    try addContext(a.context)
                }
                let middle = b < cp.downMiddles.count && r < cp.downMiddles[b].count ? cp.downMiddles[b][r] : nil
                let rb = try level.resnets[r].backward(gradOutput: g, input: cp.skips[made - 1], temb: temb, middle: middle)
                try gtemb.add(rb.temb)
                g = rb.input
                cp.skips[made] = Self.empty
                made -= 1
            }
            cp.downAttentionInputs[b] = []
            if b < cp.downAttentionSaved.count { cp.downAttentionSaved[b] = [] }
            if b < cp.downMiddles.count { cp.downMiddles[b] = [] }
        }
        // `g` (+ the first skip's gradient) is the gradient at conv_in's output; the sample needs none.
        // The time embedding's MLP: its delta terms, if any, get their gradients.
        _ = try timeEmbedding.backward(gradOutput: gtemb, input: cp.features)
        guard contextGradient else { return nil }
        if let gctx { return gctx }
        return try Matrix(zeros: context.rows, cols: context.cols)
    }
}

/// Names of a network's `Linear` layers and the key paths that reach them. Key paths are
/// immutable values, safe to share between threads.
struct LinearIndex<Root>: @unchecked Sendable {
    let names: [String]
    let paths: [String: WritableKeyPath<Root, Linear>]

    init(_ table: [(String, WritableKeyPath<Root, Linear>)]) {
        names = table.map(\.0)
        var p: [String: WritableKeyPath<Root, Linear>] = [:]
        for (n, k) in table { p[n] = k }
        paths = p
    }
}
