import CLidbSupport
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file so that it appears under its final name complete or not at all: data goes to a
/// temporary file `.NAME.tmp-XXXXXX` in the same folder, which is flushed to disk and then renamed
/// over the target. If the writer is dropped without `commit()`, the temporary file is removed; it
/// is also removed when SIGINT, SIGTERM or SIGHUP ends the process, once
/// `InterruptCleanup.install` has run (the command line does that). After a `kill -9` or a power
/// loss a `.NAME.tmp-XXXXXX` file may remain next to the output; it is never read and is safe to
/// delete.
///
/// The target, when it exists, must be a regular file (a device, FIFO or socket is refused, never
/// replaced). A new file gets mode 0666 minus the umask; a replaced file keeps its permission bits.
///
/// With `sync: false` the data is not flushed to disk before the rename: the output still appears
/// only when complete for every process on the running system, but a crash or power loss shortly
/// after may leave it empty or partly written under its final name. With `sync: true` (the
/// default) writeback of the data starts as it is written, so the final fsync waits only for the
/// tail.
public final class AtomicFileWriter {
    public let path: String
    public let temporaryPath: String
    private var fd: Int32
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private(set) public var position: UInt64 = 0
    private var done = false
    private let cleanupSlot: Int32
    public let sync: Bool
    /// Bytes handed to the kernel (written or copied), and where writeback was last started.
    private var flushedPosition: UInt64 = 0
    private var writebackStarted: UInt64 = 0

    static let bufferSize = 1 << 20
    /// Writeback is started for every this many bytes handed to the kernel (when syncing).
    static let writebackStep: UInt64 = 32 << 20

    /// Called with the temporary file's path right after it is created. A hook for tests that
    /// interrupt a write (the command line sets it only when `LIDB_TEST_PAUSE_AFTER_TEMP` is set).
    nonisolated(unsafe) public static var temporaryFileCreated: ((String) -> Void)? = nil

    public init(path: String, sync: Bool = true) throws(TensorFileError) {
        self.path = path
        self.sync = sync
        let (dir, base) = splitOutputPath(path)
        guard !base.isEmpty else { throw TensorFileError(file: path, .outputIsFolder) }
        let keptMode = try checkOutputTarget(path)
        var fd: Int32 = -1
        var temporary = ""
        for _ in 0..<64 {
            temporary = (dir == "/" ? "/" : dir + "/") + "." + base + ".tmp-" + randomSuffix()
            // 0666: the kernel takes the umask off, as for any new file.
            fd = open(temporary, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else { throw TensorFileError(file: path, .io(operation: "create a temporary file", message: errnoMessage())) }
        if let keptMode { _ = fchmod(fd, keptMode) }
        self.fd = fd
        self.temporaryPath = temporary
        cleanupSlot = lidb_cleanup_remember_file(temporary)
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 64)
        Self.temporaryFileCreated?(temporary)
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
        flushedPosition += UInt64(bytes.count)
        startWriteback()
    }

    /// Starts writeback of what was handed to the kernel since the last start, in steps of
    /// `writebackStep`, so disk writes overlap the rest of the work instead of all waiting for
    /// the fsync in `commit()`.
    private func startWriteback() {
        guard sync, flushedPosition - writebackStarted >= Self.writebackStep else { return }
        _ = lidb_start_writeback(fd, Int64(writebackStarted), Int64(flushedPosition - writebackStarted))
        writebackStarted = flushedPosition
    }

    /// Appends bytes `range` of `file`, copied by the kernel (`copy_file_range`: no pass through
    /// this process, and shared extents on filesystems that can) where the system allows, through
    /// bounded reads otherwise. A source that shrank meanwhile gives `fileChanged`.
    public func append(from file: MappedFile, range: Range<Int>) throws(TensorFileError) {
        guard !range.isEmpty else { return }
        try flush()
        var offset = Int64(range.lowerBound)
        let end = Int64(range.upperBound)
        while offset < end {
            if !Self.kernelCopyUnavailable.load(ordering: .relaxed) && !Self.userSpaceCopyOnly.load(ordering: .relaxed) {
                let want = Int(min(end - offset, Int64(Self.writebackStep)))
                let n = lidb_copy_file_range(file.descriptor, &offset, fd, want)
                if n > 0 {
                    flushedPosition += UInt64(n)
                    position += UInt64(n)
                    startWriteback()
                    continue
                }
                if n == 0 { throw file.changedError(at: Int(offset)) }
                let e = errno
                if e == EINTR { continue }
                // Not available for these files or on this system: copy through user space.
                guard e == ENOSYS || e == EXDEV || e == EINVAL || e == EOPNOTSUPP || e == EBADF || e == EPERM else {
                    throw fail("copy")
                }
                if e == ENOSYS { Self.kernelCopyUnavailable.store(true, ordering: .relaxed) }
            }
            try file.readChunks(Int(offset)..<Int(end)) { (chunk) throws(TensorFileError) in
                try writeAll(chunk)
                position += UInt64(chunk.count)
            }
            offset = end
        }
    }

    /// Set once the system lacks `copy_file_range`.
    static let kernelCopyUnavailable = Atomic<Bool>(false)
    /// Forces the user-space copy (for tests of that path).
    public static let userSpaceCopyOnly = Atomic<Bool>(false)

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
    /// The target is checked again just before the rename: if something other than a regular file
    /// appeared there meanwhile, nothing is replaced.
    public func commit() throws(TensorFileError) {
        do throws(TensorFileError) {
            try flush()
            if sync { guard fsync(fd) == 0 else { throw fail("sync") } }
            let closed = close(fd)
            fd = -1
            guard closed == 0 else { throw fail("close") }
            _ = try checkOutputTarget(path)
            guard rename(temporaryPath, path) == 0 else { throw fail("rename the temporary file") }
        } catch {
            abort()
            throw error
        }
        done = true
        lidb_cleanup_forget_file(cleanupSlot)
        guard sync else { return }
        let (dir, _) = splitOutputPath(path)
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }

    /// Removes the temporary file; the target is left as it was.
    public func abort() {
        if fd >= 0 { close(fd); fd = -1 }
        if !done { unlink(temporaryPath) }
        if !done { lidb_cleanup_forget_file(cleanupSlot) }
        done = true
    }
}

extension AtomicFileWriter {
    /// Checks that `path` can be written as an output file, before a command does any work:
    /// it is not empty and does not end in `/`; if it exists it is a regular file (not a folder, a
    /// device, a FIFO or a socket); its folder exists and is writable; and it is none of `inputs`
    /// (the same file by device and inode when both exist, or the same resolved path).
    public static func preflight(output path: String, inputs: [String] = []) throws(TensorFileError) {
        guard !path.isEmpty else { throw TensorFileError(file: path, .invalidArgument("the output path is empty")) }
        guard !path.hasSuffix("/") else { throw TensorFileError(file: path, .outputIsFolder) }
        _ = try checkOutputTarget(path)
        try checkOutputFolder(path)
        try checkNotAnInput(path, inputs)
    }

    /// `preflight` for an output that is a folder to be created (e.g. a diffusers export): if it
    /// exists it must be an empty folder.
    public static func preflight(outputFolder path: String, inputs: [String] = []) throws(TensorFileError) {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        guard !p.isEmpty else { throw TensorFileError(file: path, .invalidArgument("the output path is empty")) }
        var st = stat()
        if stat(p, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                throw TensorFileError(file: p, .invalidArgument("the output exists and is a \(fileTypeName(st.st_mode)), not a folder"))
            }
            if let d = opendir(p) {
                defer { closedir(d) }
                while let e = readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                    if name != "." && name != ".." {
                        throw TensorFileError(file: p, .invalidArgument("the output folder exists and is not empty"))
                    }
                }
            }
        }
        try checkOutputFolder(p)
        try checkNotAnInput(p, inputs)
    }
}

/// The folder and the file name of an output path ("." for a bare name, "/" at the root).
func splitOutputPath(_ path: String) -> (folder: String, name: String) {
    guard let slash = path.lastIndex(of: "/") else { return (".", path) }
    let dir = String(path[..<slash])
    return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
}

/// Refuses an existing output that is a folder or not a regular file; returns the permission bits
/// of an existing regular file (to keep them), nil when there is none.
func checkOutputTarget(_ path: String) throws(TensorFileError) -> mode_t? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    switch st.st_mode & S_IFMT {
    case S_IFREG: return st.st_mode & 0o777
    case S_IFDIR: throw TensorFileError(file: path, .outputIsFolder)
    default: throw TensorFileError(file: path, .outputNotRegularFile(kind: fileTypeName(st.st_mode)))
    }
}

private func checkOutputFolder(_ path: String) throws(TensorFileError) {
    let (dir, _) = splitOutputPath(path)
    var st = stat()
    guard stat(dir, &st) == 0 else { throw TensorFileError(file: path, .outputFolderUnusable(folder: dir, reason: errnoMessage())) }
    guard (st.st_mode & S_IFMT) == S_IFDIR else {
        throw TensorFileError(file: path, .outputFolderUnusable(folder: dir, reason: "it is a \(fileTypeName(st.st_mode)), not a folder"))
    }
    guard access(dir, W_OK | X_OK) == 0 else { throw TensorFileError(file: path, .outputFolderUnusable(folder: dir, reason: errnoMessage())) }
}

private func checkNotAnInput(_ path: String, _ inputs: [String]) throws(TensorFileError) {
    var out = stat()
    let outputExists = stat(path, &out) == 0
    let resolvedOutput = resolvedPath(path)
    for input in inputs where !input.isEmpty {
        var st = stat()
        if outputExists, stat(input, &st) == 0, st.st_dev == out.st_dev, st.st_ino == out.st_ino {
            throw TensorFileError(file: path, .outputIsInput(input: input))
        }
        if let r = resolvedOutput, r == resolvedPath(input) { throw TensorFileError(file: path, .outputIsInput(input: input)) }
    }
}

/// The absolute path with symbolic links, `.` and `..` resolved; for a path that does not exist
/// (yet), its folder resolved and the name appended. Nil when neither resolves.
func resolvedPath(_ path: String) -> String? {
    if let r = realpath(path, nil) {
        defer { free(r) }
        return String(cString: r)
    }
    let (dir, name) = splitOutputPath(path)
    guard !name.isEmpty, name != ".", name != "..", let r = realpath(dir, nil) else { return nil }
    defer { free(r) }
    let d = String(cString: r)
    return (d == "/" ? "" : d) + "/" + name
}

private func randomSuffix() -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
    var g = SystemRandomNumberGenerator()
    return String(decoding: (0..<6).map { _ in alphabet[Int(g.next() % UInt64(alphabet.count))] }, as: UTF8.self)
}

/// Removing unfinished outputs when the process is interrupted, and naming the file when reading a
/// mapped input faults because the file shrank.
public enum InterruptCleanup {
    /// Installs handlers for SIGINT, SIGTERM and SIGHUP (unless ignored) that remove the temporary
    /// files of unfinished writes and then end the process by the same signal, and for SIGBUS that,
    /// when the fault lies in a mapped input file, prints `<prefix><file>: <message>` on stderr,
    /// removes the temporary files and exits with `exitCode`. Idempotent. Meant for programs (the
    /// command line calls it at start); a library does not take signals over on its own.
    public static func install(messagePrefix: String, busErrorMessage: String, exitCode: Int32) {
        lidb_cleanup_install_handlers(messagePrefix, busErrorMessage, exitCode)
    }

    /// Remembers a temporary folder (an output assembled before it is renamed into place) for the
    /// handlers to remove, with everything in it, when a signal ends the process. Call it before
    /// creating the folder, and `forget(folder:)` once it is renamed or removed. Returns a slot
    /// (−1 when the table of 16 folders is full: the folder is then only removed by its owner).
    public static func removeOnInterrupt(folder path: String) -> Int32 {
        lidb_cleanup_remember_folder(path)
    }

    /// Forgets a folder remembered by `removeOnInterrupt(folder:)`.
    public static func forget(folder slot: Int32) {
        lidb_cleanup_forget_folder(slot)
    }
}
