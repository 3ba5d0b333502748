import ArgumentParser
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

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert between safetensors and .lidb.",
        discussion: """
        The output format follows OUTPUT's extension (.lidb or .safetensors). INPUT may be a \
        .lidb, a .safetensors file or a *.safetensors.index.json of a sharded checkpoint. With \
        --dtype keep the conversion is lossless: safetensors → lidb → safetensors gives the same \
        bytes. --dtype f32|f16|bf16 casts floating-point tensors (round to nearest even) and leaves \
        integer tensors alone; values that overflow to ±inf or become NaN are reported. The output \
        appears only when complete (written to a temporary file, synced, renamed).
        """
    )

    @Argument(help: "The file to read.") var input: String
    @Option(name: .shortAndLong, help: "The file to write (.lidb or .safetensors).") var output: String
    @Option(help: "Element type of floating-point tensors in the output: keep, f32, f16, bf16.") var dtype: DTypeChoice = .keep
    @Option(help: "Kind recorded in a .lidb output (tensors, base, hypernetwork, subject, basis).") var kind: String = "tensors"
    @Flag(help: "Compress tensors with zstd where it saves space (.lidb output).") var zstd = false

    func run() throws {
        try reportingErrors {
            let src = try openTensorCollection(input)
            let progress = Progress("converting")
            let summary = try convertCollection(src, to: output, dtype: dtype.dtype, kind: kind, zstd: zstd,
                                                progress: progress.update)
            progress.finish()
            for (name, r) in summary.lossy {
                printError("lidb: warning: \(input): tensor '\(name)': \(r.overflowed) value(s) overflowed to ±inf, \(r.nans) NaN value(s)")
            }
            print("wrote \(output) (\(summary.tensorCount) tensors" + (dtype == .keep ? ", lossless)" : ", \(summary.converted) cast to \(dtype.rawValue))"))
        }
    }
}
