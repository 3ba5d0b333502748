import Checkpoint
import Dispatch
import Foundation
import SubjectDelta
import TensorFile

/// Options of one generation, with diffusers' `StableDiffusionPipeline.__call__` semantics.
public struct GenerateOptions: Sendable {
    public var prompt: String
    public var negativePrompt: String = ""
    public var steps: Int = 25
    public var cfg: Float = 7.5
    public var seed: UInt64 = 42
    public var sampler: Sampler = .ddim
    public var karras: Bool = false
    public var width: Int = 512
    public var height: Int = 512
    public var batch: Int = 1
    public init(prompt: String) { self.prompt = prompt }
}

/// The samplers, by their common names.
public enum Sampler: String, CaseIterable, Sendable {
    case ddim, euler
    case eulerA = "euler_a"
    case dpmpp2m = "dpmpp_2m"
    case pndm

    var kind: SchedulerKind {
        switch self {
        case .ddim: return .ddim
        case .euler: return .euler
        case .eulerA: return .eulerAncestral
        case .dpmpp2m: return .dpmSolverMultistep
        case .pndm: return .pndm
        }
    }

    /// The name A1111-style metadata uses.
    public var displayName: String {
        switch self {
        case .ddim: return "DDIM"
        case .euler: return "Euler"
        case .eulerA: return "Euler a"
        case .dpmpp2m: return "DPM++ 2M"
        case .pndm: return "PLMS"
        }
    }
}

/// How subjects are applied.
public enum ApplyMode: String, CaseIterable, Sendable { case merge, live }

/// Times of the stages of one generation, in seconds.
public struct Timings: Sendable {
    public var load: Double = 0
    public var textEncoding: Double = 0
    public var unetSteps: [Double] = []
    public var vaeDecode: Double = 0
}

/// Text-to-image with a base and optional subjects: diffusers' StableDiffusionPipeline on the CPU.
public final class StableDiffusion {
    public let base: BaseModel
    public let tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextEncoder
    public let unet: UNet
    public let vae: VAEDecoder
    public private(set) var timings = Timings()
    var live: LiveDelta?

    public init(base: BaseModel, residency: WeightResidency = .f32) throws(TensorFileError) {
        let t0 = Date()
        self.base = base
        tokenizer = try CLIPTokenizer(base: base)
        textEncoder = try CLIPTextEncoder(base: base)
        unet = try UNet(base: base, residency: residency)
        vae = try VAEDecoder(base: base)
        timings.load = Date().timeIntervalSince(t0)
    }

    /// Applies subjects: `merge` adds ΔW to the in-memory weights; `live` adds ΔW·x during the
    /// forward passes (the weights stay untouched, so subjects can be switched for free).
    public func apply(_ subjects: [AppliedSubject], mode: ApplyMode) throws(TensorFileError) {
        guard !subjects.isEmpty else { return }
        switch mode {
        case .merge:
            let cache = BasisCache()
            for s in subjects {
                try s.subject.check(against: base, subjectPath: s.path)
                for l in s.subject.layers {
                    let f = try s.subject.lowRankFactors(l, weight: s.weight, cache: cache)
                    let done = unet.addLowRank(weight: l.target.weightName, up: f.up, down: f.down, rank: f.rank)
                        || textEncoder.addLowRank(weight: l.target.weightName, up: f.up, down: f.down, rank: f.rank)
                    guard done else { throw TensorFileError(file: s.path, tensor: l.target.name, .invalidArgument("the runtime has no such weight")) }
                }
            }
        case .live:
            let d = LiveDelta(base: base)
            try d.activate(subjects)
            live = d
            let hook: (String, UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>) -> Void = { name, x, rows, y in d.apply(weight: name, x: x, rows: rows, into: y) }
            unet.live = hook
            textEncoder.live = hook
        }
    }

    /// Generates `options.batch` images (`[3, height, width]`, values in [-1, 1] before clamping).
    public func generate(_ options: GenerateOptions, progress: ((Int, Int) -> Void)? = nil) throws -> [FeatureMap] {
        let latents = try denoise(options, progress: progress)
        let t0 = Date()
        let (lh, lw) = (options.height / 8, options.width / 8)
        let per = 4 * lh * lw
        var images: [FeatureMap] = []
        for item in 0..<options.batch {
            let z = latents[(item * per)..<((item + 1) * per)].map { $0 / vae.scalingFactor }
            images.append(vae(FeatureMap(c: 4, h: lh, w: lw, data: z)))
        }
        timings.vaeDecode = Date().timeIntervalSince(t0)
        return images
    }

    /// The denoising loop: the final latents of every batch item, `[batch, 4, h/8, w/8]` flat.
    public func denoise(_ options: GenerateOptions, progress: ((Int, Int) -> Void)? = nil) throws -> [Float] {
        guard options.width % 8 == 0, options.height % 8 == 0, options.width > 0, options.height > 0 else {
            throw TensorFileError(file: base.file.path, .invalidArgument("width and height must be positive multiples of 8"))
        }
        guard options.steps >= 1, options.batch >= 1 else { throw TensorFileError(file: base.file.path, .invalidArgument("steps and batch must be at least 1")) }
        guard unet.inChannels == 4 else { throw TensorFileError(file: base.file.path, .invalidArgument("inpainting bases need an image and a mask (not supported by generate yet)")) }
        var t0 = Date()
        // Prompt embeddings: unconditional first, as diffusers concatenates them.
        let cond = try textEncoder.encode(tokenizer.encodePadded(options.prompt, length: 77))
        let doCFG = options.cfg > 1
        let uncond = doCFG ? try textEncoder.encode(tokenizer.encodePadded(options.negativePrompt, length: 77)) : []
        textEncoder.releaseWeights()
        timings.textEncoding = Date().timeIntervalSince(t0)

        guard let sc = base.config("scheduler") else { throw TensorFileError(file: base.file.path, .missingField("components.scheduler.config")) }
        var config = try SchedulerConfig(json: sc)
        if options.karras { config = config.setting("use_karras_sigmas", .bool(true)) }
        if options.sampler == .pndm { config = config.setting("skip_prk_steps", .bool(true)) }
        var scheduler = try makeScheduler(options.sampler.kind, config: config)
        try scheduler.setTimesteps(options.steps)

        let (lh, lw) = (options.height / 8, options.width / 8)
        let per = 4 * lh * lw
        var generator = TorchGenerator(seed: options.seed)
        // diffusers draws all latents of a batch at once from the one generator.
        var latents = generator.randn(count: per * options.batch).map { $0 * scheduler.initNoiseSigma }
        timings.unetSteps = []
        let steps = scheduler.timesteps
        for (i, t) in steps.enumerated() {
            t0 = Date()
            let input = scheduler.scaleModelInput(latents, timestep: t)
            var noise = [Float](repeating: 0, count: latents.count)
            // The batch's items (and the two CFG halves) are independent: two at a time.
            let jobs = options.batch * (doCFG ? 2 : 1)
            final class Results: @unchecked Sendable {
                var items: [FeatureMap?]
                let lock = DispatchSemaphore(value: 1)
                init(_ n: Int) { items = Array(repeating: nil, count: n) }
            }
            let results = Results(jobs)
            let unet = self.unet
            Parallel.forEach(jobs) { j in
                let item = doCFG ? j / 2 : j
                let useCond = !doCFG || j % 2 == 1
                let x = FeatureMap(c: 4, h: lh, w: lw, data: Array(input[(item * per)..<((item + 1) * per)]))
                let y = unet(x, timestep: Float(t), context: useCond ? cond : uncond, contextTokens: 77)
                results.lock.wait()
                results.items[j] = y
                results.lock.signal()
            }
            for item in 0..<options.batch {
                if doCFG {
                    let u = results.items[2 * item]!.data, c = results.items[2 * item + 1]!.data
                    for k in 0..<per { noise[item * per + k] = u[k] + options.cfg * (c[k] - u[k]) }
                } else {
                    noise.replaceSubrange((item * per)..<((item + 1) * per), with: results.items[item]!.data)
                }
            }
            latents = scheduler.step(modelOutput: noise, timestep: t, sample: latents, noise: &generator)
            timings.unetSteps.append(Date().timeIntervalSince(t0))
            progress?(i + 1, steps.count)
        }
        return latents
    }
}

extension TorchGenerator: NoiseSource {}
