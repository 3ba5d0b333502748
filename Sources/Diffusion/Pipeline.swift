import Compute
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

    /// Largest width or height in pixels.
    public static let maxSide = 16384
    /// The guidance scales accepted (`cfg ≤ 1` disables guidance, as in diffusers).
    public static let cfgRange: ClosedRange<Float> = 0...100

    /// Checks that need no base: every number finite and in range. Errors name the option.
    public func validate() throws(TensorFileError) {
        guard cfg.isFinite, Self.cfgRange.contains(cfg) else {
            throw TensorFileError(file: "--cfg", .invalidArgument("\(cfg) is not a guidance scale in \(Int(Self.cfgRange.lowerBound))…\(Int(Self.cfgRange.upperBound))"))
        }
        guard steps >= 1 else { throw TensorFileError(file: "--steps", .invalidArgument("\(steps) steps: at least 1")) }
        guard batch >= 1 else { throw TensorFileError(file: "--batch", .invalidArgument("\(batch) images: at least 1")) }
        for (name, v) in [("--width", width), ("--height", height)] where v < 1 || v > Self.maxSide {
            throw TensorFileError(file: name, .invalidArgument("\(v) pixels: must be 1…\(Self.maxSide)"))
        }
    }

    /// `validate()`, then the checks that depend on the base: sizes are multiples of the VAE's
    /// scale factor, `steps` at most the schedule's training timesteps, a text-to-image UNet.
    public func validate(for configs: PipelineConfigs, file: String) throws(TensorFileError) {
        try validate()
        let f = configs.vae.scaleFactor
        for (name, v) in [("--width", width), ("--height", height)] where v % f != 0 {
            throw TensorFileError(file: name, .invalidArgument(
                "\(v) pixels: width and height must be multiples of \(f) (this base's VAE has \(configs.vae.channels.count) blocks: \(f) pixels per latent)"))
        }
        let train = (try? configs.scheduler.int("num_train_timesteps", default: 1000)) ?? 1000
        guard steps <= train else {
            throw TensorFileError(file: "--steps", .invalidArgument("\(steps) steps: at most the scheduler's num_train_timesteps (\(train))"))
        }
        guard configs.unet.inChannels == 4 else {
            throw TensorFileError(file: file, .invalidArgument("inpainting bases need an image and a mask (not supported by generate yet)"))
        }
        // The schedule itself (cheap: no weights): one whose stepping would go wrong is refused
        // here, before anything is loaded (spec/runtime.md, "Schedules").
        do {
            var scheduler = try makeScheduler(sampler.kind, config: schedulerConfig(configs.scheduler))
            try scheduler.setTimesteps(steps)
        } catch {
            throw TensorFileError(file: file, .invalidArgument("components.scheduler.config with --sampler \(sampler.rawValue)\(karras ? " --karras" : ""): \(error)"))
        }
    }

    /// The base's scheduler config as this request uses it (`--karras`; PNDM as PLMS).
    func schedulerConfig(_ config: SchedulerConfig) -> SchedulerConfig {
        var c = config
        if karras { c = c.setting("use_karras_sigmas", .bool(true)) }
        if sampler == .pndm { c = c.setting("skip_prk_steps", .bool(true)) }
        return c
    }
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
    /// Loads made during `generate` by a staged pipeline (the UNet after text encoding, the VAE
    /// decoder after denoising).
    public var stagedLoad: Double = 0
    public var textEncoding: Double = 0
    public var unetSteps: [Double] = []
    public var vaeDecode: Double = 0
}

/// Text-to-image with a base and optional subjects: diffusers' StableDiffusionPipeline on the CPU.
/// The text encoder and the UNet are `Compute`'s networks; subjects become `Compute` delta terms
/// (`Subject.deltaTerms`), merged into the networks' weights or attached to their layers.
public final class StableDiffusion {
    public let base: BaseModel
    public let tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextEncoder
    public let unet: PipelineUNet
    /// The VAE decoder while loaded.
    private var decoder: VAEDecoder?
    /// Whether the weights are loaded in stages, each network only while it runs (see `init`).
    public let staged: Bool
    /// The base's configs, validated before any weight was loaded.
    public let configs: PipelineConfigs
    public let residency: WeightResidency
    /// Requests whose estimated peak memory exceeds this are refused (`MemoryLimit.resolve()`
    /// by default: `LIDB_MEMORY_LIMIT`, else the machine's memory).
    public var memoryLimit: ByteCount
    public private(set) var timings = Timings()
    /// Bases generated from subjects' seeds, kept for switching subjects.
    public let basisCache = BasisCache()

    /// Loads the base. `staged: false` loads every network now and keeps the UNet and the VAE
    /// decoder resident across generations (the text encoder is released after each encoding and
    /// reloaded by the next). `staged: true` holds one network at a time, so the peak is the
    /// UNet's weights plus its activations rather than the sum of the three networks: the text
    /// encoder is loaded now and released after encoding, the UNet is loaded after the text is
    /// encoded and released after the last step, the VAE decoder is loaded for decoding and
    /// released after it. Each reload replays the merges and attached terms, so every generation
    /// gives the same images either way; a staged pipeline pays the loads again per generation
    /// (what a one-shot command wants, not a server).
    public init(base: BaseModel, residency: WeightResidency = .f32, staged: Bool = false) throws(TensorFileError) {
        let t0 = Date()
        self.base = base
        self.residency = residency
        self.staged = staged
        configs = try PipelineConfigs(base: base)
        memoryLimit = try MemoryLimit.resolve()
        tokenizer = try CLIPTokenizer(base: base)
        textEncoder = try CLIPTextEncoder(base: base)
        unet = try PipelineUNet(base: base, residency: residency, load: !staged)
        decoder = staged ? nil : try VAEDecoder(base: base)
        timings.load = Date().timeIntervalSince(t0)
    }

    /// The VAE decoder, loaded when it is not.
    public func vaeDecoder() throws(TensorFileError) -> VAEDecoder {
        if let decoder { return decoder }
        let d = try VAEDecoder(base: base)
        decoder = d
        return d
    }

    /// Applies subjects, each at its weight, as the same delta terms either way (spec/runtime.md):
    /// `merge` adds their ΔW to the in-memory weights — all subjects' ΔW of a weight summed and
    /// added with one rounding, as `lidb merge` does — and accumulates over calls; `live` attaches
    /// the terms to the layers (the weights untouched), replacing the subjects attached before
    /// (switching is detaching and attaching terms). Every subject is checked, and every layer
    /// found in the networks with its shape, before anything changes; errors name the subject and
    /// the layer. A merged weight that would not be finite is refused (that weight unchanged; the
    /// layers merged before it stay merged).
    public func apply(_ subjects: [AppliedSubject], mode: ApplyMode) throws(TensorFileError) {
        var perLayer: [String: [any DeltaTerm]] = [:]
        var order: [(layer: TargetLayer, path: String)] = []
        for s in subjects {
            try s.validate()
            try s.subject.check(against: base, subjectPath: s.path)
            var subject = s.subject
            if subject.source.isEmpty { subject.source = s.path }
            for (layer, term) in try subject.deltaTerms(weight: s.weight, cache: basisCache) {
                if perLayer[layer.name] == nil { order.append((layer, s.path)) }
                perLayer[layer.name, default: []].append(term)
            }
        }
        enum Network { case unet(String), text(String) }
        var targets: [(network: Network, terms: [any DeltaTerm], fail: (String) -> TensorFileError)] = []
        for (layer, path) in order {
            let fail = { (m: String) in TensorFileError(file: path, tensor: layer.name, .invalidArgument(m)) }
            let shape: (out: Int, in: Int)?
            let network: Network
            if layer.name.hasPrefix("unet.") {
                let name = String(layer.name.dropFirst("unet.".count))
                shape = unet.layerShape(name)
                network = .unet(name)
            } else if layer.name.hasPrefix("text_encoder.") {
                let name = String(layer.name.dropFirst("text_encoder.".count))
                shape = textEncoder.layerShape(name)
                network = .text(name)
            } else {
                shape = nil
                network = .unet(layer.name)
            }
            guard let shape else { throw fail("the runtime has no linear layer of this name (only the UNet's and the text encoder's linear layers take subjects)") }
            guard shape.out == layer.out, shape.in == layer.inDim else {
                throw fail("the runtime's layer is [\(shape.out), \(shape.in)], the subject's [\(layer.out), \(layer.inDim)]")
            }
            targets.append((network, perLayer[layer.name] ?? [], fail))
        }
        if mode == .live {
            unet.detachAllTerms()
            textEncoder.detachAllTerms()
        }
        for t in targets {
            do {
                switch (t.network, mode) {
                case let (.unet(name), .merge): try unet.addWeightDeltas(t.terms, to: name)
                case let (.unet(name), .live): for term in t.terms { try unet.attach(term, to: name) }
                case let (.text(name), .merge): try textEncoder.addWeightDeltas(t.terms, to: name)
                case let (.text(name), .live): for term in t.terms { try textEncoder.attach(term, to: name) }
                }
            } catch let e as ComputeError {
                throw t.fail(e.message + (mode == .merge ? "; lower the weight" : ""))
            } catch let e as TensorFileError {
                throw t.fail(e.description + (mode == .merge ? "; lower the weight" : ""))
            } catch {
                throw t.fail("\(error)")
            }
        }
    }

    /// Generates `options.batch` images (`[3, height, width]`, values in [-1, 1] before clamping).
    public func generate(_ options: GenerateOptions, progress: ((Int, Int) -> Void)? = nil) throws -> [FeatureMap] {
        let latents = try denoise(options, progress: progress)
        if staged { Parallel.returnFreedMemory() }
        let loadStart = Date()
        let vae = try vaeDecoder()
        if staged { timings.stagedLoad += Date().timeIntervalSince(loadStart) }
        defer { if staged { decoder = nil } }
        let t0 = Date()
        let (lh, lw) = latentSize(options)
        let per = 4 * lh * lw
        var images: [FeatureMap] = []
        for item in 0..<options.batch {
            let z = latents[(item * per)..<((item + 1) * per)].map { $0 / vae.scalingFactor }
            let image = try vae(try FeatureMap(c: 4, h: lh, w: lw, data: z))
            guard image.data.allSatisfy({ $0.isFinite }) else {
                throw TensorFileError(file: base.file.path, .invalidArgument(
                    "the VAE decoder produced non-finite pixels (NaN or infinity) for image \(item + 1) of \(options.batch); nothing was written"))
            }
            images.append(image)
        }
        timings.vaeDecode = Date().timeIntervalSince(t0)
        return images
    }

    /// Pixels per latent along each side (the VAE's `2^(blocks − 1)`; 8 for SD 1.x/2.x).
    public var vaeScaleFactor: Int { configs.vae.scaleFactor }

    /// The latent height and width of a request.
    public func latentSize(_ options: GenerateOptions) -> (h: Int, w: Int) {
        (options.height / vaeScaleFactor, options.width / vaeScaleFactor)
    }

    /// Refuses a request that is out of range for this base or would need more memory than
    /// `memoryLimit` (the estimate counts the weights already loaded).
    public func check(_ options: GenerateOptions) throws(TensorFileError) {
        try options.validate(for: configs, file: base.file.path)
        let estimate = MemoryEstimate.generation(base: base, configs: configs, width: options.width, height: options.height,
                                                 batch: options.batch, guidance: options.cfg > 1, residency: residency, staged: staged)
        try estimate.check(limit: memoryLimit, what: "generating \(options.batch) × \(options.width)×\(options.height)", file: base.file.path)
    }

    /// The denoising loop: the final latents of every batch item, `[batch, 4, h/f, w/f]` flat
    /// (`f` = `vaeScaleFactor`). Stops with an error naming the step when a step's latents are
    /// not finite (NaN or infinity: from a subject, the guidance scale or the base's weights).
    public func denoise(_ options: GenerateOptions, progress: ((Int, Int) -> Void)? = nil) throws -> [Float] {
        try check(options)
        var t0 = Date()
        // Prompt embeddings: unconditional first, as diffusers concatenates them.
        let tokens = PipelineConfigs.promptTokens
        let cond = try Matrix(rows: tokens, cols: textEncoder.hidden, data: try textEncoder.encode(tokenizer.encodePadded(options.prompt, length: tokens)))
        let doCFG = options.cfg > 1
        let uncond = doCFG ? try Matrix(rows: tokens, cols: textEncoder.hidden,
                                        data: try textEncoder.encode(tokenizer.encodePadded(options.negativePrompt, length: tokens))) : cond
        textEncoder.releaseWeights()
        if staged {
            base.file.releaseMappedPages()
            Parallel.returnFreedMemory()
        }
        timings.textEncoding = Date().timeIntervalSince(t0)
        if staged { timings.stagedLoad = 0 }
        let loadStart = Date()
        let unet = try self.unet.loaded()
        if staged {
            // The load's conversion buffers, freed, and the base file's pages read by the load
            // would otherwise stay resident under the steps.
            base.file.releaseMappedPages()
            Parallel.returnFreedMemory()
            timings.stagedLoad += Date().timeIntervalSince(loadStart)
        }
        defer { if staged { self.unet.releaseWeights() } }

        var scheduler = try makeScheduler(options.sampler.kind, config: options.schedulerConfig(configs.scheduler))
        try scheduler.setTimesteps(options.steps)

        let (lh, lw) = latentSize(options)
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
                var items: [[Float]?]
                var error: (any Error)?
                let lock = DispatchSemaphore(value: 1)
                init(_ n: Int) { items = Array(repeating: nil, count: n) }
            }
            let results = Results(jobs)
            Parallel.forEach(jobs) { j in
                let item = doCFG ? j / 2 : j
                let useCond = !doCFG || j % 2 == 1
                let r: Result<[Float], any Error>
                do {
                    let x = try FeatureMap(c: 4, h: lh, w: lw, data: Array(input[(item * per)..<((item + 1) * per)]))
                    r = .success(try unet.forward(x, timestep: Float(t), context: useCond ? cond : uncond).data)
                } catch { r = .failure(error) }
                results.lock.wait()
                switch r {
                case let .success(y): results.items[j] = y
                case let .failure(e): results.error = results.error ?? e
                }
                results.lock.signal()
            }
            if let e = results.error {
                throw TensorFileError(file: base.file.path, .invalidArgument("sampler step \(i + 1) of \(steps.count): the UNet refused its inputs: \(e)"))
            }
            for item in 0..<options.batch {
                if doCFG {
                    guard let u = results.items[2 * item], let c = results.items[2 * item + 1] else { continue }
                    for k in 0..<per { noise[item * per + k] = u[k] + options.cfg * (c[k] - u[k]) }
                } else {
                    guard let y = results.items[item] else { continue }
                    noise.replaceSubrange((item * per)..<((item + 1) * per), with: y)
                }
            }
            latents = scheduler.step(modelOutput: noise, timestep: t, sample: latents, noise: &generator)
            if let bad = latents.firstIndex(where: { !$0.isFinite }) {
                throw TensorFileError(file: base.file.path, .invalidArgument(
                    "sampler step \(i + 1) of \(steps.count) (timestep \(Self.show(t))) produced a non-finite latent (\(latents[bad]) in image \(bad / per + 1)): "
                    + "check the subjects' weights and factors, the guidance scale and the base's weights; nothing was written"))
            }
            timings.unetSteps.append(Date().timeIntervalSince(t0))
            progress?(i + 1, steps.count)
        }
        return latents
    }

    static func show(_ t: Double) -> String { t == t.rounded() && abs(t) < 1e15 ? String(Int64(t)) : "\(t)" }
}

extension TorchGenerator: NoiseSource {}
