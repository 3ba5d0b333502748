import ArgumentParser
import Checkpoint
import Compute
import Crypto
import Diffusion
import Foundation
import Hypernetwork
import Imaging
import SubjectDelta
import TensorFile
import Training
#if canImport(Glibc)
import Glibc
#endif

extension TrainMode: ExpressibleByArgument {}

struct Finetune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a subject on one or more photos (LiDB from scratch, or the fast finetune of a prediction).",
        discussion: """
        The denoising objective of diffusers' DreamBooth-LoRA script on the CPU, every random \
        draw specified (spec/finetune.md): each photo is resized (shorter side = --resolution) and \
        centre-cropped, encoded by the base's VAE once; each step draws a latent sample, a \
        timestep and noise from a torch-compatible generator seeded by --seed, runs the text \
        encoder and the UNet with the delta terms, and takes an optimiser step on the MSE to the \
        noise (or velocity), gradients clipped to --max-grad-norm.

        What trains: from scratch (no --init/--hypernet), new LiDB terms on the --targets layers \
        (up factors start at zero). With --hypernet H (the photo is personalised first) or \
        --init S.lidb, HyperDreamBooth's rank-relaxed fast finetune: the predicted LiDB terms stay \
        frozen and a LoRA term of rank --relax-rank (zero-initialised up) is trained per layer. \
        --train lidb|lora|both overrides what trains.

        Defaults: 40 steps at lr 1e-4 with an init — the paper's fast finetune length, and the \
        learning rate of the public diffusers reimplementation; 400 steps at lr 1e-3 from \
        scratch, where a rank-1 LiDB term starts at zero and has to move further. AdamW with \
        torch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 1e-2). --resolution defaults to \
        the base's native size (the UNet's sample_size × the VAE factor: 512 for SD 1.5).

        A progress line with the loss and an ETA is shown on a terminal; --log writes one JSON \
        line per step as it happens; --timings prints a JSON object as the last line of stdout. \
        The subject is written only after the last step (Ctrl-C leaves no output file); a step \
        whose loss or gradient is not finite stops the run with an error naming it. Requests are \
        checked before the model is loaded, including the estimated peak memory against \
        --memory-limit (else LIDB_MEMORY_LIMIT, else the machine's memory).
        """
    )
    @Option(help: "The base (.lidb) the subject is for.") var base: String
    @Option(name: .customLong("image"), help: "A photo (PNG or JPEG); repeatable — steps use them in turn.") var images: [String] = []
    @Option(help: "Start from this hypernetwork's prediction for the first photo (the fast finetune).") var hypernet: String?
    @Option(name: .customLong("init"), help: "Start from this subject's terms (the fast finetune).") var initSubject: String?
    @Option(help: "Target layers when training from scratch: paper, unet-attn, text-attn, text-mlp.") var targets: TargetSet = .paper
    @Option(help: "What trains: lidb, lora or both (default: lidb from scratch, lora with an init).") var train: TrainMode?
    @Option(help: "Rank of a new LiDB term.") var rank: Int = 1
    @Option(help: "Basis dimension a (down side) of a new LiDB term.") var downDim: Int = 100
    @Option(help: "Basis dimension b (up side) of a new LiDB term.") var upDim: Int = 50
    @Option(help: "Alpha of a new LiDB term (scale alpha/rank).") var alpha: Double = 1.0
    @Option(help: "Rank R of a new LoRA term (the fast finetune's relaxed rank).") var relaxRank: Int = 4
    @Option(help: "Alpha of a new LoRA term (default: R, i.e. scale 1).") var relaxAlpha: Double?
    @Option(help: "Optimiser steps (default: 40 with an init, 400 from scratch).") var steps: Int?
    @Option(help: "Learning rate (default: 1e-4 with an init, 1e-3 from scratch).") var lr: Double?
    @Option(help: "adamw or sgd.") var optimizer: String = "adamw"
    @Option(help: "AdamW beta1.") var adamBeta1: Double?
    @Option(help: "AdamW beta2.") var adamBeta2: Double?
    @Option(help: "AdamW epsilon.") var adamEpsilon: Double?
    @Option(help: "AdamW decoupled weight decay.") var adamWeightDecay: Double?
    @Option(help: "Clip gradients to this global norm.") var maxGradNorm: Double = 1.0
    @Option(help: "Seed of the run's random draws (0 … 2^64 − 1).") var seed: UInt64 = 0
    @Option(help: "Basis seed of new LiDB terms (default: --seed).") var basisSeed: UInt64?
    @Option(help: "Training resolution in pixels (a multiple of the VAE factor).") var resolution: Int?
    @Flag(help: "Mirror the photo horizontally with probability 1/2 per step.") var flip = false
    @Option(help: "Trigger token (default: the init's, else sks).") var trigger: String?
    @Option(name: .customLong("class"), help: "Class noun (default: the init's, else face).") var className: String?
    @Option(help: "The training prompt, verbatim (default: \"a photo of TRIGGER CLASS\").") var prompt: String?
    @Option(help: "Subject name recorded in the file.") var name: String?
    @Option(help: "Element type on disk: f16, f32, bf16, q8.") var dtype: SubjectDType = .f16
    @Flag(help: "Bind the subject to the base's content fingerprint too (not only its layer table).") var strict = false
    @Option(name: .shortAndLong, help: "Output subject .lidb.") var output: String
    @Option(help: "Write one JSON line per step (step, timestep, loss, grad_norm, seconds) to this file.") var log: String?
    @Flag(help: "Print timings as a JSON object on the last line of stdout.") var timings = false
    @Option(help: "Also report the denoising loss on the first photo over N fixed (timestep, noise) pairs before and after training (spec/finetune.md §11).")
    var eval: Int?
    @Option(help: "Seed of the evaluation pairs' draws.") var evalSeed: UInt64 = 0
    @Option(help: "Refuse runs whose estimated peak memory exceeds this (e.g. 8G; default: LIDB_MEMORY_LIMIT, else the machine's memory).")
    var memoryLimit: String?
    @Option(help: "UNet weights: f32 (converted once at load; fastest), f16-per-layer (an F16 base's weights stay F16 and are converted a block of rows at a time as each product runs, forward and backward: about 1.6 GB less for SD 1.5 at about the same speed — 3.95 s against 3.63 s per step at 256×256; the same result) or bf16-per-layer (any base's large weights rounded to bf16 once and held so; meant for --precision bf16).")
    var weights: WeightResidency = .f32
    @Option(help: precisionHelp(speed: "about 0.80× the f32 time of a training step on SD 1.5 at 256×256"))
    var precision: ComputePrecision = .f32

    func validate() throws {
        if hypernet != nil && initSubject != nil { throw ValidationError("--hypernet and --init are alternatives; give one") }
        if images.isEmpty { throw ValidationError("at least one --image is needed") }
        if let eval, !(1...10_000).contains(eval) { throw ValidationError("--eval \(eval): must be from 1 to 10000") }
        if prompt != nil && (trigger != nil || className != nil) {
            throw ValidationError("--prompt is used verbatim; --trigger and --class apply only to the default prompt")
        }
    }

    func run() throws {
        var inputs: [String?] = [base, hypernet, initSubject]
        inputs += images.map { Optional($0) }
        try checkOutput(output, inputs: inputs)
        if let log { try checkOutput(log, inputs: inputs + [output]) }
        try reportingErrors {
            if let notice = ComputePrecision.select(precision) { printError("lidb: notice: " + notice) }
            try finetune()
        }
    }

    func finetune() throws {
        let t0 = now()
        let hasInit = hypernet != nil || initSubject != nil
        let o = try options(hasInit: hasInit)
        let limit = try MemoryLimit.resolve(memoryLimit)
        let b = try BaseModel(path: base)
        var opts = o
        if resolution == nil { opts.resolution = Self.nativeResolution(b) }
        // Every setting before anything heavy is loaded (the hypernetwork, the models).
        try opts.validate(vaeFactor: try VAEConfig(base: b).scaleFactor)
        let start: FinetuneStart
        if let hypernet {
            let h = try Hypernetwork(path: hypernet)
            let s = try h.personalize(photo: images[0], for: b, name: name, trigger: trigger, className: className).subject
            start = .prediction(s, hypernetwork: h.fingerprint, iterations: h.config.decoder.iterations)
        } else if let initSubject {
            // The digest of the very bytes the subject is read from.
            let file = try LidbFile(path: initSubject, checksums: .always)
            let s = try Subject(file: file)
            let digest = withExtendedLifetime(file) { SHA256.hash(data: file.map.bytes) }
            start = .subject(s, sha256: digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
        } else {
            start = .scratch(targets: targets)
        }
        let request = FinetuneRequest(images: images, start: start, options: opts, prompt: prompt, trigger: trigger,
                                      className: className, name: name, strict: strict, residency: weights)
        let run = try Finetuner(base: b, request: request, memoryLimit: limit)
        let loadSeconds = now() - t0
        let evalBefore = try eval.map { try run.evaluationLoss(count: $0, seed: evalSeed) }

        var logFile: UnsafeMutablePointer<FILE>?
        if let log {
            guard let f = fopen(log, "w") else {
                throw TensorFileError(file: log, .invalidArgument("cannot open the log for writing: \(String(cString: strerror(errno)))"))
            }
            logFile = f
        }
        defer { if let logFile { fclose(logFile) } }
        let bar = TrainingProgress(steps: opts.steps)
        var stepTimes: [Double] = []
        let subject = try run.run(onStep: { s in
            stepTimes.append(s.seconds)
            bar.update(s)
            if let logFile {
                let line = JSONValue.object([
                    ("step", .int(s.step)), ("timestep", .int(s.timestep)), ("loss", .double(Double("\(s.loss)") ?? Double(s.loss))),
                    ("grad_norm", .double(Double("\(s.gradientNorm)") ?? Double(s.gradientNorm))), ("seconds", .double(s.seconds)),
                ]).serializedString + "\n"
                fputs(line, logFile)
                fflush(logFile)
            }
        })
        bar.finish()
        let evalAfter = try eval.map { try run.evaluationLoss(count: $0, seed: evalSeed) }
        try subject.write(to: output, dtype: dtype)
        let total = now() - t0
        let size = (try? MappedFile(path: output).bytes.count) ?? 0
        let kind: String
        switch start {
        case .scratch: kind = "from scratch"
        case .subject: kind = "from \(initSubject ?? "")"
        case .prediction: kind = "from the prediction of \(hypernet ?? "")"
        }
        print("trained \(run.trained.count) tensors (\(run.train.rawValue), \(kind)) for \(opts.steps) steps at \(opts.resolution)×\(opts.resolution); "
              + "loss \(run.losses.first.map { "\($0)" } ?? "-") → \(run.losses.last.map { "\($0)" } ?? "-")")
        if let evalBefore, let evalAfter, let eval {
            print("evaluation loss (\(eval) fixed pairs, seed \(evalSeed)): \(evalBefore) → \(evalAfter) (\(Self.percent(evalAfter, evalBefore)))")
        }
        print("wrote \(output): subject for \(b.architecture.family.rawValue) (\(subject.layers.count) layers), "
              + "\(subject.trainedParameters) trained parameters, \(size) bytes (\(dtype.rawValue))")
        if timings {
            let sorted = stepTimes.sorted()
            let median = sorted.isEmpty ? 0 : (sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2)
            print(JSONValue.object([
                ("steps", .int(stepTimes.count)), ("step_median_s", .double(median)), ("load_s", .double(loadSeconds)),
                ("total_s", .double(total)), ("peak_rss_mib", .double(peakResidentMiB())),
                ("unet_f16_weights", .int(run.halfWeightCount)),
                ("final_loss", .double(Double(run.losses.last.map { "\($0)" } ?? "0") ?? 0)),
            ] + (evalBefore.flatMap { b in evalAfter.map { a in [("eval_loss_before", JSONValue.double(Double("\(b)") ?? 0)),
                                                                ("eval_loss_after", JSONValue.double(Double("\(a)") ?? 0))] } } ?? [])).serializedString)
        }
    }

    /// The run's settings from the options; the numbers are checked by `TrainingOptions.validate`.
    func options(hasInit: Bool) throws -> TrainingOptions {
        let settings = try OptimizerSettings.named(optimizer, lr: lr ?? (hasInit ? 1e-4 : 1e-3), beta1: adamBeta1, beta2: adamBeta2,
                                                   eps: adamEpsilon, weightDecay: adamWeightDecay)
        return TrainingOptions(steps: steps ?? (hasInit ? 40 : 400), optimizer: settings, maxGradNorm: maxGradNorm, seed: seed,
                               basisSeed: basisSeed, resolution: resolution ?? 512, flip: flip, train: train,
                               lidb: LiDBShape(rank: rank, a: downDim, b: upDim, alpha: alpha), relaxRank: relaxRank, relaxAlpha: relaxAlpha)
    }

    static func percent(_ after: Float, _ before: Float) -> String {
        guard before != 0 else { return "n/a" }
        let p = (Double(after) / Double(before) - 1) * 100
        return (p >= 0 ? "+" : "") + String((p * 10).rounded() / 10) + " %"
    }

    /// The UNet's `sample_size` × the VAE factor, when the base's config has it; else 512.
    static func nativeResolution(_ b: BaseModel) -> Int {
        guard let vae = try? VAEConfig(base: b), let s = b.config("unet")?["sample_size"]?.int64Value,
              let n = Int(exactly: s), n > 0, n <= 4096 / vae.scaleFactor else { return 512 }
        return n * vae.scaleFactor
    }
}

/// Peak resident set size of this process, in MiB.
func peakResidentMiB() -> Double {
    var u = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
    return Double(u.ru_maxrss) / 1024
}

/// The progress line of a training run on stderr (only on a terminal): step, loss, time per step, ETA.
final class TrainingProgress {
    let steps: Int
    let enabled = FileHandleStderr.isTerminal
    var elapsed = 0.0
    var shown = false
    init(steps: Int) { self.steps = steps }

    func update(_ s: FinetuneStep) {
        elapsed += s.seconds
        guard enabled else { return }
        let per = elapsed / Double(max(s.step, 1))
        let eta = Int((per * Double(steps - s.step)).rounded())
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let etaText = eta >= 3600 ? "\(eta / 3600):\(two(eta / 60 % 60)):\(two(eta % 60))" : "\(eta / 60):\(two(eta % 60))"
        let perText = String((per * 100).rounded() / 100)
        FileHandleStderr.write("\rtraining step \(s.step)/\(steps)  loss \(s.loss)  \(perText) s/step  ETA \(etaText)   ")
        shown = true
    }

    func finish() { if enabled && shown { FileHandleStderr.write("\n") } }
}
