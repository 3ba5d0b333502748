import ArgumentParser
import Checkpoint
import SubjectDelta
import Compute
import Diffusion
import Dispatch
import TensorFile
#if canImport(Glibc)
import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure lidb's own operations (the anchors they are compared with live in Benchmarks/).",
        subcommands: [BenchFormat.self, BenchSubject.self, BenchUNet.self, BenchHyper.self]
    )
}

struct BenchFormat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "format",
        abstract: "Time opening (map + parse + validate) and checksumming a tensor file; prints JSON.",
        discussion: """
        Opens FILE --repeat times (each a fresh map and a full header validation, without tensor \
        checksums) and reports the median, then computes CRC-32C over every tensor's stored bytes \
        twice (the first pass faults the mapping in) and reports GB/s (10^9 bytes per second).
        """
    )

    @Argument(help: "A .lidb or .safetensors file.") var path: String
    @Option(name: .customLong("repeat"), help: "How many times to open the file.") var repeatCount: Int = 20

    func run() throws {
        try reportingErrors {
            var opens: [Double] = []
            var tensorCount = 0
            for _ in 0..<max(repeatCount, 1) {
                let t0 = now()
                let c = try openTensorCollection(path, checksums: .never)
                tensorCount = c.tensors.count
                opens.append(now() - t0)
            }
            opens.sort()
            let c = try openTensorCollection(path, checksums: .never)
            var bytes: UInt64 = 0
            var passes: [Double] = []
            var crc: UInt32 = 0
            for _ in 0..<2 {
                let t0 = now()
                bytes = 0
                for t in c.tensors {
                    let b = try c.tensorBytes(t.name)
                    crc ^= CRC32C.checksum(b.bytes)
                    bytes += UInt64(b.count)
                }
                passes.append(now() - t0)
            }
            var verifySeconds: Double? = nil
            if let l = c as? LidbFile {
                let t0 = now()
                let problems = l.verify()
                verifySeconds = now() - t0
                if !problems.isEmpty { printError("lidb: warning: \(problems.count) damaged part(s)") }
            }
            let out = JSONValue.object([
                ("file", .string(path)), ("format", .string(c.formatName)), ("tensors", .int(tensorCount)),
                ("tensor_bytes", .int(bytes)),
                ("open_ms_median", .double(opens[opens.count / 2] * 1000)), ("open_ms_min", .double(opens[0] * 1000)),
                ("open_ms_max", .double(opens[opens.count - 1] * 1000)),
                ("crc_first_pass_gbps", .double(Double(bytes) / passes[0] / 1e9)),
                ("crc_warm_gbps", .double(Double(bytes) / passes[1] / 1e9)),
                ("crc_hardware", .bool(CRC32C.usesHardware)),
                ("verify_seconds", verifySeconds.map { .double($0) } ?? .null),
                ("checksum_xor", .string(String(crc, radix: 16))),
            ])
            print(out.serializedString)
        }
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

struct BenchSubject: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subject",
        abstract: "Time merge, unmerge and live switching of a subject on a base; prints JSON.",
        discussion: """
        Loads the subject's target weights of BASE as f32, then, --repeat times: merge in place \
        (factors from the cached bases, ΔW added with sgemm), unmerge by restore (copy back) and by \
        subtraction, and a live switch (building the subject's delta terms, what the runtime attaches \
        to its layers). The first basis \
        generation (cold) is reported separately. Medians in milliseconds.
        """
    )
    @Option(help: "The base.") var base: String
    @Option(help: "The subject.") var subject: String
    @Option(name: .customLong("repeat"), help: "Repetitions.") var repeatCount: Int = 10

    func run() throws {
        try reportingErrors {
            let b = try BaseModel(path: base)
            let s = try Subject(path: subject)
            let applied = [AppliedSubject(subject: s, weight: 1, path: subject)]
            try s.check(against: b, subjectPath: subject)
            let cache = BasisCache()
            var t0 = now()
            for l in s.layers { _ = try s.lowRankFactors(l, cache: cache) }
            let basesCold = now() - t0
            let weights = try MergedWeights(base: b, names: s.layers.map(\.target.weightName))
            var merge: [Double] = [], restore: [Double] = [], subtract: [Double] = [], switching: [Double] = []
            for _ in 0..<max(repeatCount, 1) {
                t0 = now(); try weights.apply(applied, cache: cache); merge.append(now() - t0)
                t0 = now(); weights.restore(); restore.append(now() - t0)
                try weights.apply(applied, cache: cache)
                t0 = now(); try weights.apply(applied, sign: -1, cache: cache); subtract.append(now() - t0)
                weights.restore()
                t0 = now(); _ = try s.deltaTerms(weight: 1, cache: cache); switching.append(now() - t0)
            }
            func med(_ v: [Double]) -> JSONValue { .double(v.sorted()[v.count / 2] * 1000) }
            let params = s.layers.reduce(0) { $0 + $1.target.out * $1.target.inDim }
            print(JSONValue.object([
                ("layers", .int(s.layers.count)), ("weights_touched", .int(params)),
                ("bases_cold_ms", .double(basesCold * 1000)),
                ("merge_ms", med(merge)), ("unmerge_restore_ms", med(restore)), ("unmerge_subtract_ms", med(subtract)),
                ("live_switch_ms", med(switching)),
            ]).serializedString)
        }
    }
}

struct BenchUNet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unet",
        abstract: "Time UNet evaluations on a base; prints JSON.",
        discussion: """
        Inputs are drawn exactly as torch.Generator().manual_seed(SEED) then torch.randn(batch, 4, \
        L, L) and torch.randn(batch, 77, cross_attention_dim) would draw them, so PyTorch can run \
        the same evaluation (Benchmarks/unet). --check compares the output with a reference saved by \
        that script (tensor 'out') and reports the relative error. A latent of L × L stands for \
        images of L·f × L·f pixels, f being the base's VAE scale factor 2^(VAE blocks − 1) (8 for \
        SD 1.x/2.x); the output reports it as image_size. The request is checked before the UNet \
        is loaded: latent 1…2048, batch ≥ 1, and the estimated peak memory within --memory-limit \
        (default: LIDB_MEMORY_LIMIT, else the machine's memory).
        """
    )
    @Option(help: "The base.") var model: String
    @Option(help: "Latent size L (image size / the VAE's scale factor: 64 for 512×512 images with SD's 8× VAE).") var latent: Int = 64
    @Option(help: "Batch (2 = one classifier-free-guidance step).") var batch: Int = 2
    @Option(help: "Timestep.") var timestep: Float = 500
    @Option(help: "Input seed.") var seed: UInt64 = 0
    @Option(name: .customLong("repeat"), help: "Evaluations to time.") var repeatCount: Int = 3
    @Option(help: "Reference output (.safetensors with tensor 'out') to compare with.") var check: String?
    @Option(help: "UNet weights: f32, f16-per-layer or bf16-per-layer (see lidb generate --help).") var weights: WeightResidency = .f32
    @Option(help: "Refuse requests whose estimated peak memory exceeds this (e.g. 16G; default: LIDB_MEMORY_LIMIT, else the machine's memory).")
    var memoryLimit: String?
    @Option(help: "Products in f32 or bf16 (see lidb generate --help).") var precision: ComputePrecision = .f32

    /// Largest latent side (images of 16,384 pixels with an 8× VAE).
    static let maxLatent = 2048

    func run() throws {
        try reportingErrors {
            guard (1...Self.maxLatent).contains(latent) else {
                throw TensorFileError(file: "--latent", .invalidArgument("\(latent): must be 1…\(Self.maxLatent)"))
            }
            guard batch >= 1 else { throw TensorFileError(file: "--batch", .invalidArgument("\(batch): at least 1")) }
            guard timestep.isFinite, timestep >= 0, timestep <= 100_000 else {
                throw TensorFileError(file: "--timestep", .invalidArgument("\(timestep): must be a number in 0…100000"))
            }
            let limit = try MemoryLimit.resolve(memoryLimit)
            if let notice = ComputePrecision.select(precision) { printError("lidb: notice: " + notice) }
            var t0 = now()
            let base = try BaseModel(path: model)
            let configs = try PipelineConfigs(base: base)
            let estimate = MemoryEstimate.unetEvaluations(base: base, configs: configs, latent: latent, batch: batch, residency: weights)
            try estimate.check(limit: limit, what: "\(batch) UNet evaluations at \(latent)×\(latent)", file: model)
            let unet = try UNetNetwork(base: base, residency: weights)
            let load = now() - t0
            var g = TorchGenerator(seed: seed)
            let inCh = unet.architecture.inChannels, ctxDim = unet.architecture.contextDim
            let per = inCh * latent * latent, ctxPer = 77 * ctxDim
            let sample = g.randn(count: batch * per), context = g.randn(count: batch * ctxPer)
            var times: [Double] = []
            var output = [Float](repeating: 0, count: batch * per)
            for _ in 0..<max(repeatCount, 1) {
                t0 = now()
                final class Box: @unchecked Sendable {
                    var out: [[Float]]
                    var error: (any Error)?
                    init(_ n: Int) { out = Array(repeating: [], count: n) }
                }
                let box = Box(batch)
                let lock = DispatchSemaphore(value: 1)
                let (b, l, ts) = (batch, latent, timestep)
                Parallel.forEach(b) { i in
                    let r: Result<[Float], any Error>
                    do {
                        let x = try FeatureMap(c: inCh, h: l, w: l, data: Array(sample[(i * per)..<((i + 1) * per)]))
                        let c = try Matrix(rows: 77, cols: ctxDim, data: Array(context[(i * ctxPer)..<((i + 1) * ctxPer)]))
                        r = .success(try unet.forward(x, timestep: ts, context: c).data)
                    } catch { r = .failure(error) }
                    lock.wait()
                    switch r {
                    case let .success(y): box.out[i] = y
                    case let .failure(e): box.error = box.error ?? e
                    }
                    lock.signal()
                }
                if let e = box.error { throw TensorFileError(file: model, .invalidArgument("UNet: \(e)")) }
                times.append(now() - t0)
                output = box.out.flatMap { $0 }
            }
            var pairs: [(String, JSONValue)] = [("latent", .int(latent)), ("image_size", .int(latent * configs.vae.scaleFactor)), ("batch", .int(batch)),
                                                ("precision", .string(ComputePrecision.current.rawValue)),
                                                ("estimated_peak_bytes", .int(Int(clamping: estimate.total.value))), ("load_s", .double(load)),
                                                ("median_s", .double(times.sorted()[times.count / 2])), ("all_s", .array(times.map { .double($0) }))]
            if let check {
                let ref = try SafetensorsFile(path: check)
                let want = try ref.tensorBytes("out").bytes.withMemoryRebound(to: Float.self) { Array($0) }
                guard want.count == output.count else { throw TensorFileError(file: check, tensor: "out", .sizeMismatch(expected: UInt64(output.count * 4), actual: UInt64(want.count * 4))) }
                let scale = want.map(abs).max() ?? 1
                let err = zip(output, want).map { abs($0 - $1) }.max()! / scale
                pairs.append(("max_rel_error_vs_reference", .double(Double(err))))
            }
            print(JSONValue.object(pairs).serializedString)
        }
    }
}
