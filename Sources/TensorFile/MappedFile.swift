#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Memory that tensor views point into. Views keep their owner alive, so a view never dangles.
public protocol ByteOwner: AnyObject, Sendable {}

/// A read-only memory map of a whole file.
public final class MappedFile: ByteOwner, @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?
    private let length: Int

    /// Maps `path` read-only. An empty file maps to an empty buffer.
    public init(path: String) throws(TensorFileError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw TensorFileError(file: path, .io(operation: "open", message: errnoMessage())) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw TensorFileError(file: path, .io(operation: "stat", message: errnoMessage())) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw TensorFileError(file: path, .notARegularFile) }
        let size = Int(st.st_size)
        length = size
        if size == 0 {
            base = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw TensorFileError(file: path, .io(operation: "map", message: errnoMessage()))
        }
        base = p
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

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
        if let base { munmap(base, length) }
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
