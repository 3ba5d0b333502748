import ArgumentParser
import Checkpoint
import SubjectDelta
import TensorFile

extension TargetSet: ExpressibleByArgument {}
extension SubjectDType: ExpressibleByArgument {}

/// `--dtype` of `subject import`: the source's precision, or a subject dtype.
enum ImportDType: String, ExpressibleByArgument, CaseIterable {
    case keep, f16, f32, bf16, q8
}
extension LoRAInterop.Format: ExpressibleByArgument {}

struct SubjectImport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Make a subject from a kohya or PEFT/diffusers LoRA file.",
        discussion: """
        Reads kohya files (lora_unet_… / lora_te_… / lora_te1_… with .lora_down, .lora_up, .alpha; \
        diffusers-style or LDM-style UNet paths) and PEFT/diffusers files (unet.….lora_A / .lora_B, \
        alpha from lora_adapter_metadata; text-encoder keys with or without text_model.). Keys that \
        match no layer of the base are listed and refused unless --ignore-unknown. With --project, \
        each LoRA term is replaced by its least-squares projection onto LiDB bases (dimensions \
        --down-dim, --up-dim, from --seed) and the relative error of ΔW is printed per layer.
        """
    )
    @Argument(help: "The LoRA .safetensors file.") var lora: String
    @Option(help: "The base it applies to.") var base: String
    @Flag(help: "Project onto LiDB bases.") var project = false
    @Option(help: "Down basis dimension a (with --project).") var downDim: Int = 100
    @Option(help: "Up basis dimension b (with --project).") var upDim: Int = 50
    @Option(help: "Basis seed (with --project).") var seed: UInt64 = 0
    @Flag(help: "Skip keys that match no layer (listed on stderr).") var ignoreUnknown = false
    @Option(help: "Element type on disk: keep (the LoRA's own: f16, bf16, or f32 for anything else), f16, f32, bf16, q8.") var dtype: ImportDType = .keep
    @Option(name: .shortAndLong, help: "Output subject .lidb.") var output: String

    func run() throws {
        try checkOutput(output, inputs: [lora, base])
        try reportingErrors {
            guard downDim >= 1, upDim >= 1, downDim <= SubjectLimits.maxBasisDimension, upDim <= SubjectLimits.maxBasisDimension else {
                throw TensorFileError(file: output, .invalidArgument("--down-dim and --up-dim must be 1 … \(SubjectLimits.maxBasisDimension)"))
            }
            let b = try BaseModel(path: base)
            var (s, report, unknown) = try LoRAInterop.importLoRA(path: lora, base: b, ignoreUnknown: ignoreUnknown)
            if !unknown.isEmpty { printError("lidb: warning: \(lora): skipped \(unknown.count) key(s) matching no layer: " + unknown.prefix(8).joined(separator: ", ")) }
            if project {
                let (p, errors) = try LoRAInterop.project(s, seed: seed, a: downDim, b: upDim)
                s = p
                for (name, e) in errors { print(String(format1(e * 100)) + "%\t" + name) }
                let mean = errors.map(\.1).reduce(0, +) / Double(max(errors.count, 1))
                print("projection: mean relative error of ΔW \(format1(mean * 100))%, worst \(format1((errors.map(\.1).max() ?? 0) * 100))%")
            }
            let stored: SubjectDType
            switch dtype {
            case .keep: stored = report.keepDType
            case .f16: stored = .f16
            case .f32: stored = .f32
            case .bf16: stored = .bf16
            case .q8: stored = .q8
            }
            let sources = report.sourceDTypes.map(\.name).sorted().joined(separator: "/")
            if report.isLossy(stored) {
                printError("lidb: note: \(lora): storing the \(sources) LoRA factors as \(stored.rawValue) rounds them; --dtype keep stores them exactly")
            }
            try s.write(to: output, dtype: stored)
            print("wrote \(output): subject from \(lora), \(report.layers) layers, rank \(report.rank), \(stored.rawValue)" + (project ? ", projected onto LiDB bases (seed \(seed))" : ""))
        }
    }
}

struct SubjectExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a subject as a standard LoRA file (kohya or PEFT naming).",
        discussion: """
        Each layer's terms are folded into one LoRA (LiDB terms through their bases), with the \
        scale folded into the up factor and alpha equal to the rank. The file loads with diffusers' \
        load_lora_weights; kohya naming uses diffusers-style UNet paths (lora_unet_down_blocks_…) \
        and lora_te_text_model_… for the text encoder.
        """
    )
    @Argument(help: "The subject.") var subject: String
    @Option(help: "kohya or peft.") var format: LoRAInterop.Format
    @Option(name: .shortAndLong, help: "Output .safetensors.") var output: String

    func run() throws {
        try checkOutput(output, inputs: [subject])
        try reportingErrors {
            let s = try Subject(path: subject)
            try LoRAInterop.export(s, format: format, to: output)
            print("wrote \(output): \(format.rawValue) LoRA, \(s.layers.count) layers")
        }
    }
}

struct SubjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subject",
        abstract: "Create and inspect subject deltas (LiDB).",
        subcommands: [SubjectInit.self, SubjectImport.self, SubjectExport.self]
    )
}

struct SubjectInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a subject with random or zero trained factors (for tests and benchmarks).",
        discussion: """
        Targets: unet-attn (UNet self/cross-attention q, k, v, out), text-attn (text encoder \
        q, k, v, out), text-mlp (text encoder fc1, fc2), paper (all three; 200 layers on SD 1.5). \
        Each layer gets a LiDB term of the given rank with bases of dimension --down-dim (a) and \
        --up-dim (b), clamped to the layer's size, generated from --seed (spec/basis.md). \
        --std 0 gives zero factors (ΔW = 0).
        """
    )

    @Option(help: "The base the subject is for.") var base: String
    @Option(help: "Target set: unet-attn, text-attn, text-mlp, paper.") var targets: TargetSet = .paper
    @Option(help: "Rank r of each LiDB term.") var rank: Int = 1
    @Option(help: "Down basis dimension a.") var downDim: Int = 100
    @Option(help: "Up basis dimension b.") var upDim: Int = 50
    @Option(help: "LoRA alpha (scale = alpha / rank); default: the rank.") var alpha: Float?
    @Option(help: "Basis seed (unsigned 64-bit).") var seed: UInt64
    @Option(help: "Standard deviation of the random factors; 0 for zeros.") var std: Float = 0.01
    @Option(help: "Element type on disk: f16, f32, bf16, q8.") var dtype: SubjectDType = .f16
    @Flag(help: "Bind the subject to the base's content fingerprint too (not only its layer table).") var strict = false
    @Option(help: "Subject name recorded in the file.") var name: String?
    @Option(help: "Trigger token recorded in the file.") var trigger: String?
    @Option(help: "Class noun recorded in the file.") var className: String?
    @Option(name: .shortAndLong, help: "Output .lidb file.") var output: String

    func run() throws {
        try checkOutput(output, inputs: [base])
        try reportingErrors {
            guard rank >= 1, downDim >= 1, upDim >= 1, rank <= SubjectLimits.maxRank,
                  downDim <= SubjectLimits.maxBasisDimension, upDim <= SubjectLimits.maxBasisDimension else {
                throw TensorFileError(file: output, .invalidArgument(
                    "--rank must be 1 … \(SubjectLimits.maxRank), --down-dim and --up-dim 1 … \(SubjectLimits.maxBasisDimension)"))
            }
            if let alpha, !alpha.isFinite { throw TensorFileError(file: output, .invalidArgument("--alpha must be finite")) }
            guard std.isFinite, std >= 0 else { throw TensorFileError(file: output, .invalidArgument("--std must be finite and ≥ 0")) }
            let b = try BaseModel(path: base)
            let layers = targets.layers(in: b.file.tensors)
            guard !layers.isEmpty else { throw TensorFileError(file: base, .invalidArgument("the base has no layers of target set \(targets.rawValue)")) }
            var info: [(String, JSONValue)] = []
            if let name { info.append(("name", .string(name))) }
            if let trigger { info.append(("trigger", .string(trigger))) }
            if let className { info.append(("class", .string(className))) }
            info.append(("provenance", .object([("made_by", .string("lidb subject init")), ("std", .double(Double(std)))])))
            let s = Subject.initialise(layers: layers, rank: rank, a: downDim, b: upDim, alpha: alpha, basisSeed: seed, std: std,
                                       factorSeed: seed ^ 0x5EED_F00D, targetSet: targets.rawValue, architecture: b.architecture.family.rawValue,
                                       baseContent: strict ? b.contentFingerprint : nil, info: .object(info))
            try s.write(to: output, dtype: dtype)
            let size = try MappedFile(path: output).bytes.count
            print("wrote \(output): subject, \(layers.count) layers (\(targets.rawValue)), \(s.trainedParameters) trained parameters, \(size) bytes (\(dtype.rawValue))")
        }
    }
}

/// `PATH[:WEIGHT]`: a suffix after the last colon that reads as a number is the weight; its
/// range is checked when the subject is used (`SubjectWeight`).
struct SubjectArgument: ExpressibleByArgument {
    var path: String
    var weight: Float
    /// The weight as typed (nil when none was given).
    var weightText: String?
    init?(argument: String) {
        if let colon = argument.lastIndex(of: ":"), let w = Double(argument[argument.index(after: colon)...]) {
            path = String(argument[..<colon])
            weight = Float(w)
            weightText = String(argument[argument.index(after: colon)...])
        } else {
            path = argument
            weight = 1
        }
    }

    /// The weight after checking it is finite and within ±100, naming the file when it is not.
    func validatedWeight() throws(TensorFileError) -> Float {
        guard let weightText, let w = Double(weightText) else { return weight }
        return try SubjectWeight.validated(w, file: path, text: weightText)
    }

    /// Reads the subject and checks the weight.
    func applied() throws(TensorFileError) -> AppliedSubject {
        let w = try validatedWeight()
        let s = try Subject(path: path)
        let a = AppliedSubject(subject: s, weight: w, path: path)
        try a.validate()
        return a
    }
}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add subjects' ΔW to a base's weights.",
        discussion: """
        Each SUBJECT may carry a weight (SUBJECT.lidb:0.8; finite, within ±100). For each touched \
        weight, every subject's ΔW is computed in f32, summed and added to the weight with a single \
        rounding to the base's element type; the output's metadata records what was merged (and the \
        original's fingerprints), so `lidb unmerge` can take it back out. A subject made for another \
        layer table, or whose ΔW would not be finite, is refused.
        """
    )
    @Argument(help: "The base.") var base: String
    @Argument(help: "Subject files, each optionally with :WEIGHT.") var subjects: [SubjectArgument]
    @Option(name: .shortAndLong, help: "Output base file.") var output: String

    func run() throws {
        try checkOutput(output, inputs: [base] + subjects.map(\.path))
        try reportingErrors {
            let applied = try subjects.map { (s) throws(TensorFileError) in try s.applied() }
            let b = try BaseModel(path: base)
            let summary = try Merger.merge(base: b, subjects: applied, to: output)
            print("wrote \(output): \(subjects.count) subject(s) merged into \(summary.touchedLayers) layers")
        }
    }
}

struct Unmerge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take merged subjects back out of a base.",
        discussion: """
        With --original (the base before merging) the touched weights are copied back: the result \
        is bit-identical to the original. Subjects that stay merged would be undone by that copy on \
        the layers they share, so each of them must be given with --reapply (its recorded weight is \
        used): they are added again on the restored weights in the order they were merged, and the \
        result is bit-identical to merging only them into the original. Without --original, ΔW is \
        subtracted in f32 and rounded to the base's type; the largest possible deviation from the \
        original is reported.
        """
    )
    @Argument(help: "The merged base.") var merged: String
    @Argument(help: "The subjects to remove, with the weights they were merged with.") var subjects: [SubjectArgument]
    @Option(name: .shortAndLong, help: "Output base file.") var output: String
    @Option(help: "The original base, for a bit-exact restore.") var original: String?
    @Option(help: "A subject that stays merged, to re-apply after restoring from --original (repeatable).") var reapply: [SubjectArgument] = []

    func run() throws {
        try checkOutput(output, inputs: [merged, original] + subjects.map(\.path))
        try reportingErrors {
            let removed = try subjects.map { (s) throws(TensorFileError) in try s.applied() }
            let m = try BaseModel(path: merged)
            var records = m.metadata["merged"]?.arrayValue ?? []
            let again = try reapply.map { (s) throws(TensorFileError) -> AppliedSubject in
                let subject = try Subject(path: s.path)
                var w = try s.validatedWeight()
                if s.weightText == nil {
                    // The weight it was merged with.
                    let fp = subject.deltaFingerprint, table = subject.targetLayers.tableFingerprint
                    if let i = records.firstIndex(where: { $0["delta_fingerprint"]?.stringValue == fp })
                        ?? records.firstIndex(where: { $0["delta_fingerprint"] == nil && $0["targets_fingerprint"]?.stringValue == table }),
                       let rw = records[i]["weight"]?.doubleValue {
                        w = try SubjectWeight.validated(rw, file: merged)
                        records.remove(at: i)
                    }
                }
                let a = AppliedSubject(subject: subject, weight: w, path: s.path)
                try a.validate()
                return a
            }
            let o = try original.map { (p) throws(TensorFileError) in try BaseModel(path: p) }
            let summary = try Merger.unmerge(merged: m, subjects: removed, original: o, reapply: again, to: output)
            if let original, summary.restored {
                let re = summary.reapplied > 0 ? ", \(summary.reapplied) remaining subject(s) re-applied on shared layers" : ""
                print("wrote \(output): \(summary.touchedLayers) layers restored from \(original) (bit-exact)\(re)")
            } else {
                print("wrote \(output): \(summary.touchedLayers) layers, subtracted; deviation from the original ≤ \(summary.deviationBound ?? 0)")
            }
        }
    }
}
