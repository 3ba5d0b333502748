import Compute
import Checkpoint
import Foundation
import TensorFile
#if canImport(Glibc)
import Glibc
#endif

/// An estimate of the peak memory of a generation (or of UNet evaluations), from the base's
/// configs and tensor table and the request alone — computed before any weight is loaded, so that
/// an impossible request is refused while the process is still small. The terms follow what the
/// runtime holds at its peak (spec/runtime.md "Memory limits"); it is meant to err on the high
/// side by a few tens of per cent, not to be exact.
public struct MemoryEstimate: Sendable {
    /// Weights as they are held while running (f32, or F16 for `.f16PerLayer`), plus the largest
    /// tensors being converted at load.
    public var weights: ByteCount
    /// Latents of the batch and the scheduler's copies of them.
    public var latents: ByteCount
    /// The larger of: the concurrent UNet evaluations' activations; the VAE decoder's
    /// activations plus the decoded images and their PNG encoding.
    public var activations: ByteCount
    /// The process itself (code, libraries, BLAS buffers, allocator slack).
    public static let overhead = ByteCount(64 << 20)

    public var total: ByteCount { Self.overhead + weights + latents + activations }

    /// Refuses the request when `total` exceeds `limit`, saying what it would need.
    public func check(limit: ByteCount, what: String, file: String) throws(TensorFileError) {
        guard total > limit else { return }
        throw TensorFileError(file: file, .invalidArgument(
            "\(what) would need about \(total) of memory (weights \(weights), activations \(activations + latents)); "
            + "the limit is \(limit) (set --memory-limit or \(MemoryLimit.environmentVariable) to raise it)"))
    }

    /// A whole generation: `batch` images of `height × width` pixels.
    /// `staged`: the pipeline holds one network at a time (`StableDiffusion(staged: true)`), so
    /// the peak is the largest of the three stages' weights plus activations.
    public static func generation(base: BaseModel, configs: PipelineConfigs, width: Int, height: Int, batch: Int, guidance: Bool,
                                  residency: WeightResidency = .f32, staged: Bool = false, cores: Int = Parallel.cores) -> MemoryEstimate {
        let f = configs.vae.scaleFactor
        let lh = Swift.max(height / f, 1), lw = Swift.max(width / f, 1)
        let jobs = ByteCount(batch) * (guidance ? 2 : 1)
        let concurrent = Swift.min(jobs, ByteCount(Swift.max(cores, 1)))
        let latent = ByteCount.floats(ByteCount(batch) * ByteCount(configs.unet.outChannels) * ByteCount(lh) * ByteCount(lw))
        // The latents, the scaled input, the guided noise, the UNet outputs of every job (two per
        // item with guidance), the scheduler's history (up to four for PLMS) and its temporaries.
        let latents = latent * 12
        let unet = concurrent * unetEvaluation(configs.unet, lh: lh, lw: lw, contextTokens: PipelineConfigs.promptTokens)
        let text = textEncoding(configs.text)
        let pixels = ByteCount(height) * ByteCount(width)
        // Decoded images stay until every one is written: f32 [3, H, W] each, then 8-bit RGB and
        // its PNG encoding (about two more copies) for one at a time.
        let images = ByteCount.floats(ByteCount(batch) * 3 * pixels) + pixels * 3 * 3
        let decode = vaeDecoding(configs.vae, lh: lh, lw: lw) + images
        if staged {
            let stages = [
                MemoryEstimate(weights: weights(base, prefixes: ["text_encoder."], residency: residency), latents: .zero, activations: text),
                MemoryEstimate(weights: weights(base, prefixes: ["unet."], residency: residency), latents: latents, activations: unet),
                MemoryEstimate(weights: weights(base, prefixes: ["vae.decoder.", "vae.post_quant_conv."], residency: residency),
                               latents: latents, activations: decode),
            ]
            return stages.max { $0.total < $1.total } ?? stages[1]
        }
        return MemoryEstimate(weights: weights(base, prefixes: ["unet.", "text_encoder.", "vae.decoder.", "vae.post_quant_conv."], residency: residency),
                              latents: latents, activations: Swift.max(unet, decode, text))
    }

    /// `batch` UNet evaluations at `latent × latent`, as `lidb bench unet` runs them.
    public static func unetEvaluations(base: BaseModel, configs: PipelineConfigs, latent: Int, batch: Int,
                                       residency: WeightResidency = .f32, cores: Int = Parallel.cores) -> MemoryEstimate {
        let concurrent = Swift.min(ByteCount(batch), ByteCount(Swift.max(cores, 1)))
        let per = ByteCount(configs.unet.outChannels) * ByteCount(latent) * ByteCount(latent)
        let inputs = ByteCount.floats(ByteCount(batch) * (per * 2 + ByteCount(PipelineConfigs.promptTokens * configs.unet.contextDim)))
        return MemoryEstimate(weights: weights(base, prefixes: ["unet."], residency: residency), latents: inputs,
                              activations: concurrent * unetEvaluation(configs.unet, lh: latent, lw: latent, contextTokens: PipelineConfigs.promptTokens))
    }

    /// One training step of `lidb finetune` at `resolution²` pixels: the UNet, text-encoder and
    /// VAE-encoder weights (the UNet's as `residency` keeps them, the others f32); the VAE encoder's activations on the photo; for the UNet's
    /// backward with per-block recomputation, the block inputs kept by the forward (about twice
    /// the skip connections) plus one block's forward intermediates and their gradients (counted as
    /// four evaluations' working sets, plus the attention backward's blocks of scores).
    public static func training(base: BaseModel, configs: PipelineConfigs, resolution: Int,
                                residency: WeightResidency = .f32) -> MemoryEstimate {
        let f = configs.vae.scaleFactor
        let l = Swift.max(resolution / f, 1)
        let n = ByteCount(l) * ByteCount(l)
        let latent = ByteCount.floats(ByteCount(configs.unet.outChannels) * n)
        let evaluation = unetEvaluation(configs.unet, lh: l, lw: l, contextTokens: PipelineConfigs.promptTokens)
        // The attention backward works on blocks of query rows: two score blocks per thread.
        let scores = ByteCount.floats(2 * ByteCount(Swift.max(Parallel.cores, 1)) * Swift.min(n, ByteCount(ScaledDotProductAttention.chunk)) * n)
        let encode = vaeDecoding(configs.vae, lh: l, lw: l) + ByteCount.floats(6 * ByteCount(resolution) * ByteCount(resolution))
        let backward = evaluation * 4 + scores + textEncoding(configs.text) * 4 + transformerStates(configs.unet, lh: l, lw: l)
        return MemoryEstimate(weights: weights(base, prefixes: ["unet.", "text_encoder.", "vae.encoder.", "vae.quant_conv."], residency: residency),
                              latents: latent * 16, activations: Swift.max(backward, encode))
    }

    /// What a training forward keeps of every transformer for the backward (`Transformer2D.Saved`):
    /// per block its input, the residual stream after each attention and each attention's result
    /// before `to_out` — five `[positions × channels]` maps per transformer block.
    static func transformerStates(_ c: UNetConfig, lh: Int, lw: Int) -> ByteCount {
        var (h, w) = (lh, lw)
        var total = ByteCount.zero
        let levels = c.channels.count
        for (b, ch) in c.channels.enumerated() {
            let map = ByteCount.floats(5 * ByteCount(ch) * ByteCount(h) * ByteCount(w))
            var transformers = 0
            if c.downAttention[b] { transformers += c.layersPerBlock }
            // diffusers' up blocks run from the lowest resolution: up block `levels − 1 − b` is at level `b`.
            if c.upAttention[levels - 1 - b] { transformers += c.layersPerBlock + 1 }
            if b == levels - 1 { transformers += 1 }  // the middle block's
            total = total + map * ByteCount(transformers)
            (h, w) = ((h + 1) / 2, (w + 1) / 2)
        }
        return total
    }

    /// Weights under `prefixes` as the runtime keeps them, plus two tensors in conversion.
    static func weights(_ base: BaseModel, prefixes: [String], residency: WeightResidency) -> ByteCount {
        var sum = ByteCount.zero, largest = ByteCount.zero
        for t in base.file.tensors where prefixes.contains(where: { t.name.hasPrefix($0) }) {
            let n = t.shape.reduce(ByteCount(1)) { $0 * ByteCount($1) }
            let keptHalf = n.value >= 4096 && (residency == .f16PerLayer && WeightLoader.keptHalf(t, prefix: "unet.", minimumCount: 4096)
                || residency == .bf16PerLayer && WeightLoader.keptBFloat16(t, prefix: "unet.", minimumCount: 4096))
            sum = sum + n * (keptHalf ? 2 : 4)
            largest = Swift.max(largest, n * 4)
        }
        return sum + largest * 2
    }

    /// Scratch of one convolution over `n` positions with `c` channels: an im2col band or the
    /// three Winograd buffers, each at most `Conv2d`'s budget (4 Mi) floats.
    static func convScratch(_ c: Int, _ n: ByteCount) -> ByteCount {
        let budget = ByteCount(Conv2d.budget)
        return ByteCount.floats(Swift.min(budget, 9 * ByteCount(c) * n) + 3 * Swift.min(budget, 4 * ByteCount(c) * n))
    }

    /// One UNet evaluation at an `lh × lw` latent: the skip connections kept for the up path, plus
    /// the largest level's working set — a ResNet block's input (on the up path also the
    /// concatenation), its normalised copy and outputs; a transformer's token copies, q/k/v, a
    /// block of attention scores and a band of the feed-forward.
    static func unetEvaluation(_ c: UNetConfig, lh: Int, lw: Int, contextTokens: Int) -> ByteCount {
        var sizes: [ByteCount] = []
        var (h, w) = (lh, lw)
        for _ in c.channels {
            sizes.append(ByteCount(h) * ByteCount(w))
            (h, w) = ((h + 1) / 2, (w + 1) / 2)
        }
        var skips = ByteCount(c.channels[0]) * sizes[0]
        var peak = ByteCount.zero
        for (b, ch) in c.channels.enumerated() {
            let n = sizes[b]
            skips = skips + ByteCount(c.layersPerBlock) * ByteCount(ch) * n
            if b + 1 < c.channels.count { skips = skips + ByteCount(ch) * sizes[b + 1] }
            let next = b + 1 < c.channels.count ? c.channels[b + 1] : ch
            var level = ByteCount.floats((3 * ByteCount(next) + 5 * ByteCount(ch)) * n) + convScratch(next + ch, n)
            if c.downAttention[b] || c.upAttention[b] || b + 1 == c.channels.count {
                let queries = Swift.min(n, ByteCount(ScaledDotProductAttention.chunk))
                level = level + ByteCount.floats(9 * ByteCount(ch) * n + queries * n + Swift.min(n, ByteCount(1024)) * ByteCount(contextTokens) + ByteCount(4 << 20))
            }
            peak = Swift.max(peak, level)
        }
        return ByteCount.floats(skips) + peak
    }

    /// The VAE decoder at an `lh × lw` latent: the mid block's single-head attention over every
    /// latent position (a block of 1,024 query rows of scores), and per up level a ResNet block's
    /// input, normalised copies and outputs, or the upsampler's input, 2× copy and output.
    static func vaeDecoding(_ c: VAEConfig, lh: Int, lw: Int) -> ByteCount {
        let rev = Array(c.channels.reversed())
        let nLatent = ByteCount(lh) * ByteCount(lw)
        let top = ByteCount(rev[0])
        var peak = ByteCount.floats(7 * top * nLatent + Swift.min(nLatent, ByteCount(1024)) * nLatent)
        var n = nLatent, cin = rev[0]
        for (b, ch) in rev.enumerated() {
            peak = Swift.max(peak, ByteCount.floats((2 * ByteCount(cin) + 3 * ByteCount(ch)) * n) + convScratch(Swift.max(cin, ch), n))
            if b + 1 < rev.count {
                peak = Swift.max(peak, ByteCount.floats(ByteCount(ch) * n + 2 * ByteCount(ch) * n * 4) + convScratch(ch, n * 4))
                n = n * 4
            }
            cin = ch
        }
        return peak
    }

    /// The text encoder on one prompt (its weights are counted with the others).
    static func textEncoding(_ c: TextEncoderConfig) -> ByteCount {
        let t = ByteCount(PipelineConfigs.promptTokens)
        return ByteCount.floats(t * (ByteCount(c.hidden) * 10 + ByteCount(c.intermediate) * 2) + t * t)
    }
}
