import ArgumentParser
import SubjectDelta
import TensorFile

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a file's integrity.",
        discussion: """
        For .lidb: the header checksum, every tensor's CRC-32C, that compressed tensors decode to \
        their declared size, and that all padding is zero; a subject is also checked against \
        spec/subject.md (targets fingerprint, tensor sizes, finite values). For safetensors (which has no \
        checksums): the full structural validation. Exit 0 when intact, 1 when damaged (each damaged \
        tensor or the header is named on stderr), 2 when the file cannot be read at all.
        """
    )

    @Argument(help: "The file to verify.") var path: String

    func run() throws {
        let c: TensorCollection
        do {
            c = try openTensorCollection(path, checksums: .never)
        } catch let e {
            switch e.problem {
            case .io, .notARegularFile:
                printError("lidb: error: \(e.description)")
                throw ExitCode(2)
            default:
                // A header that fails its checksum or validation is damage, not a usage error.
                printError("lidb: damaged: \(e.description)")
                throw ExitCode(1)
            }
        }
        if let l = c as? LidbFile {
            var problems = l.verify()
            if problems.isEmpty && l.kind == "subject" {
                // Intact bytes, but a subject must also satisfy spec/subject.md §4 (fingerprint, sizes, values).
                do { _ = try Subject(file: l) } catch { problems.append(error) }
            }
            if problems.isEmpty {
                print("\(path): OK (lidb \(l.layout.major).\(l.layout.minor), \(l.kind), \(l.tensors.count) tensors, header and \(l.tensors.count) tensor checksums verified\(l.kind == "subject" ? ", valid subject" : ""))")
            } else {
                for p in problems { printError("lidb: damaged: \(p.description)") }
                printError("lidb: \(path): \(problems.count) damaged part(s)")
                throw ExitCode(1)
            }
        } else {
            print("\(path): OK (\(c.formatName), \(c.tensors.count) tensors; structure valid — safetensors carries no checksums)")
        }
    }
}
