import ArgumentParser
import Checkpoint
import Diffusion
import TensorFile

enum DTypeChoice: String, ExpressibleByArgument, CaseIterable {
    case keep, f32, f16, bf16
    var dtype: DType? {
        switch self {
        case .keep: return nil
        case .f32: return .F32
        case .f16: return .F16
        case .bf16: return .BF16
        }
    }
}

enum PredictionChoice: String, ExpressibleByArgument, CaseIterable {
    case epsilon
    case v = "v_prediction"
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert checkpoints and tensor files (safetensors, .ckpt/.pt/.bin, diffusers folders, .lidb).",
        discussion: """
        The output format follows OUTPUT's extension (.lidb or .safetensors).

        Base checkpoints: when OUTPUT is .lidb and INPUT is a diffusers folder (model_index.json, \
        unet/, vae/, text_encoder/, tokenizer/, scheduler/; weights .safetensors or .bin) or a \
        single-file Stable Diffusion checkpoint in the original LDM layout (.safetensors or \
        .ckpt), the result is a base: weights under diffusers names, configs, tokenizer, \
        scheduler and fingerprints. SD 1.x, SD 2.x and their inpainting variants are detected from \
        the tensors. A single file carries no configs: they come from the released SD 1.5 / 2.1 \
        configs adjusted to the tensors' shapes, or from --config DIR (a diffusers folder, which \
        also supplies the tokenizer). Without a tokenizer from a folder, a base whose text \
        encoder has CLIP's 49,408 tokens gets lidb's built-in CLIP tokenizer (SD 1.x or SD 2.x \
        special tokens); otherwise a warning says the base has none. tokenizer/tokenizer.json \
        (transformers >= 5) is read like vocab.json + merges.txt.

        Hypernetworks: --kind hypernetwork --config hyper.json makes a hypernetwork file from its         weights; the config and the tensors are checked against each other first         (spec/hypernetwork.md).

        Other inputs convert tensor by tensor. With --dtype keep the conversion is lossless: \
        safetensors → lidb → safetensors gives the same bytes. --dtype f32|f16|bf16 casts \
        floating-point tensors (round to nearest even) and leaves integer tensors alone; values that \
        overflow to ±inf or become NaN are reported. The output appears only when complete \
        (written to a temporary file, synced, renamed; --no-sync skips the sync). Tensors that pass \
        through unchanged are copied by the kernel (copy_file_range), and a .lidb output's checksums \
        are computed from the input on the second core meanwhile.
        """
    )

    @Argument(help: "The file or diffusers folder to read.") var input: String
    @Option(name: .shortAndLong, help: "The file to write (.lidb or .safetensors).") var output: String
    @Option(help: "Element type of floating-point tensors in the output: keep, f32, f16, bf16.") var dtype: DTypeChoice = .keep
    @Option(help: "Kind recorded in a .lidb output of a plain tensor file (tensors, base, hypernetwork, subject, basis).") var kind: String = "tensors"
    @Flag(help: "Compress tensors with zstd where it saves space (.lidb output, not for bases).") var zstd = false
    @Option(help: "Base: use this VAE (diffusers vae folder or a VAE-only file) instead of the checkpoint's.") var vae: String?
    @Flag(help: "Base: take the UNet from the checkpoint's EMA weights (model_ema.*).") var ema = false
    @Option(help: "Base: epsilon or v_prediction (default: the scheduler config's; single files: epsilon for SD 1.x, v_prediction for SD 2.x).")
    var predictionType: PredictionChoice?
    @Flag(help: ArgumentHelp("Do not flush the output to disk before renaming it into place.", discussion: """
        Faster by the time the disk needs to take the data (about 0.6 s for 2 GB on a typical \
        virtual disk). The output still appears only when complete for every program on the \
        running system, but after a crash or power loss soon after, it may be empty or incomplete \
        under its final name. Without this flag the output is on disk when the command returns.
        """)) var noSync = false
    @Option(help: "Base from a single file: a diffusers folder with the model's configs and tokenizer. With --kind hypernetwork: the hypernetwork's hyper.json (spec/hypernetwork.md).") var config: String?

    func run() throws {
        try checkOutput(output, inputs: [input, vae, config])
        if kind == "hypernetwork", let config {
            try convertHypernetwork(input: input, config: config, output: output, dtype: dtype.dtype, zstd: zstd)
            return
        }
        try reportingErrors {
            if kind == "hypernetwork" {
                throw TensorFileError(file: input, .invalidArgument("a hypernetwork needs its configuration: --config hyper.json (spec/hypernetwork.md)"))
            }
            let progress = Progress("converting")
            if output.hasSuffix(".lidb"), try isBaseInput(input) {
                let options = BaseConvertOptions(dtype: dtype.dtype, vae: vae, ema: ema, predictionType: predictionType?.rawValue, configFolder: config,
                                                 validateTokenizer: { (files) throws(TensorFileError) in _ = try CLIPTokenizer(files: files) })
                let plan = try BaseConverter.plan(input: input, options: options)
                for w in plan.warnings { printError("lidb: warning: " + w) }
                let summary = try BaseConverter.write(plan, to: output, dtype: dtype.dtype, sync: !noSync, progress: progress.update)
                progress.finish()
                for (name, r) in summary.lossy {
                    printError("lidb: warning: \(input): tensor '\(name)': \(r.overflowed) value(s) overflowed to ±inf, \(r.nans) NaN value(s)")
                }
                print("wrote \(output): base, \(plan.architecture), \(summary.tensorCount) tensors" + (dtype == .keep ? "" : ", \(summary.cast) cast to \(dtype.rawValue)"))
                print("fingerprints: layer table \(summary.layerTableFingerprint.prefix(16))…, content \(summary.contentFingerprint.prefix(16))…")
                return
            }
            if vae != nil || ema || predictionType != nil || config != nil {
                throw TensorFileError(file: input, .invalidArgument("--vae, --ema, --prediction-type and --config apply only to Stable Diffusion checkpoints converted to a .lidb base"))
            }
            let src = try openTensorCollection(input)
            let summary = try convertCollection(src, to: output, dtype: dtype.dtype, kind: kind, zstd: zstd,
                                                sync: !noSync, progress: progress.update)
            progress.finish()
            for (name, r) in summary.lossy {
                printError("lidb: warning: \(input): tensor '\(name)': \(r.overflowed) value(s) overflowed to ±inf, \(r.nans) NaN value(s)")
            }
            print("wrote \(output) (\(summary.tensorCount) tensors" + (dtype == .keep ? ", lossless)" : ", \(summary.converted) cast to \(dtype.rawValue))"))
        }
    }

    /// A diffusers folder, a base, or a single file with LDM Stable Diffusion names.
    func isBaseInput(_ path: String) throws -> Bool {
        if isDiffusersFolder(path) { return true }
        if kind != "tensors" && kind != "base" { return false }
        let c = try openTensorCollection(path, checksums: .never)
        if let l = c as? LidbFile { return l.kind == "base" }
        return c.tensors.contains { $0.name.hasPrefix("model.diffusion_model.") || $0.name.hasPrefix("conditioner.embedders.") }
    }
}
