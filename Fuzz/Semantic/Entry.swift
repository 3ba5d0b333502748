// libFuzzer entry point for the semantic layers (Fuzz/README.md): the input is a stream of
// choices that builds a valid container — a subject, a base, or a hypernetwork, written with the
// library's own writers so headers and checksums pass — with hostile contents, then reads it and
// runs what a user would run on it. A finding is a trap, a sanitizer report, an allocation over
// libFuzzer's -malloc_limit_mb, or one of the oracles (preconditions) stating what an accepted
// file must never lead to: non-finite merged weights or images, temp files or outputs left
// after a failure, readers returning sizes later code would overrun.
//
// The first choice picks the layer: 0 subject files, 1 base configs, 2 hypernetwork configs.
// LIDB_FUZZ_ONLY=subject|base|hyper restricts a run to one of them.

import Foundation

nonisolated(unsafe) private var only: Int? = {
    switch ProcessInfo.processInfo.environment["LIDB_FUZZ_ONLY"] {
    case "subject": return 0
    case "base": return 1
    case "hyper", "hypernetwork": return 2
    default: return nil
    }
}()

/// LIDB_FUZZ_TRACE=1 prints each step an input reaches (to see what a crash input builds).
let tracing = ProcessInfo.processInfo.environment["LIDB_FUZZ_TRACE"] != nil

func trace(_ message: @autoclosure () -> String) {
    if tracing { FileHandle.standardError.write((message() + "\n").data(using: .utf8)!) }
}

/// Oracles switched off for this run (LIDB_FUZZ_IGNORE=id,id,…): a broken promise already
/// reported is let through, so the run can look for other findings behind it.
let ignoredOracles = Set((ProcessInfo.processInfo.environment["LIDB_FUZZ_IGNORE"] ?? "").split(separator: ",").map(String.init))

/// A promise about accepted input; when broken, stops the process with the oracle's id and the
/// message (`precondition` would drop the message in a release build).
func oracle(_ id: String, _ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition && !ignoredOracles.contains(id) { fatalError("semantic fuzz oracle [\(id)]: " + message()) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func lidbFuzzSemantic(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let fx = FuzzFixtures.shared
    var c = Choices(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    let layer = Int(c.byte() % 3)
    switch only ?? layer {
    case 0: SubjectFuzz.run(&c, fx)
    case 1: BaseFuzz.run(&c, fx)
    default: HyperFuzz.run(&c, fx)
    }
    fx.endRun()
    return 0
}
