import ArgumentParser
import Compute
import TensorFile
#if canImport(Glibc)
import Glibc
#endif

extension LidbCommand {
    /// The `lidb` program. Every failure is one line on stderr: usage errors (unknown options,
    /// missing or malformed values) exit 2 like bad input, as `--help` promises; `--help` and
    /// `--version` print on stdout and exit 0. Interrupting a command (SIGINT, SIGTERM, SIGHUP)
    /// removes the temporary file of an unfinished output.
    public static func runMain(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        InterruptCleanup.install(
            messagePrefix: "lidb: error: ",
            busErrorMessage: "the file shrank while it was being read (another program truncated or rewrote it); stopped, no output written",
            exitCode: 2)
        installTestHooks()
        Parallel.shortenBLASWait()
        if let problem = seedProblem(arguments) { usageFailure(problem, arguments) }
        do {
            var command = try parseAsRoot(joiningNegativeNumbers(arguments))
            try command.run()
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            switch exitCode(for: error) {
            case .success: Self.exit(withError: error)  // --help, --version: printed on stdout
            case .validationFailure: usageFailure(Self.message(for: error), arguments)
            default: failure(Self.message(for: error))  // an error no command turned into its own line
            }
        }
        Glibc.exit(0)
    }

    /// Prints `lidb: error: MESSAGE (see 'lidb COMMAND --help')` as one line and exits 2.
    static func usageFailure(_ message: String, _ arguments: [String]) -> Never {
        var text = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters() }.filter { !$0.isEmpty }.joined(separator: "; ")
        if text.isEmpty { text = arguments.isEmpty ? "no command given" : "invalid command line" }
        printError("lidb: error: \(text) (see '\(commandPath(arguments)) --help')")
        Glibc.exit(2)
    }

    /// Prints `lidb: error: MESSAGE` as one line and exits 2.
    static func failure(_ message: String) -> Never {
        let text = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters() }.filter { !$0.isEmpty }.joined(separator: "; ")
        printError("lidb: error: \(text.isEmpty ? "failed" : text)")
        Glibc.exit(2)
    }

    /// `lidb`, `lidb convert`, `lidb subject init`, … as far as the arguments name subcommands.
    static func commandPath(_ arguments: [String]) -> String {
        var path = ["lidb"]
        var level: [ParsableCommand.Type] = configuration.subcommands
        for a in arguments {
            guard let sub = level.first(where: { $0._commandName == a }) else { break }
            path.append(a)
            level = sub.configuration.subcommands
        }
        return path.joined(separator: " ")
    }

    /// Every `--seed` of lidb is an unsigned 64-bit integer. A negative value would otherwise be
    /// read as an option ("Missing value for '--seed'"); say what a seed must be instead.
    static func seedProblem(_ arguments: [String]) -> String? {
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" { return nil }
            var value: String? = nil
            if a == "--seed" {
                guard i + 1 < arguments.count else { return nil }  // the parser reports the missing value
                value = arguments[i + 1]
                i += 1
            } else if a.hasPrefix("--seed=") {
                value = String(a.dropFirst("--seed=".count))
            }
            if let v = value, UInt64(v) == nil {
                return "--seed must be a non-negative integer from 0 to \(UInt64.max), got '\(v)'"
            }
            i += 1
        }
        return nil
    }

    /// `--option -1.5` → `--option=-1.5`, so that a negative number reaches the option as its value
    /// (and its own check) instead of being taken for an option itself.
    static func joiningNegativeNumbers(_ arguments: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" { out += arguments[i...]; break }
            if a.hasPrefix("--"), a.count > 2, !a.contains("="), i + 1 < arguments.count, isNegativeNumber(arguments[i + 1]) {
                out.append(a + "=" + arguments[i + 1])
                i += 2
                continue
            }
            out.append(a)
            i += 1
        }
        return out
    }

    static func isNegativeNumber(_ s: String) -> Bool {
        guard s.hasPrefix("-"), s.count > 1 else { return false }
        let rest = s.dropFirst()
        if let c = rest.first, c.isNumber || (c == "." && rest.dropFirst().first?.isNumber == true) { return true }
        return ["inf", "infinity", "nan"].contains(rest.lowercased())
    }

    /// `LIDB_TEST_PAUSE_AFTER_TEMP=SECONDS` (tests only): after creating an output's temporary file,
    /// name it on stderr and pause, so a test can interrupt a write in progress deterministically.
    static func installTestHooks() {
        guard let v = getenv("LIDB_TEST_PAUSE_AFTER_TEMP"), let seconds = UInt32(String(cString: v)) else { return }
        AtomicFileWriter.temporaryFileCreated = { path in
            printError("lidb: test: temporary file \(path)")
            var left = seconds
            while left > 0 { left = sleep(left) }
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> Substring {
        var s = self
        while s.first?.isWhitespace == true { s.removeFirst() }
        while s.last?.isWhitespace == true { s.removeLast() }
        return s
    }
}

/// Checks a command's output file before any work: not a folder, a device or a FIFO; its folder
/// exists and is writable; it is none of the inputs (nil entries are options not given).
func checkOutput(_ output: String, inputs: [String?]) throws {
    try reportingErrors { try AtomicFileWriter.preflight(output: output, inputs: inputs.compactMap { $0 }) }
}

/// `checkOutput` for an output folder that the command creates.
func checkOutputFolder(_ output: String, inputs: [String?]) throws {
    try reportingErrors { try AtomicFileWriter.preflight(outputFolder: output, inputs: inputs.compactMap { $0 }) }
}
