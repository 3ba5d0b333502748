import ArgumentParser
import Diffusion
import Hypernetwork
import TensorFile
#if canImport(Glibc)
import Glibc
#endif

/// `lidb convert W.safetensors --kind hypernetwork --config hyper.json -o hyper.lidb`.
func convertHypernetwork(input: String, config: String, output: String, dtype: DType?, zstd: Bool) throws {
    try reportingErrors {
        let s = try HypernetworkConverter.convert(weights: input, config: config, to: output, dtype: dtype, zstd: zstd)
        print("wrote \(output): hypernetwork, \(s.tensorCount) tensors, \(s.layers) target layers")
    }
}

struct BenchHyper: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hyper",
        abstract: "Time the hypernetwork on one preprocessed photo; prints JSON.",
        discussion: """
        Loads MODEL, reads the preprocessed pixel values (tensor 'pixel_values', f32 [3, S, S]) \
        from --pixels, and runs the encoder and decoder --repeat times (model loaded, same input). \
        --check compares the predicted factors with a reference (tensors 'down_train' and \
        'up_train', every layer's factors concatenated in table order) and reports the relative error.
        """
    )
    @Option(help: "The hypernetwork (.lidb).") var model: String
    @Option(help: "Preprocessed pixel values (.safetensors with tensor 'pixel_values').") var pixels: String
    @Option(name: .customLong("repeat"), help: "Photos to time.") var repeatCount: Int = 3
    @Option(help: "Reference output (.safetensors with 'down_train' and 'up_train').") var check: String?

    func run() throws {
        try reportingErrors {
            var t0 = now()
            let h = try Hypernetwork(path: model)
            let load = now() - t0
            let px = try f32Tensor(SafetensorsFile(path: pixels), "pixel_values")
            var times: [Double] = [], cpu: [Double] = []
            var preds: [LayerPrediction] = []
            for _ in 0..<max(repeatCount, 1) {
                t0 = now()
                let c0 = processCPUTime()
                preds = try h.predict(pixels: px)
                times.append(now() - t0)
                cpu.append(processCPUTime() - c0)
            }
            var pairs: [(String, JSONValue)] = [("layers", .int(preds.count)), ("load_s", .double(load)),
                                                ("median_s", .double(times.sorted()[times.count / 2])), ("all_s", .array(times.map { .double($0) })),
                                                ("cpu_s_median", .double(cpu.sorted()[cpu.count / 2]))]
            if let check {
                let ref = try SafetensorsFile(path: check)
                var worst: Float = 0
                for (name, got) in [("down_train", preds.flatMap(\.downTrain)), ("up_train", preds.flatMap(\.upTrain))] {
                    let want = try f32Tensor(ref, name)
                    guard want.count == got.count else {
                        throw TensorFileError(file: check, tensor: name, .sizeMismatch(expected: UInt64(got.count * 4), actual: UInt64(want.count * 4)))
                    }
                    let scale = want.map(abs).max() ?? 1
                    worst = max(worst, zip(got, want).map { abs($0 - $1) }.max()! / scale)
                }
                pairs.append(("max_rel_error_vs_reference", .double(Double(worst))))
            }
            print(JSONValue.object(pairs).serializedString)
        }
    }
}

/// CPU seconds used by this process so far (all threads).
func processCPUTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func f32Tensor(_ f: TensorCollection, _ name: String) throws(TensorFileError) -> [Float] {
    guard let info = f.tensors.first(where: { $0.name == name }) else { throw TensorFileError(file: f.path, tensor: name, .tensorNotFound) }
    guard DTypeConversion.canConvert(from: info.dtype, to: .F32) else {
        throw TensorFileError(file: f.path, tensor: name, .unsupportedConversion(from: info.dtype.name, to: "F32"))
    }
    let b = try f.tensorBytes(name)
    var out = [Float](repeating: 0, count: info.elementCount)
    out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: info.dtype, into: $0, to: .F32, count: info.elementCount) }
    return out
}
