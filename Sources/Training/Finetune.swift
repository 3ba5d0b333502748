import Checkpoint
import Compute
import Diffusion
import Foundation
import SubjectDelta
import TensorFile

/// Where the trained terms of a run start (spec/finetune.md §6).
public enum FinetuneStart: Sendable {
    /// New terms on the layers of a target set.
    case scratch(targets: TargetSet)
    /// A subject file's terms, factors as float32 (q8 dequantised). `sha256` is the hex digest of
    /// the file's bytes (the provenance's `init.sha256`).
    case subject(Subject, sha256: String)
    /// A hypernetwork's prediction for the first image, float32 (never rounded to a file's dtype).
    /// `hypernetwork` is its fingerprint, `iterations` its decoder's refinement iterations.
    case prediction(Subject, hypernetwork: String, iterations: Int)

    var initSubject: Subject? {
        switch self {
        case .scratch: return nil
        case let .subject(s, _), let .prediction(s, _, _): return s
        }
    }
}

/// Everything a training run needs besides the base.
public struct FinetuneRequest: Sendable {
    /// Photo files, used in turn (step `k` uses image `(k − 1) mod n`).
    public var images: [String]
    public var start: FinetuneStart
    public var options: TrainingOptions
    /// The prompt used verbatim; nil: `"a photo of {trigger} {class}"`.
    public var prompt: String?
    /// Recorded in the subject and used in the default prompt; nil: the init's, else `sks`/`face`.
    public var trigger: String?
    public var className: String?
    public var name: String?
    /// Bind the result to the base's content fingerprint too.
    public var strict: Bool
    /// How the UNet's frozen weights are held: f32, or (an F16 base's) F16 converted per use —
    /// the same values either way, so the same run (spec/finetune.md §12).
    public var residency: WeightResidency

    public init(images: [String], start: FinetuneStart, options: TrainingOptions, prompt: String? = nil,
                trigger: String? = nil, className: String? = nil, name: String? = nil, strict: Bool = false,
                residency: WeightResidency = .f32) {
        self.images = images
        self.start = start
        self.options = options
        self.prompt = prompt
        self.trigger = trigger
        self.className = className
        self.name = name
        self.strict = strict
        self.residency = residency
    }

    public static let defaultTrigger = "sks"
    public static let defaultClass = "face"
}

/// What one optimiser step reports.
public struct FinetuneStep: Sendable {
    /// 1-based.
    public var step: Int
    public var steps: Int
    public var timestep: Int
    /// The step's loss, before its update.
    public var loss: Float
    /// The total gradient norm before clipping, and the clipping coefficient.
    public var gradientNorm: Float
    public var clipCoefficient: Float
    /// Wall time of the step.
    public var seconds: Double
    /// Whether the step used the mirrored image.
    public var flipped: Bool
}

/// One trained tensor of a run: where it lives and what it is called (spec/finetune.md §6 order).
public struct TrainedTensor: Sendable {
    public enum Role: String, Sendable {
        case lidbDownTrain = "lidb.down_train", lidbUpTrain = "lidb.up_train", loraDown = "lora.down", loraUp = "lora.up"
    }
    public var layer: String
    public var role: Role
    public var name: String { "\(layer).\(role.rawValue)" }
}

/// A training run of `lidb finetune` (spec/finetune.md): the base's models loaded as `Compute`
/// networks, the photos encoded once, the delta terms attached and initialised. `run` trains and
/// returns the subject. Construction checks the options, the images and the memory estimate
/// before any weight is loaded.
public final class Finetuner {
    public let base: BaseModel
    public let request: FinetuneRequest
    /// The layer table of the run and, per layer, its LiDB and LoRA terms (nil: none).
    public let layers: [TargetLayer]
    public let lidbTerms: [LowRankTerm?]
    public let loraTerms: [LowRankTerm?]
    /// The alphas of those terms (as the subject records them).
    let lidbAlphas: [Float], loraAlphas: [Float]
    /// The trained tensors in the order of the gradient norm and of the optimiser's state.
    public let trained: [TrainedTensor]
    public let train: TrainMode
    public let prompt: String
    public let basis: SubjectBasis
    /// Seconds spent loading the models and preparing the photos.
    public private(set) var loadSeconds: Double = 0
    /// The losses of the steps run so far.
    public private(set) var losses: [Float] = []

    let photos: [TrainingPhoto]
    /// Per photo: the VAE posterior `(mean, std)` of the image and of its mirror (flip on).
    let posteriors: [(image: (mean: [Float], std: [Float]), mirror: (mean: [Float], std: [Float])?)]
    let latentShape: (c: Int, h: Int, w: Int)
    let objective: DenoisingObjective
    var unet: UNetNetwork
    var text: CLIPTextNetwork
    /// How many UNet weight values are held as F16 (`FinetuneRequest.residency`).
    public var halfWeightCount: Int { unet.halfWeightCount }
    let ids: [Int]
    let textTrains: Bool
    /// The text states when no text-encoder term trains (the same every step).
    var fixedContext: Matrix?
    var random: TrainingRandom
    var optimizer: any Optimizer

    /// Loads what the run needs and initialises the terms (the initial factor draws of §7 come
    /// first from the run's generator). Errors name the option, image, layer or base field.
    public init(base: BaseModel, request: FinetuneRequest, memoryLimit: ByteCount? = nil) throws {
        let t0 = Date()
        self.base = base
        self.request = request
        let o = request.options
        let configs = try PipelineConfigs(base: base)
        try o.validate(vaeFactor: configs.vae.scaleFactor)
        guard !request.images.isEmpty else {
            throw TrainingError.invalidOption(option: "--image", value: "(none)", problem: "at least one photo is needed")
        }
        guard request.images.count <= 10_000 else {
            throw TrainingError.invalidOption(option: "--image", value: "(\(request.images.count) files)", problem: "at most 10000 photos")
        }
        let initSubject = request.start.initSubject
        if let s = initSubject { try s.check(against: base, subjectPath: s.source.isEmpty ? "init subject" : s.source) }
        let mode = o.train ?? TrainMode.default(hasInit: initSubject != nil)
        train = mode

        // The layer table and the terms each layer gets (§6).
        let table: [TargetLayer]
        switch request.start {
        case let .scratch(targets):
            table = targets.layers(in: base.file.tensors)
            guard !table.isEmpty else {
                throw TrainingError.invalidOption(option: "--targets", value: targets.rawValue, problem: "the base has no layer of this target set")
            }
        case .subject, .prediction:
            table = initSubject?.targetLayers ?? []
        }
        layers = table
        let basisSeed = o.basisSeed ?? o.seed
        basis = initSubject?.basis ?? .seed(basisSeed)
        var plans: [(newLiDB: Bool, newLoRA: Bool)] = []
        for (i, t) in table.enumerated() {
            let existing = initSubject?.layers[i]
            let newLiDB = initSubject == nil && (mode == .lidb || mode == .both)
            let newLoRA = (mode == .lora || mode == .both) && existing?.lora == nil
            if newLoRA, o.relaxRank > min(t.out, t.inDim) {
                throw TrainingError.invalidOption(option: TrainingOptions.Option.relaxRank, value: "\(o.relaxRank)",
                                                  problem: "layer \(t.name) is [\(t.out), \(t.inDim)]: a LoRA rank must be at most \(min(t.out, t.inDim))")
            }
            plans.append((newLiDB, newLoRA))
        }

        // Photos first (cheap, and their errors should come before a model is loaded).
        let resolution = o.resolution
        photos = try request.images.map { (f) throws(TrainingError) in try TrainingPhoto(file: f, resolution: resolution, flip: o.flip) }
        let factor = configs.vae.scaleFactor
        latentShape = (configs.vae.latentChannels, resolution / factor, resolution / factor)

        if let limit = memoryLimit {
            let estimate = MemoryEstimate.training(base: base, configs: configs, resolution: resolution, residency: request.residency)
            try estimate.check(limit: limit, what: "training at \(resolution)×\(resolution)", file: base.file.path)
        }

        objective = try DenoisingObjective(schedule: try NoiseSchedule(config: configs.scheduler),
                                           predictionType: try configs.scheduler.predictionType(), scalingFactor: Double(configs.vae.scalingFactor))
        let tokenizer = try CLIPTokenizer(base: base)
        let trigger = request.trigger ?? initSubject?.info["trigger"]?.stringValue ?? FinetuneRequest.defaultTrigger
        let cls = request.className ?? initSubject?.info["class"]?.stringValue ?? FinetuneRequest.defaultClass
        prompt = request.prompt ?? "a photo of \(trigger) \(cls)"
        ids = tokenizer.encodePadded(prompt, length: PipelineConfigs.promptTokens)

        // The posteriors, once (§4).
        let encoder = try VAEEncoder(base: base)
        func posterior(_ pixels: [Float]) throws(TensorFileError) -> (mean: [Float], std: [Float]) {
            let r = try encoder.encode(pixels: pixels, height: resolution, width: resolution)
            return (r.mean.data, r.logvar.data.map { Foundation.exp(0.5 * $0) })
        }
        var post: [(image: (mean: [Float], std: [Float]), mirror: (mean: [Float], std: [Float])?)] = []
        for p in photos {
            post.append((try posterior(p.pixels), try p.mirror.map { (m) throws(TensorFileError) in try posterior(m) }))
        }
        posteriors = post

        unet = try UNetNetwork(base: base, residency: request.residency)
        text = try CLIPTextNetwork(base: base)

        // Initial factors (§7), then the terms.
        var rng = TrainingRandom(seed: o.seed)
        let requests = zip(table, plans).map { t, p in
            NewFactorRequest(lidbDownTrain: p.newLiDB ? (o.lidb.rank, min(o.lidb.a, t.inDim)) : nil,
                             loraDown: p.newLoRA ? (o.relaxRank, t.inDim) : nil)
        }
        let drawn = try rng.initialFactors(requests)
        random = rng
        var lidbs: [LowRankTerm?] = [], loras: [LowRankTerm?] = []
        var lidbAlphas: [Float] = [], loraAlphas: [Float] = []
        var trainedList: [TrainedTensor] = []
        var textTrains = false
        let cache = BasisCache()
        for (i, t) in table.enumerated() {
            let existing = initSubject?.layers[i]
            // The init's terms as the runtime applies them (frozen unless trained below).
            let initial = try existing.flatMap { l in try initSubject?.layerTerms(l, weight: 1, cache: cache) }
            var lidb: LowRankTerm?
            var lidbAlpha = Float(o.lidb.alpha), loraAlpha = Float(o.effectiveRelaxAlpha)
            if let d = drawn[i].lidbDownTrain {
                let a = min(o.lidb.a, t.inDim), b = min(o.lidb.b, t.out)
                let (downAux, upAux) = try Self.basis(basis, layer: t, a: a, b: b)
                lidb = try LowRankTerm.lidb(downAux: downAux, downTrain: d, upTrain: [Float](repeating: 0, count: b * o.lidb.rank),
                                            upAux: upAux, out: t.out, in: t.inDim, rank: o.lidb.rank, alpha: Float(o.lidb.alpha), trainable: true)
            } else if let e = existing?.lidb, let term = initial?.lidb {
                lidbAlpha = e.alpha
                term.trainable = mode == .lidb || mode == .both
                lidb = term
            }
            var lora: LowRankTerm?
            if let d = drawn[i].loraDown {
                lora = try LowRankTerm.lora(down: d, up: [Float](repeating: 0, count: t.out * o.relaxRank), out: t.out, in: t.inDim,
                                            rank: o.relaxRank, alpha: Float(o.effectiveRelaxAlpha), trainable: true)
            } else if let e = existing?.lora, let term = initial?.lora {
                loraAlpha = e.alpha
                term.trainable = mode == .lora || mode == .both
                lora = term
            }
            for term in [lidb, lora].compactMap({ $0 }) { try Self.attach(term, layer: t.name, unet: &unet, text: &text) }
            if let l = lidb, l.trainable {
                trainedList += [TrainedTensor(layer: t.name, role: .lidbDownTrain), TrainedTensor(layer: t.name, role: .lidbUpTrain)]
            }
            if let l = lora, l.trainable {
                trainedList += [TrainedTensor(layer: t.name, role: .loraDown), TrainedTensor(layer: t.name, role: .loraUp)]
            }
            if t.name.hasPrefix("text_encoder."), (lidb?.trainable ?? false) || (lora?.trainable ?? false) { textTrains = true }
            lidbs.append(lidb)
            loras.append(lora)
            lidbAlphas.append(lidbAlpha)
            loraAlphas.append(loraAlpha)
        }
        guard !trainedList.isEmpty else {
            throw TrainingError.invalidOption(option: "--train", value: mode.rawValue, problem: "nothing to train: the init has no term of this kind on any layer")
        }
        lidbTerms = lidbs
        loraTerms = loras
        self.lidbAlphas = lidbAlphas
        self.loraAlphas = loraAlphas
        trained = trainedList
        self.textTrains = textTrains
        optimizer = o.optimizer.make(sizes: [])
        optimizer = o.optimizer.make(sizes: currentParameters().map(\.count))
        if !textTrains { fixedContext = try text.forward(ids: ids) }
        loadSeconds = Date().timeIntervalSince(t0)
    }

    /// The bases of a LiDB term: generated from the seed, or the stored ones.
    static func basis(_ basis: SubjectBasis, layer t: TargetLayer, a: Int, b: Int) throws -> (down: [Float], up: [Float]) {
        switch basis {
        case let .seed(seed):
            let r = try Basis.layer(seed: seed, name: t.name, out: t.out, in: t.inDim, a: a, b: b)
            return (r.down, r.up)
        case let .stored(m):
            guard let s = m[t.name] else {
                throw TensorFileError(file: "init subject", tensor: t.name, .invalidArgument("stored basis missing for this layer"))
            }
            return (s.down, s.up)
        }
    }

    static func attach(_ term: LowRankTerm, layer: String, unet: inout UNetNetwork, text: inout CLIPTextNetwork) throws {
        if layer.hasPrefix("unet.") {
            try unet.attach(term, to: String(layer.dropFirst("unet.".count)))
        } else if layer.hasPrefix("text_encoder.") {
            try text.attach(term, to: String(layer.dropFirst("text_encoder.".count)))
        } else {
            throw TrainingError.invalidOption(option: "--targets", value: layer, problem: "only UNet and text-encoder layers can be trained")
        }
    }

    /// The trained tensors' current values, in `trained` order.
    public func currentParameters() -> [[Float]] {
        var out: [[Float]] = []
        for i in layers.indices {
            if let l = lidbTerms[i], l.trainable { out.append(l.down); out.append(l.up) }
            if let l = loraTerms[i], l.trainable { out.append(l.down); out.append(l.up) }
        }
        return out
    }

    func currentGradients() -> [[Float]] {
        var out: [[Float]] = []
        for i in layers.indices {
            if let l = lidbTerms[i], l.trainable { out.append(l.gradDown); out.append(l.gradUp) }
            if let l = loraTerms[i], l.trainable { out.append(l.gradDown); out.append(l.gradUp) }
        }
        return out
    }

    func setParameters(_ values: [[Float]]) throws {
        var k = 0
        for i in layers.indices {
            for term in [lidbTerms[i], loraTerms[i]] {
                guard let t = term, t.trainable else { continue }
                try t.setFactors(down: values[k], up: values[k + 1])
                k += 2
            }
        }
    }

    var stepsDone: Int { losses.count }

    /// The loss and the trained factors' gradients for one step's inputs (no update): the
    /// forward through the text encoder and the UNet, the MSE, and the backward.
    public func lossAndGradients(noisy: [Float], target: [Float], timestep: Int, step: Int) throws -> (loss: Float, gradients: [[Float]]) {
        for i in layers.indices { lidbTerms[i]?.zeroGradients(); loraTerms[i]?.zeroGradients() }
        let context = try fixedContext ?? text.forward(ids: ids)
        let (c, h, w) = latentShape
        let sample = try Compute.FeatureMap(c: c, h: h, w: w, data: noisy)
        var loss: Float = 0
        let (_, gctx) = try unet.forwardBackward(sample, timestep: Float(timestep), context: context, contextGradient: textTrains) { pred in
            loss = try DenoisingObjective.meanSquaredError(pred.data, target, step: step)
            let g = try DenoisingObjective.meanSquaredErrorGradient(pred.data, target)
            return try Compute.FeatureMap(c: pred.c, h: pred.h, w: pred.w, data: g)
        }
        if textTrains, let gctx { try text.backward(gradOutput: gctx, ids: ids) }
        return (loss, currentGradients())
    }

    /// The evaluation loss of spec/finetune.md §11: the mean of the §5 losses on the first photo
    /// (never mirrored) over `count` fixed pairs — timestep `t_j = floor((2j + 1) · T / (2 · count))`,
    /// latent sample `z_j` and noise `ε_j` drawn in that order from a generator seeded with
    /// `seed` — with the current terms. It consumes nothing of the run's generator.
    public func evaluationLoss(count: Int, seed: UInt64) throws -> Float {
        guard count >= 1, count <= 10_000 else {
            throw TrainingError.invalidOption(option: "--eval", value: "\(count)", problem: "must be from 1 to 10000")
        }
        var g = TorchGenerator(seed: seed, normalFill: .avx2)
        let latentCount = latentShape.c * latentShape.h * latentShape.w
        let T = objective.timesteps
        let post = posteriors[0].image
        var sum = 0.0
        for j in 0..<count {
            let t = Int((2 * j + 1) * T / (2 * count))
            let draws = TrainingRandom.StepDraws(z: g.randn(count: latentCount), flipDraw: 1, timestep: t, noise: g.randn(count: latentCount))
            let (noisy, target) = try objective.prepare(mean: post.mean, std: post.std, draws: draws)
            let context = try fixedContext ?? text.forward(ids: ids)
            let (c, h, w) = latentShape
            let pred = try unet.forward(try Compute.FeatureMap(c: c, h: h, w: w, data: noisy), timestep: Float(t), context: context)
            sum += Double(try DenoisingObjective.meanSquaredError(pred.data, target, step: 0))
        }
        return Float(sum / Double(count))
    }

    /// Runs the remaining steps. `onStep` is called after each update; `shouldStop` is asked
    /// before each step (a true answer ends the run with `TrainingError.cancelled`).
    public func run(onStep: (FinetuneStep) -> Void = { _ in }, shouldStop: () -> Bool = { false }) throws -> Subject {
        let o = request.options
        let latentCount = latentShape.c * latentShape.h * latentShape.w
        let names = trained.map(\.name)
        while stepsDone < o.steps {
            if shouldStop() { throw TrainingError.cancelled(step: stepsDone + 1) }
            let t0 = Date()
            let k = stepsDone + 1
            let i = (k - 1) % photos.count
            let draws = try random.step(latentCount: latentCount, timesteps: objective.timesteps)
            let flipped = o.flip && draws.flip
            let post = flipped ? (posteriors[i].mirror ?? posteriors[i].image) : posteriors[i].image
            let (noisy, target) = try objective.prepare(mean: post.mean, std: post.std, draws: draws)
            let (loss, g) = try lossAndGradients(noisy: noisy, target: target, timestep: draws.timestep, step: k)
            var grads = g
            let clip = try GradientClipping.clip(&grads, maxNorm: o.maxGradNorm, step: k, names: names)
            var params = currentParameters()
            do {
                try optimizer.step(&params, gradients: grads)
            } catch {
                // Name the tensor as the run knows it rather than by its index.
                guard case let .nonFiniteParameter(step, tensor) = error else { throw error }
                let n = Int(tensor.split(separator: " ").last ?? "") ?? -1
                throw TrainingError.nonFiniteParameter(step: step, tensor: names.indices.contains(n) ? names[n] : tensor)
            }
            try setParameters(params)
            losses.append(loss)
            onStep(FinetuneStep(step: k, steps: o.steps, timestep: draws.timestep, loss: loss, gradientNorm: clip.totalNorm,
                                clipCoefficient: clip.coefficient, seconds: Date().timeIntervalSince(t0), flipped: flipped))
        }
        return try subject()
    }

    /// The subject of the current factors (§9).
    public func subject() throws -> Subject {
        var out: [SubjectLayer] = []
        for (i, t) in layers.enumerated() {
            let lidb = lidbTerms[i].map { l in
                LiDBTerm(rank: l.rank, a: l.a, b: l.b, alpha: lidbAlphas[i], downTrain: l.down, upTrain: l.up)
            }
            let lora = loraTerms[i].map { l in LoRATerm(rank: l.rank, alpha: loraAlphas[i], down: l.down, up: l.up) }
            out.append(SubjectLayer(target: t, lidb: lidb, lora: lora))
        }
        let o = request.options
        let initSubject = request.start.initSubject
        var info: [(String, JSONValue)] = []
        let name = request.name ?? initSubject?.info["name"]?.stringValue
        let trigger = request.trigger ?? initSubject?.info["trigger"]?.stringValue ?? (request.prompt == nil ? FinetuneRequest.defaultTrigger : nil)
        let cls = request.className ?? initSubject?.info["class"]?.stringValue ?? (request.prompt == nil ? FinetuneRequest.defaultClass : nil)
        if let name { info.append(("name", .string(name))) }
        if let trigger { info.append(("trigger", .string(trigger))) }
        if let cls { info.append(("class", .string(cls))) }
        let initJSON: JSONValue
        switch request.start {
        case .scratch: initJSON = .object([("kind", .string("scratch"))])
        case let .subject(s, sha):
            initJSON = .object([("kind", .string("subject")), ("sha256", .string(sha)), ("provenance", s.info["provenance"] ?? .null)])
        case let .prediction(_, h, k):
            initJSON = .object([("kind", .string("hypernetwork")), ("hypernetwork", .string(h)), ("iterations", .int(k))])
        }
        var prov: [(String, JSONValue)] = [
            ("made_by", .string("lidb finetune")), ("procedure", .string("lidb-finetune-1")),
            ("images_sha256", .array(photos.map { .string($0.sha256) })), ("init", initJSON),
            ("train", .string(train.rawValue)), ("steps", .int(losses.count)), ("lr", .double(o.optimizer.lr)),
            ("optimizer", o.optimizer.provenance), ("max_grad_norm", .double(o.maxGradNorm)), ("seed", .string(String(o.seed))),
            ("resolution", .int(o.resolution)), ("flip", .bool(o.flip)), ("prompt", .string(prompt)),
        ]
        if loraTerms.contains(where: { $0 != nil }) && (initSubject == nil || initSubject?.layers.contains(where: { $0.lora == nil }) == true),
           train == .lora || train == .both {
            prov.append(("relax_rank", .int(o.relaxRank)))
        }
        // The shortest decimal that reads back to the binary32 loss.
        if let last = losses.last { prov.append(("final_loss", .double(Double("\(last)") ?? Double(last)))) }
        info.append(("provenance", .object(prov)))
        let targetsName: String
        switch request.start {
        case let .scratch(t): targetsName = t.rawValue
        default: targetsName = initSubject?.targets ?? "custom"
        }
        return Subject(layers: out, basis: basis, targets: targetsName, architecture: base.architecture.family.rawValue,
                       baseContent: request.strict ? base.contentFingerprint : nil, info: .object(info))
    }
}
