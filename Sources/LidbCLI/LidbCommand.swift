import ArgumentParser
import Hypernetwork
import Imaging
import TensorFile
import Training
import Compute
#if canImport(Glibc)
import Glibc
#endif

/// The `lidb` command line: thin wrappers over the library.
public struct LidbCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "lidb",
        abstract: "Portable HyperDreamBooth subject deltas: file format tools, converters and runtime.",
        discussion: """
        Files: .lidb (lidb's container: base checkpoints, hypernetworks, subject deltas) and \
        .safetensors (single files or sharded through *.safetensors.index.json).
        Exit codes: 0 success, 1 a check found damage (verify), 2 bad input or usage.
        """,
        version: "0.1.0",
        subcommands: [Inspect.self, Verify.self, Convert.self, Export.self, SubjectCommand.self, Personalize.self, Finetune.self, Merge.self, Unmerge.self, Generate.self, Grid.self, Tokenize.self, Bench.self]
    )
    public init() {}
}

/// The library's typed errors: each describes itself in one line naming the file, option or
/// step and the problem.
protocol ReportedError: Error, CustomStringConvertible {}
extension TensorFileError: ReportedError {}
extension HypernetworkError: ReportedError {}
extension ImageError: ReportedError {}
extension TrainingError: ReportedError {}
extension ComputeError: ReportedError {}

/// Runs `body`, turning library errors (files, hypernetworks, images, training, layers) into one
/// line on stderr and exit code 2.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as any ReportedError {
        printError("lidb: error: \(e.description)")
        throw ExitCode(2)
    }
}

func printError(_ s: String) {
    FileHandleStderr.write(s + "\n")
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var s = s
        s.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
    }
    static var isTerminal: Bool { isatty(2) != 0 }
}

/// A one-line progress indicator on stderr, shown only when stderr is a terminal.
final class Progress {
    let label: String
    let enabled: Bool
    var last = -1
    init(_ label: String) {
        self.label = label
        enabled = FileHandleStderr.isTerminal
    }
    func update(_ done: Int, _ total: Int) {
        guard enabled, total > 0 else { return }
        let pct = done * 100 / total
        if pct != last {
            last = pct
            FileHandleStderr.write("\r\(label) \(pct)% (\(done)/\(total))")
        }
    }
    func finish() { if enabled && last >= 0 { FileHandleStderr.write("\n") } }
}

func isDiffusersFolder(_ path: String) -> Bool {
    var st = stat()
    guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return false }
    return access(path + "/model_index.json", F_OK) == 0
}
