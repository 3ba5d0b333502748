#if canImport(Glibc)
import Glibc
#endif
import TensorFile

/// Bounds on what a subject may describe (spec/subject.md §4, "Limits"). They are far above any
/// real Stable Diffusion layer (the largest 2-D weight dimension of SD 1.x/2.x and SDXL is 10,240,
/// the text encoders' vocabulary 49,408) and keep every size derived from a subject's metadata —
/// bases, low-rank factors, ΔW — well inside 64-bit arithmetic and a machine's memory.
public enum SubjectLimits {
    /// Largest `out` or `in` of a layer.
    public static let maxDimension = 65_536
    /// Largest `out · in` of a layer (2^28 elements, 1 GiB as f32).
    public static let maxLayerElements = 1 << 28
    /// Largest rank of a LiDB or LoRA term.
    public static let maxRank = 1024
    /// Largest basis dimension `a` or `b` of a LiDB term.
    public static let maxBasisDimension = 1024
    /// Largest |w| of a subject's weight when applying it (`S.lidb:W`).
    public static let maxWeight: Double = 100
}

/// A subject's weight (`S.lidb:W`): finite and within ±`SubjectLimits.maxWeight`.
public enum SubjectWeight {
    /// Splits `PATH[:WEIGHT]`. A suffix after the last colon that is not a number is part of the
    /// path; a suffix that is a number but not a usable weight (`nan`, `inf`, `1e30`) is an error
    /// naming the path.
    public static func parse(_ argument: String) throws(TensorFileError) -> (path: String, weight: Float, explicit: Bool) {
        guard let colon = argument.lastIndex(of: ":") else { return (argument, 1, false) }
        let text = String(argument[argument.index(after: colon)...])
        let path = String(argument[..<colon])
        guard let w = Double(text) else {
            // Not a number (Double also accepts "nan"/"inf" spellings, refused below).
            return (argument, 1, false)
        }
        return (path, try validated(w, file: path, text: text), true)
    }

    /// `w` as a Float after checking it is finite and within the limit.
    public static func validated(_ w: Double, file: String, text: String? = nil) throws(TensorFileError) -> Float {
        let shown = text ?? "\(w)"
        guard w.isFinite else {
            throw TensorFileError(file: file, .invalidArgument("weight \(shown) is not a finite number"))
        }
        guard abs(w) <= SubjectLimits.maxWeight else {
            throw TensorFileError(file: file, .invalidArgument("weight \(shown) is outside ±\(Int(SubjectLimits.maxWeight))"))
        }
        return Float(w)
    }
}

/// Memory estimates for operations whose size follows from a file rather than from data present in
/// it, checked before anything is allocated.
public enum MemoryBudget {
    /// Physical memory of this machine in bytes (0 when unknown).
    public static var physicalBytes: UInt64 {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, size > 0 else { return 0 }
        let (p, o) = UInt64(pages).multipliedReportingOverflow(by: UInt64(size))
        return o ? UInt64.max : p
    }

    /// Refuses when `bytes` (nil: more than 2^64) exceeds the physical memory.
    public static func check(_ bytes: UInt64?, for what: String, file: String) throws(TensorFileError) {
        let limit = physicalBytes
        guard let bytes else {
            throw TensorFileError(file: file, .invalidArgument("\(what) would need more than 2^64 bytes of memory"))
        }
        if limit > 0 && bytes > limit {
            throw TensorFileError(file: file, .invalidArgument("\(what) would need about \(formatBytes(bytes)) of memory; this machine has \(formatBytes(limit))"))
        }
    }

    public static func formatBytes(_ n: UInt64) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        if u == 0 { return "\(n) bytes" }
        let r = (v * 10).rounded() / 10
        return "\(r) \(units[u])"
    }
}

/// Checked arithmetic on sizes: nil once anything overflowed 64 bits.
struct CheckedSize {
    var value: UInt64? = 0
    static func product(_ xs: Int...) -> UInt64? {
        var p: UInt64 = 1
        for x in xs {
            guard x >= 0 else { return nil }
            let (r, o) = p.multipliedReportingOverflow(by: UInt64(x))
            if o { return nil }
            p = r
        }
        return p
    }
    mutating func add(_ x: UInt64?) {
        guard let v = value, let x else { value = nil; return }
        let (r, o) = v.addingReportingOverflow(x)
        value = o ? nil : r
    }
}
