#if canImport(Glibc)
import Glibc
#endif

// libFuzzer entry point: the PyTorch zip reader and the non-executing pickle interpreter. The
// input is written to a file in /dev/shm (the reader maps files), opened, and every tensor read.
nonisolated(unsafe) private var scratchPath: String = ""

@_cdecl("LLVMFuzzerTestOneInput")
public func lidbFuzzTorch(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    if scratchPath.isEmpty { scratchPath = "/dev/shm/lidb-fuzz-\(getpid()).pt" }
    let fd = open(scratchPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { return 0 }
    if size > 0, let data { _ = write(fd, data, size) }
    close(fd)
    if let c = try? TorchCheckpoint(path: scratchPath) {
        for t in c.tensors {
            if let b = try? c.tensorBytes(t.name) { precondition(b.count == t.byteCount) }
        }
        _ = c.metadataJSON
    }
    return 0
}
