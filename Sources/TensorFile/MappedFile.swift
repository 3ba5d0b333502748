import CLidbSupport
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Memory that tensor views point into. Views keep their owner alive, so a view never dangles.
public protocol ByteOwner: AnyObject, Sendable {}

/// A read-only memory map of a whole file. The descriptor stays open so parts of the file can
/// also be read with bounded I/O (`read(into:at:)`), which reports a file that shrank after it was
/// opened as an error, where touching the vanished part of the map would raise SIGBUS.
public final class MappedFile: ByteOwner, @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?
    private let length: Int
    private let fd: Int32
    private let mappingSlot: Int32

    /// Maps `path` read-only. An empty file maps to an empty buffer. Anything but a regular file
    /// (a FIFO, a device, a socket, a folder) is refused before it is read, so it cannot block.
    public init(path: String) throws(TensorFileError) {
        self.path = path
        let (fd, st) = try openRegularFile(path)
        let size = Int(st.st_size)
        length = size
        if size == 0 {
            base = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            self.fd = fd
            mappingSlot = -1
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            let e = TensorFileError(file: path, .io(operation: "map", message: errnoMessage()))
            close(fd)
            throw e
        }
        base = p
        bytes = UnsafeRawBufferPointer(start: p, count: size)
        self.fd = fd
        mappingSlot = lidb_cleanup_remember_mapping(p, size, path)
    }

    /// Reads `buffer.count` bytes at `offset` with `pread` (not through the map). A file that is now
    /// shorter than when it was mapped gives `fileChanged` instead of a bus error.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(TensorFileError) {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw TensorFileError(file: path, .io(operation: "read", message: errnoMessage()))
            }
            if n == 0 { throw changedError(at: offset + done) }
            done += n
        }
    }

    /// The open descriptor (for kernel copies); valid while this object lives.
    public var descriptor: Int32 { fd }

    /// `fileChanged` with the file's current size, for a read that ended early at `offset`.
    func changedError(at offset: Int) -> TensorFileError {
        var st = stat()
        let now = fstat(fd, &st) == 0 ? UInt64(max(st.st_size, 0)) : UInt64(offset)
        return TensorFileError(file: path, .fileChanged(openedSize: UInt64(length), currentSize: now))
    }

    /// Calls `body` with consecutive chunks of bytes `range` read with `read(into:at:)` into one
    /// reused buffer of at most `chunkBytes`.
    public func readChunks(_ range: Range<Int>, chunkBytes: Int = MappedFile.chunkBytes,
                           _ body: (UnsafeRawBufferPointer) throws(TensorFileError) -> Void) throws(TensorFileError) {
        guard !range.isEmpty else { return }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: min(range.count, max(chunkBytes, 1)), alignment: 64)
        defer { scratch.deallocate() }
        var at = range.lowerBound
        while at < range.upperBound {
            let m = min(scratch.count, range.upperBound - at)
            let chunk = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<m])
            try read(into: chunk, at: at)
            try body(UnsafeRawBufferPointer(chunk))
            at += m
        }
    }

    /// Chunk size of bounded reads: a multiple of every element size, small enough to stay in cache.
    public static let chunkBytes = 4 << 20

    /// Hints the kernel that the range will be read sequentially soon.
    public func adviseSequential(_ range: Range<Int>) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = range.lowerBound / page * page
        _ = madvise(base + start, range.upperBound - start, MADV_SEQUENTIAL)
        _ = madvise(base + start, range.upperBound - start, MADV_WILLNEED)
    }

    /// Drops the pages of `range` from this process's memory (they stay in the page cache and are
    /// mapped in again if touched), so streaming over a big file keeps the resident size small.
    public func release(_ range: Range<Int>) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound + page - 1) / page * page  // whole pages inside the range only
        let end = range.upperBound / page * page
        if end > start { _ = madvise(base + start, end - start, MADV_DONTNEED) }
    }

    /// `release` for a sub-buffer of `bytes`.
    public func release(_ sub: UnsafeRawBufferPointer) {
        guard let b = bytes.baseAddress, let s = sub.baseAddress, sub.count > 0 else { return }
        let lo = s - b
        guard lo >= 0, lo + sub.count <= bytes.count else { return }
        release(lo..<(lo + sub.count))
    }

    deinit {
        lidb_cleanup_forget_mapping(mappingSlot)
        if let base { munmap(base, length) }
        close(fd)
    }
}

/// Opens `path` for reading after checking that it is a regular file. The type is checked before
/// opening (a FIFO would block `open` until a writer appears) and again on the descriptor, which is
/// opened non-blocking and without becoming a controlling terminal, in case the path changed.
func openRegularFile(_ path: String) throws(TensorFileError) -> (Int32, stat) {
    var st = stat()
    if stat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
        throw TensorFileError(file: path, .notARegularFile(kind: fileTypeName(st.st_mode)))
    }
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    guard fd >= 0 else { throw TensorFileError(file: path, .io(operation: "open", message: errnoMessage())) }
    guard fstat(fd, &st) == 0 else {
        let e = TensorFileError(file: path, .io(operation: "stat", message: errnoMessage()))
        close(fd)
        throw e
    }
    guard (st.st_mode & S_IFMT) == S_IFREG else {
        close(fd)
        throw TensorFileError(file: path, .notARegularFile(kind: fileTypeName(st.st_mode)))
    }
    // Regular files ignore O_NONBLOCK; clear it anyway so the descriptor behaves as usual.
    let flags = fcntl(fd, F_GETFL)
    if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
    return (fd, st)
}

/// "FIFO", "character device", … for messages.
func fileTypeName(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFREG: return "regular file"
    case S_IFDIR: return "folder"
    case S_IFIFO: return "FIFO (named pipe)"
    case S_IFCHR: return "character device"
    case S_IFBLK: return "block device"
    case S_IFSOCK: return "socket"
    case S_IFLNK: return "symbolic link"
    default: return "special file"
    }
}

/// Heap memory owned by a view (decoded or converted tensors), 64-byte aligned.
public final class OwnedBytes: ByteOwner, @unchecked Sendable {
    public let buffer: UnsafeMutableRawBufferPointer

    public init(count: Int) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        count_ = count
    }
    private let count_: Int
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<count_]) }

    public convenience init(copying source: UnsafeRawBufferPointer) {
        self.init(count: source.count)
        if source.count > 0 { buffer.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: source.count) }
    }

    deinit { buffer.deallocate() }
}

/// The bytes of one tensor: a view into a mapped file or into owned memory.
public struct TensorBytes: @unchecked Sendable {
    public let owner: ByteOwner
    public let bytes: UnsafeRawBufferPointer

    public init(owner: ByteOwner, bytes: UnsafeRawBufferPointer) {
        self.owner = owner
        self.bytes = bytes
    }

    public init(owned: OwnedBytes) {
        self.owner = owned
        self.bytes = owned.bytes
    }

    public var count: Int { bytes.count }

    /// Runs `body` with the bytes while keeping the owner alive.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(owner) { try body(bytes) }
    }

    public var array: [UInt8] { withUnsafeBytes { Array($0) } }
}

func errnoMessage() -> String {
    String(cString: strerror(errno))
}

extension Array where Element == UInt8 {
    /// `withUnsafeBytes` that keeps a typed error (the standard one erases it to `any Error`).
    @inline(__always)
    func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let result: Result<R, E> = withUnsafeBytes { b in
            do throws(E) { return .success(try body(b)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
