import CLidbSupport

/// diffusers' `ResnetBlock2D` (SD's configuration: group norm + SiLU, 3×3 convolutions, a time
/// embedding projection added per channel, an optional 1×1 shortcut, output scale 1):
/// `y = shortcut(x) + conv2(GN2SiLU(conv1(GN1SiLU(x)) + time_emb_proj(SiLU(temb))))`.
public struct ResnetBlock2D: Sendable {
    public var norm1: GroupNorm, conv1: Conv2d, timeEmbProj: Linear, norm2: GroupNorm, conv2: Conv2d
    public var shortcut: Conv2d?

    public init(norm1: GroupNorm, conv1: Conv2d, timeEmbProj: Linear, norm2: GroupNorm, conv2: Conv2d, shortcut: Conv2d?) throws(ComputeError) {
        let (i, o) = (conv1.inChannels, conv1.outChannels)
        guard norm1.silu, norm2.silu else { throw ComputeError("resnet block: both group norms are followed by SiLU") }
        guard norm1.channels == i, timeEmbProj.outFeatures == o, norm2.channels == o, conv2.inChannels == o, conv2.outChannels == o else {
            throw ComputeError("resnet block: channel counts do not chain (\(i) → \(o))")
        }
        guard conv1.stride == 1, conv2.stride == 1, conv1.kernel == 2 * conv1.padding + 1, conv2.kernel == 2 * conv2.padding + 1 else {
            throw ComputeError("resnet block: convolutions must keep the size")
        }
        if let s = shortcut {
            guard s.inChannels == i, s.outChannels == o, s.kernel == 1, s.stride == 1, s.padding == 0 else {
                throw ComputeError("resnet block: the shortcut must be a 1×1 convolution \(i) → \(o)")
            }
        } else if i != o { throw ComputeError("resnet block: \(i) → \(o) channels needs a shortcut") }
        self.norm1 = norm1; self.conv1 = conv1; self.timeEmbProj = timeEmbProj; self.norm2 = norm2; self.conv2 = conv2; self.shortcut = shortcut
    }

    /// `conv1(GN1SiLU(x)) + time_emb_proj(SiLU(temb))`: the input of `norm2`.
    private func middle(_ x: FeatureMap, temb: Matrix) throws(ComputeError) -> (h: FeatureMap, tembSiLU: Matrix) {
        try temb.validate("resnet block time embedding", cols: timeEmbProj.inFeatures)
        guard temb.rows == 1 else { throw ComputeError("resnet block: \(temb.rows) time embeddings for one item") }
        var h = try conv1.forward(normalizing: x, with: norm1)
        let ts = Activation.silu.forward(temb)
        let tp = try timeEmbProj.forward(ts)
        let hw = h.h * h.w, c = h.c
        h.data.withMutableBase { hb in tp.data.withBase { lidb_add_channel_bias(hb, $0, c, hw) } }
        return (h, ts)
    }

    /// `x` `[in, h, w]`, `temb` `[1 × temb channels]`. The shortcut is taken before `conv2`
    /// so that an input handed over (`consume`) is freed while `conv2` runs; the same sum.
    public func forward(_ x: consuming FeatureMap, temb: Matrix) throws(ComputeError) -> FeatureMap {
        let h = try middle(x, temb: temb).h
        let s: FeatureMap
        if let shortcut { s = try shortcut.forward(x) } else { s = copy x }
        x = FeatureMap(checkedC: 0, h: 0, w: 0, data: [])
        var y = try conv2.forward(normalizing: h, with: norm2)
        try y.add(s)
        return y
    }

    /// `∂loss/∂x` and `∂loss/∂temb`, recomputing the block's forward from `x` and `temb`.
    /// The forward and its middle map (`conv1`'s output plus the time projection, the input of
    /// `norm2`): what the backward would otherwise recompute with `conv1`.
    func forwardKeeping(_ x: FeatureMap, temb: Matrix) throws(ComputeError) -> (output: FeatureMap, middle: FeatureMap) {
        let h = try middle(x, temb: temb).h
        var y = try conv2.forward(normalizing: h, with: norm2)
        try y.add(try shortcut?.forward(x) ?? x)
        return (y, h)
    }

    public func backward(gradOutput gy: FeatureMap, input x: FeatureMap, temb: Matrix) throws(ComputeError) -> (input: FeatureMap, temb: Matrix) {
        try backward(gradOutput: gy, input: x, temb: temb, middle: nil)
    }

    /// The same, with the middle map the forward kept (`forwardKeeping`) instead of recomputing it.
    func backward(gradOutput gy: FeatureMap, input x: FeatureMap, temb: Matrix,
                  middle kept: FeatureMap?) throws(ComputeError) -> (input: FeatureMap, temb: Matrix) {
        let h: FeatureMap, ts: Matrix
        if let kept {
            try temb.validate("resnet block time embedding", cols: timeEmbProj.inFeatures)
            guard temb.rows == 1 else { throw ComputeError("resnet block: \(temb.rows) time embeddings for one item") }
            guard kept.c == conv1.outChannels, kept.h == x.h, kept.w == x.w else {
                throw ComputeError("resnet block: a kept middle map of \(kept.c) × \(kept.h) × \(kept.w) for an input of \(x.h) × \(x.w)")
            }
            (h, ts) = (kept, Activation.silu.forward(temb))
        } else {
            (h, ts) = try middle(x, temb: temb)
        }
        let ga2 = try conv2.backward(gradOutput: gy, inputHeight: h.h, inputWidth: h.w)
        let gh = try norm2.backward(gradOutput: ga2, input: h)
        // The time projection was added to every position of its channel.
        let hw = gh.h * gh.w
        var gtp = [Float](repeating: 0, count: gh.c)
        gh.data.withBase { gb in
            for c in 0..<gh.c {
                var s: Double = 0
                for i in 0..<hw { s += Double(gb[c * hw + i]) }
                gtp[c] = Float(s)
            }
        }
        let gts = try timeEmbProj.backward(gradOutput: Matrix(checkedRows: 1, cols: gh.c, data: gtp), input: ts)
        let gtemb = try Activation.silu.backward(gradOutput: gts, input: temb)
        let ga1 = try conv1.backward(gradOutput: gh, inputHeight: x.h, inputWidth: x.w)
        var gx = try norm1.backward(gradOutput: ga1, input: x)
        if let shortcut {
            try gx.add(try shortcut.backward(gradOutput: gy, inputHeight: x.h, inputWidth: x.w))
        } else {
            try gx.add(gy)
        }
        return (gx, gtemb)
    }
}
