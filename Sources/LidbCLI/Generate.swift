import ArgumentParser
import Checkpoint
import Compute
import Diffusion
import Foundation
import SubjectDelta
import TensorFile

extension Sampler: ExpressibleByArgument {}
extension ApplyMode: ExpressibleByArgument {}

enum RNGChoice: String, ExpressibleByArgument, CaseIterable { case torch }

extension WeightResidency: ExpressibleByArgument {}
extension ComputePrecision: ExpressibleByArgument {}

/// `--precision`'s help (generate, finetune), with the speed-up measured for that command.
func precisionHelp(speed: String) -> ArgumentHelp {
    ArgumentHelp("Matrix products in f32 or bf16.", discussion: """
        bf16 rounds both operands of every matrix product (linear layers, attention, the products \
        inside convolutions) to bfloat16 and accumulates in f32 on oneDNN's AVX-512 BF16 kernels, \
        as PyTorch's CPU bf16 autocast does; normalisations, softmax and the scheduler stay f32. \
        Measured here: \(speed); outputs differ from f32 by about 1e-2 relative (spec/runtime.md). \
        On a CPU without AVX-512 BF16 it falls back to f32 with a notice.
        """)
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images from a prompt with a base and optional subjects.",
        discussion: """
        Runs diffusers' StableDiffusionPipeline algorithm on the CPU: CLIP tokenizer and text \
        encoder, classifier-free guidance, the chosen sampler, UNet, VAE decoder. --rng torch \
        draws the initial latents (and ancestral noise) exactly as torch.Generator().manual_seed(SEED) \
        on the CPU, so a seed gives diffusers' image. Subjects are applied merged into the weights \
        or live (ΔW·x added in the forward pass). PNG files carry an A1111-style 'parameters' text \
        chunk. With --batch N, files are named OUT-1.png … OUT-N.png (OUT: the -o path without a \
        final .png); every one of them is checked like -o before the model is loaded.

        Requests are checked before the model is loaded: --width and --height are multiples of \
        the base's VAE scale factor (2^(VAE blocks − 1): 8 for SD 1.x/2.x), at most 16384; \
        --cfg is 0…100; subject weights are finite with |w| ≤ 100; the base's configs are within \
        spec/base.md §2.1; and the estimated peak memory \
        (weights, latents, UNet and VAE activations, images) must fit the limit: --memory-limit, \
        else the LIDB_MEMORY_LIMIT environment variable, else the machine's memory. A step whose \
        latents are not finite stops the run with an error naming the step; no file is written.
        """
    )
    @Option(help: "The base .lidb.") var model: String
    @Option(name: .customLong("subject"), help: "A subject, optionally with a weight (S.lidb:0.8); repeatable.") var subjects: [SubjectArgument] = []
    @Option(help: "The prompt.") var prompt: String
    @Option(help: "The negative prompt.") var negativePrompt: String = ""
    @Option(help: "Denoising steps.") var steps: Int = 25
    @Option(help: "Classifier-free guidance scale (1 disables guidance).") var cfg: Float = 7.5
    @Option(help: "Seed.") var seed: UInt64 = 42
    @Option(help: "Random number generator (torch: bit-compatible with torch's CPU generator).") var rng: RNGChoice = .torch
    @Option(help: "ddim, euler, euler_a, dpmpp_2m, pndm.") var sampler: Sampler = .ddim
    @Flag(help: "Karras sigmas (with dpmpp_2m).") var karras = false
    @Option(help: "Width in pixels (a multiple of the VAE's scale factor, 8 for SD 1.x/2.x; at most 16384).") var width: Int = 512
    @Option(help: "Height in pixels (a multiple of the VAE's scale factor, 8 for SD 1.x/2.x; at most 16384).") var height: Int = 512
    @Option(help: "Images per run.") var batch: Int = 1
    @Option(help: "merge or live.") var apply: ApplyMode = .merge
    @Option(name: .shortAndLong, help: "Output PNG.") var output: String
    @Flag(help: "Print per-stage times as JSON on stdout (load_s counts every load: the text encoder before, the UNet after text encoding, the VAE decoder after the steps — one network is held at a time).") var timings = false
    @Option(help: "UNet weights: f32 (converted once at load; fastest), f16-per-layer (an F16 base's weights stay F16 and are converted as each layer runs: about half the memory, a little slower) or bf16-per-layer (any base's large weights rounded to bf16 once and held so: the same memory from an F32 base; meant for --precision bf16, which rounds them anyway).")
    var weights: WeightResidency = .f32
    @Option(help: precisionHelp(speed: "about 0.63× the f32 time of a UNet evaluation on SD 1.5 at 512×512"))
    var precision: ComputePrecision = .f32
    @Option(help: "Refuse requests whose estimated peak memory exceeds this (e.g. 16G, 512M; default: LIDB_MEMORY_LIMIT, else the machine's memory).")
    var memoryLimit: String?

    /// The file image `index` (from 0) of `count` is written to: `output` for a single image;
    /// for a batch `OUT-1.png` … `OUT-N.png`, OUT being `output` without a final `.png`.
    static func outputPath(_ output: String, index: Int, of count: Int) -> String {
        guard count > 1 else { return output }
        let stem = output.hasSuffix(".png") ? String(output.dropLast(4)) : output
        return stem + "-\(index + 1).png"
    }

    func run() throws {
        let inputs = [model] + subjects.map(\.path)
        // A single image: its output is checked before anything else. A batch's names are checked
        // all together once the request is known to fit in memory (which bounds --batch), still
        // before a weight is loaded.
        if batch <= 1 { try checkOutput(output, inputs: inputs) }
        try reportingErrors {
            if let notice = ComputePrecision.select(precision) { printError("lidb: notice: " + notice) }
            let t0 = Date()
            var o = GenerateOptions(prompt: prompt)
            o.negativePrompt = negativePrompt
            o.steps = steps
            o.cfg = cfg
            o.seed = seed
            o.sampler = sampler
            o.karras = karras
            o.width = width
            o.height = height
            o.batch = batch
            // Everything that needs no model first, then the base's configs, then the memory
            // estimate: an impossible request is refused before a weight is loaded.
            try o.validate()
            for s in subjects { _ = try s.validatedWeight() }
            let limit = try MemoryLimit.resolve(memoryLimit)
            let base = try BaseModel(path: model)
            let configs = try PipelineConfigs(base: base)
            try o.validate(for: configs, file: model)
            let estimate = MemoryEstimate.generation(base: base, configs: configs, width: width, height: height, batch: batch, guidance: cfg > 1, residency: weights, staged: true)
            try estimate.check(limit: limit, what: "generating \(batch) × \(width)×\(height)", file: model)
            if batch > 1 {
                for i in 0..<batch { try AtomicFileWriter.preflight(output: Self.outputPath(output, index: i, of: batch), inputs: inputs) }
            }
            let applied = try subjects.map { (s) throws(TensorFileError) in try s.applied() }
            // One generation per process: one network in memory at a time.
            let sd = try StableDiffusion(base: base, residency: weights, staged: true)
            sd.memoryLimit = limit
            try sd.apply(applied, mode: apply)
            let loadTime = Date().timeIntervalSince(t0)
            let progress = Progress("generating")
            let images: [FeatureMap]
            do { images = try sd.generate(o, progress: progress.update) } catch let e as TensorFileError { throw e } catch {
                throw TensorFileError(file: model, .invalidArgument("\(error)"))
            }
            progress.finish()
            let modelName = (model as NSString).lastPathComponent
            var params = prompt + "\n"
            if !negativePrompt.isEmpty { params += "Negative prompt: \(negativePrompt)\n" }
            params += "Steps: \(steps), Sampler: \(sampler.displayName)\(karras ? " Karras" : ""), CFG scale: \(cfg), Seed: \(seed), Size: \(width)x\(height)"
            params += ", Model: \(modelName), Model hash: \(base.contentFingerprint?.prefix(10) ?? "unknown"), RNG: torch"
            if !applied.isEmpty {
                let names = applied.map { "\(($0.path as NSString).lastPathComponent):\($0.weight):\($0.subject.targetLayers.tableFingerprint.prefix(10))" }
                params += ", Subjects: \"\(names.joined(separator: ", "))\", Subject mode: \(apply.rawValue)"
            }
            params += ", Version: lidb \(lidbVersion)"
            var written: [String] = []
            for (i, img) in images.enumerated() {
                let path = Self.outputPath(output, index: i, of: images.count)
                try PNGWriter.write(rgb: PNGWriter.rgb8(img), width: img.w, height: img.h, text: [("parameters", params)], to: path)
                written.append(path)
            }
            if timings {
                let t = sd.timings
                print(JSONValue.object([
                    ("load_s", .double(loadTime + t.stagedLoad)), ("text_encoding_s", .double(t.textEncoding)),
                    ("unet_steps_s", .array(t.unetSteps.map { .double($0) })), ("vae_decode_s", .double(t.vaeDecode)),
                    ("total_s", .double(Date().timeIntervalSince(t0))), ("estimated_peak_bytes", .int(Int(clamping: estimate.total.value))),
                ]).serializedString)
            } else {
                print("wrote " + written.joined(separator: ", "))
            }
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the CLIP token ids of texts, as the base's tokenizer gives them (with bos/eos, unpadded).")
    @Option(help: "The base .lidb.") var model: String
    @Argument(help: "Texts.") var texts: [String]
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let tok = try CLIPTokenizer(base: BaseModel(path: model))
            let rows = texts.map { tok.encode($0) }
            if json {
                print(JSONValue.array(zip(texts, rows).map { .object([("text", .string($0.0)), ("ids", .array($0.1.map { .int($0) }))]) }).serializedString)
            } else {
                for r in rows { print(r.map(String.init).joined(separator: " ")) }
            }
        }
    }
}
