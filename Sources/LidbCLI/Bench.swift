import ArgumentParser
import TensorFile
#if canImport(Glibc)
import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure lidb's own operations (the anchors they are compared with live in Benchmarks/).",
        subcommands: [BenchFormat.self]
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
