#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file so that it appears under its final name complete or not at all: data goes to a
/// temporary file in the same folder, which is flushed to disk and then renamed over the target.
/// If the writer is dropped without `commit()`, the temporary file is removed.
public final class AtomicFileWriter {
    public let path: String
    public let temporaryPath: String
    private var fd: Int32
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private(set) public var position: UInt64 = 0
    private var done = false

    static let bufferSize = 1 << 20

    public init(path: String) throws(TensorFileError) {
        self.path = path
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var template = ((dir.isEmpty ? "/" : dir + "/") + "." + base + ".tmp-XXXXXX").utf8CString
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw TensorFileError(file: path, .io(operation: "create a temporary file", message: errnoMessage())) }
        self.fd = fd
        self.temporaryPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        _ = fchmod(fd, 0o644)
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 64)
    }

    deinit {
        if !done { abort() }
        buffer.deallocate()
    }

    private func fail(_ op: String) -> TensorFileError {
        TensorFileError(file: path, .io(operation: op, message: errnoMessage()))
    }

    /// Appends bytes (buffered; large writes go straight through).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(TensorFileError) {
        guard bytes.count > 0 else { return }
        if buffered + bytes.count <= buffer.count {
            (buffer.baseAddress! + buffered).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            buffered += bytes.count
        } else {
            try flush()
            if bytes.count >= buffer.count / 2 {
                try writeAll(bytes)
            } else {
                buffer.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                buffered = bytes.count
            }
        }
        position += UInt64(bytes.count)
    }

    public func write(_ bytes: [UInt8]) throws(TensorFileError) {
        try bytes.withBytes { (b) throws(TensorFileError) in try write(b) }
    }

    public func writeZeros(_ count: Int) throws(TensorFileError) {
        guard count > 0 else { return }
        try write([UInt8](repeating: 0, count: count))
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws(TensorFileError) {
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + off, min(bytes.count - off, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("write")
            }
            off += n
        }
    }

    public func flush() throws(TensorFileError) {
        if buffered > 0 {
            try writeAll(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<buffered]))
            buffered = 0
        }
    }

    /// Overwrites bytes already written at `offset` (used to fill in checksums at the end).
    public func overwrite(_ bytes: [UInt8], at offset: UInt64) throws(TensorFileError) {
        try flush()
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + off, bytes.count - off, off_t(offset) + off_t(off)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("write")
            }
            off += n
        }
    }

    /// Flushes, syncs, and renames the temporary file to the final path; then syncs the folder.
    public func commit() throws(TensorFileError) {
        try flush()
        guard fsync(fd) == 0 else { throw fail("sync") }
        guard close(fd) == 0 else { fd = -1; throw fail("close") }
        fd = -1
        guard rename(temporaryPath, path) == 0 else { throw fail("rename the temporary file") }
        done = true
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }

    /// Removes the temporary file; the target is left as it was.
    public func abort() {
        if fd >= 0 { close(fd); fd = -1 }
        if !done { unlink(temporaryPath) }
        done = true
    }
}
