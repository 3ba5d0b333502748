import Checkpoint
import Foundation
import TensorFile
#if canImport(Glibc)
import Glibc
#endif

/// Byte counts that saturate at `UInt64.max` instead of overflowing: an estimate computed from a
/// hostile request stays an (enormous) number and is refused like any other.
public struct ByteCount: Comparable, Sendable, CustomStringConvertible {
    public var value: UInt64
    public init(_ value: UInt64) { self.value = value }
    public static let zero = ByteCount(0)
    public static var saturated: ByteCount { ByteCount(UInt64.max) }

    /// `n` f32 values.
    static func floats(_ n: ByteCount) -> ByteCount { n * 4 }
    init(_ n: Int) { value = n < 0 ? 0 : UInt64(n) }

    public static func + (a: ByteCount, b: ByteCount) -> ByteCount {
        let (r, o) = a.value.addingReportingOverflow(b.value)
        return ByteCount(o ? .max : r)
    }
    public static func * (a: ByteCount, b: ByteCount) -> ByteCount {
        let (r, o) = a.value.multipliedReportingOverflow(by: b.value)
        return ByteCount(o ? .max : r)
    }
    static func * (a: ByteCount, b: Int) -> ByteCount { a * ByteCount(b) }
    static func * (a: Int, b: ByteCount) -> ByteCount { ByteCount(a) * b }
    public static func < (a: ByteCount, b: ByteCount) -> Bool { a.value < b.value }

    /// `2.1 GiB`, `512 MiB`; saturated counts read "more than 16 EiB".
    public var description: String {
        if value == .max { return "more than 16 EiB" }
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = Double(value), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        if u == 0 { return "\(value) bytes" }
        return String(format: v < 10 ? "%.1f %@" : "%.0f %@", v, units[u])
    }

    /// Parses `8G`, `512M`, `1.5GiB`, `2000000000` (binary units: K = 1024).
    public init?(parsing text: String) {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        for suffix in ["IB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count { s.removeLast(suffix.count); break }
        var scale: Double = 1
        if let last = s.last, let i = "KMGTP".firstIndex(of: last) {
            scale = pow(1024, Double("KMGTP".distance(from: "KMGTP".startIndex, to: i) + 1))
            s.removeLast()
        }
        guard let x = Double(s), x.isFinite, x > 0 else { return nil }
        let bytes = x * scale
        guard bytes < 1.8e19 else { return nil }
        value = UInt64(bytes)
    }
}

/// How much memory a request may use (spec/runtime.md "Memory limits").
public enum MemoryLimit {
    /// The environment variable that sets the limit (`LIDB_MEMORY_LIMIT=48G`).
    public static let environmentVariable = "LIDB_MEMORY_LIMIT"

    /// Physical memory, or the cgroup's `memory.max` when that is lower (0 when unknown).
    public static var available: ByteCount {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        var limit = pages > 0 && size > 0 ? ByteCount(pages) * ByteCount(size) : .zero
        if let text = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
           let v = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)), v > 0, limit == .zero || v < limit.value {
            limit = ByteCount(v)
        }
        return limit
    }

    /// `explicit` (a command-line value) if given, else `LIDB_MEMORY_LIMIT`, else `available`.
    /// An unreadable value is an error naming where it came from.
    public static func resolve(_ explicit: String? = nil, option: String = "--memory-limit") throws(TensorFileError) -> ByteCount {
        if let explicit {
            guard let b = ByteCount(parsing: explicit) else {
                throw TensorFileError(file: option, .invalidArgument("'\(explicit)' is not a size (e.g. 16G, 512M, or bytes)"))
            }
            return b
        }
        if let env = ProcessInfo.processInfo.environment[environmentVariable] {
            guard let b = ByteCount(parsing: env) else {
                throw TensorFileError(file: environmentVariable, .invalidArgument("'\(env)' is not a size (e.g. 16G, 512M, or bytes)"))
            }
            return b
        }
        return available
    }
}

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
    public static func generation(base: BaseModel, configs: PipelineConfigs, width: Int, height: Int, batch: Int, guidance: Bool,
                                  residency: WeightResidency = .f32, cores: Int = Parallel.cores) -> MemoryEstimate {
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

    /// Weights under `prefixes` as the runtime keeps them, plus two tensors in conversion.
    static func weights(_ base: BaseModel, prefixes: [String], residency: WeightResidency) -> ByteCount {
        var sum = ByteCount.zero, largest = ByteCount.zero
        for t in base.file.tensors where prefixes.contains(where: { t.name.hasPrefix($0) }) {
            let n = t.shape.reduce(ByteCount(1)) { $0 * ByteCount($1) }
            let keptHalf = residency == .f16PerLayer && t.dtype == .F16 && t.name.hasPrefix("unet.") && n.value >= 4096
            sum = sum + n * (keptHalf ? 2 : 4)
            largest = Swift.max(largest, n * 4)
        }
        return sum + largest * 2
    }

    /// Scratch of one convolution over `n` positions with `c` channels: an im2col band or the
    /// three Winograd buffers, each at most `Ops.im2colBudget` floats.
    static func convScratch(_ c: Int, _ n: ByteCount) -> ByteCount {
        let budget = ByteCount(Ops.im2colBudget)
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
                let queries = Swift.min(n, ByteCount(UNet.attentionChunk))
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
