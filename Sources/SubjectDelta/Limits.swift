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
/// it, checked before anything is allocated, against the same limit as generation
/// (`MemoryLimit.resolve()`: `LIDB_MEMORY_LIMIT`, else the machine's or the cgroup's memory).
public enum MemoryBudget {
    /// Refuses when `bytes` (nil: more than 2^64) exceeds the memory limit.
    public static func check(_ bytes: UInt64?, for what: String, file: String) throws(TensorFileError) {
        guard let bytes else {
            throw TensorFileError(file: file, .invalidArgument("\(what) would need more than 2^64 bytes of memory"))
        }
        let limit = try MemoryLimit.resolve()
        if limit > .zero && ByteCount(bytes) > limit {
            throw TensorFileError(file: file, .invalidArgument("\(what) would need about \(ByteCount(bytes)) of memory; the limit is \(limit) (LIDB_MEMORY_LIMIT)"))
        }
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
