import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Byte counts that saturate at `UInt64.max` instead of overflowing: an estimate computed from a
/// hostile request stays an (enormous) number and is refused like any other.
public struct ByteCount: Comparable, Sendable, CustomStringConvertible {
    public var value: UInt64
    public init(_ value: UInt64) { self.value = value }
    public static let zero = ByteCount(0)
    public static var saturated: ByteCount { ByteCount(UInt64.max) }

    /// `n` f32 values.
    public static func floats(_ n: ByteCount) -> ByteCount { n * 4 }
    public init(_ n: Int) { value = n < 0 ? 0 : UInt64(n) }

    public static func + (a: ByteCount, b: ByteCount) -> ByteCount {
        let (r, o) = a.value.addingReportingOverflow(b.value)
        return ByteCount(o ? .max : r)
    }
    public static func * (a: ByteCount, b: ByteCount) -> ByteCount {
        let (r, o) = a.value.multipliedReportingOverflow(by: b.value)
        return ByteCount(o ? .max : r)
    }
    public static func * (a: ByteCount, b: Int) -> ByteCount { a * ByteCount(b) }
    public static func * (a: Int, b: ByteCount) -> ByteCount { ByteCount(a) * b }
    public static func < (a: ByteCount, b: ByteCount) -> Bool { a.value < b.value }

    /// `2.1 GiB`, `512 MiB`; saturated counts read "more than 16 EiB".
    public var description: String {
        if value == .max { return "more than 16 EiB" }
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = Double(value), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        if u == 0 { return "\(value) bytes" }
        return String(format: v < 10 ? "%.1f %@" : "%.0f %@", v, units[u])
    }

    /// Parses `8G`, `512M`, `1.5GiB`, `2000000000` (binary units: K = 1024).
    public init?(parsing text: String) {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        for suffix in ["IB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count { s.removeLast(suffix.count); break }
        var scale: Double = 1
        if let last = s.last, let i = "KMGTP".firstIndex(of: last) {
            scale = pow(1024, Double("KMGTP".distance(from: "KMGTP".startIndex, to: i) + 1))
            s.removeLast()
        }
        guard let x = Double(s), x.isFinite, x > 0 else { return nil }
        let bytes = x * scale
        guard bytes < 1.8e19 else { return nil }
        value = UInt64(bytes)
    }
}

/// How much memory a request may use (spec/runtime.md "Memory limits").
public enum MemoryLimit {
    /// The environment variable that sets the limit (`LIDB_MEMORY_LIMIT=48G`).
    public static let environmentVariable = "LIDB_MEMORY_LIMIT"

    /// Physical memory, or the cgroup's `memory.max` when that is lower (0 when unknown).
    public static var available: ByteCount {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        var limit = pages > 0 && size > 0 ? ByteCount(pages) * ByteCount(size) : .zero
        if let text = try? String(contentsOfFile: "/sys/fs/cgroup/memory.max", encoding: .utf8),
           let v = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)), v > 0, limit == .zero || v < limit.value {
            limit = ByteCount(v)
        }
        return limit
    }

    /// `explicit` (a command-line value) if given, else `LIDB_MEMORY_LIMIT`, else `available`.
    /// An unreadable value is an error naming where it came from.
    public static func resolve(_ explicit: String? = nil, option: String = "--memory-limit") throws(TensorFileError) -> ByteCount {
        if let explicit {
            guard let b = ByteCount(parsing: explicit) else {
                throw TensorFileError(file: option, .invalidArgument("'\(explicit)' is not a size (e.g. 16G, 512M, or bytes)"))
            }
            return b
        }
        if let env = ProcessInfo.processInfo.environment[environmentVariable] {
            guard let b = ByteCount(parsing: env) else {
                throw TensorFileError(file: environmentVariable, .invalidArgument("'\(env)' is not a size (e.g. 16G, 512M, or bytes)"))
            }
            return b
        }
        return available
    }
}

