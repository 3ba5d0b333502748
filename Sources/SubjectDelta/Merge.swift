import CBLAS
import Checkpoint
import Dispatch
import TensorFile

/// Bases generated from seeds, kept for reuse (generation costs far more than applying them).
public final class BasisCache: @unchecked Sendable {
    private var store: [String: (down: [Float], up: [Float])] = [:]
    private let lock = DispatchSemaphore(value: 1)
    public init() {}

    public func bases(seed: UInt64, layer: TargetLayer, a: Int, b: Int) throws(TensorFileError) -> (down: [Float], up: [Float]) {
        let key = "\(seed)|\(layer.name)|\(layer.out)|\(layer.inDim)|\(a)|\(b)"
        lock.wait()
        if let hit = store[key] { lock.signal(); return hit }
        lock.signal()
        let g: (down: [Float], up: [Float], a: Int, b: Int)
        do { g = try Basis.layer(seed: seed, name: layer.name, out: layer.out, in: layer.inDim, a: a, b: b) } catch {
            throw TensorFileError(file: layer.name, .invalidArgument("\(error)"))
        }
        lock.wait()
        store[key] = (g.down, g.up)
        lock.signal()
        return (g.down, g.up)
    }
}

/// `C[m×n] (+)= A[m×k] · B[k×n]`, row-major, f32.
func gemm(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int, into c: UnsafeMutablePointer<Float>, accumulate: Bool, alpha: Float = 1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha, a, Int32(k), b, Int32(n), accumulate ? 1 : 0, c, Int32(n))
}

/// `W[out×in] += sign · U[out×R] · D[R×in]`. Low ranks (the LiDB case) stream through W once per
/// rank with saxpy, which is memory-bound and faster than a general GEMM for k ≤ 4.
public func addLowRankUpdate(_ up: [Float], _ down: [Float], out: Int, in inDim: Int, rank: Int, into w: UnsafeMutablePointer<Float>, sign: Float) {
    if rank > 4 {
        gemm(up, down, m: out, n: inDim, k: rank, into: w, accumulate: true, alpha: sign)
        return
    }
    up.withUnsafeBufferPointer { u in
        down.withUnsafeBufferPointer { d in
            for o in 0..<out {
                let row = w + o * inDim
                for r in 0..<rank {
                    let c = sign * u[o * rank + r]
                    if c != 0 { cblas_saxpy(Int32(inDim), c, d.baseAddress! + r * inDim, 1, row, 1) }
                }
            }
        }
    }
}

extension Subject {
    /// A layer's delta as `U · D` (`U`: `[out, R]`, `D`: `[R, in]`, R = sum of the terms' ranks),
    /// with each term's `alpha/rank` (times `weight`) folded into `U`.
    public func lowRankFactors(_ layer: SubjectLayer, weight: Float = 1, cache: BasisCache) throws(TensorFileError) -> (up: [Float], down: [Float], rank: Int) {
        let out = layer.target.out, inDim = layer.target.inDim
        var ups: [[Float]] = [], downs: [[Float]] = [], ranks: [Int] = []
        if let t = layer.lidb {
            let (downAux, upAux): ([Float], [Float])
            switch basis {
            case let .seed(s): (downAux, upAux) = try cache.bases(seed: s, layer: layer.target, a: t.a, b: t.b)
            case let .stored(m):
                guard let sb = m[layer.target.name] else { throw TensorFileError(file: layer.target.name, .invalidArgument("no stored basis for this layer")) }
                (downAux, upAux) = (sb.down, sb.up)
            }
            var d = [Float](repeating: 0, count: t.rank * inDim)
            d.withUnsafeMutableBufferPointer { gemm(t.downTrain, downAux, m: t.rank, n: inDim, k: t.a, into: $0.baseAddress!, accumulate: false) }
            var u = [Float](repeating: 0, count: out * t.rank)
            u.withUnsafeMutableBufferPointer { gemm(upAux, t.upTrain, m: out, n: t.rank, k: t.b, into: $0.baseAddress!, accumulate: false, alpha: t.scale * weight) }
            ups.append(u); downs.append(d); ranks.append(t.rank)
        }
        if let t = layer.lora {
            ups.append(t.up.map { $0 * t.scale * weight }); downs.append(t.down); ranks.append(t.rank)
        }
        let R = ranks.reduce(0, +)
        if ranks.count == 1 { return (ups[0], downs[0], R) }
        var U = [Float](repeating: 0, count: out * R)
        var col = 0
        for (k, u) in ups.enumerated() {
            for o in 0..<out { for r in 0..<ranks[k] { U[o * R + col + r] = u[o * ranks[k] + r] } }
            col += ranks[k]
        }
        return (U, downs.flatMap { $0 }, R)
    }

    /// Checks that the subject fits `base`: same architecture, every target layer present with the
    /// same shape, and the content fingerprint when the subject records one.
    public func check(against base: BaseModel, subjectPath: String) throws(TensorFileError) {
        func fail(_ m: String) -> TensorFileError { TensorFileError(file: subjectPath, .invalidArgument(m)) }
        if architecture != base.architecture.family.rawValue {
            throw fail("made for \(architecture), but \(base.file.path) is \(base.architecture.family.rawValue)")
        }
        var problems: [String] = []
        for l in layers {
            guard let e = base.file.entry(l.target.weightName) else { problems.append("\(l.target.name): not in the base"); continue }
            if e.info.shape != [l.target.out, l.target.inDim] {
                problems.append("\(l.target.name): subject [\(l.target.out), \(l.target.inDim)], base \(e.info.shape)")
            }
        }
        if !problems.isEmpty {
            throw fail("the base's layer table differs in \(problems.count) layer(s): " + problems.prefix(5).joined(separator: "; ") + (problems.count > 5 ? "; …" : ""))
        }
        if let c = baseContent, let bc = base.contentFingerprint, c != bc {
            throw fail("bound to base content \(c.prefix(16))…, but \(base.file.path) has \(bc.prefix(16))…")
        }
    }
}

/// A subject to apply, with its weight and where it came from.
public struct AppliedSubject {
    public var subject: Subject
    public var weight: Float
    public var path: String
    public init(subject: Subject, weight: Float, path: String) {
        self.subject = subject
        self.weight = weight
        self.path = path
    }
}

public struct MergeSummary: Sendable {
    public var touchedLayers = 0
    /// For subtract-unmerge: a bound on |result − original| over all touched weights.
    public var deviationBound: Double?
    public var restored = false
}

/// Merge and unmerge of subjects into base files (spec/subject.md §5).
public enum Merger {
    /// Writes `base` with every subject's ΔW added: computed and added in f32, stored in the base's dtype.
    public static func merge(base: BaseModel, subjects: [AppliedSubject], to path: String, cache: BasisCache = BasisCache()) throws(TensorFileError) -> MergeSummary {
        for s in subjects { try s.subject.check(against: base, subjectPath: s.path) }
        let deltas = try collect(subjects)
        var summary = MergeSummary()
        summary.touchedLayers = deltas.count
        var md = base.metadata
        var merged = md["merged"]?.arrayValue ?? []
        for s in subjects {
            merged.append(.object([("subject", .string(basenameOf(s.path))), ("name", s.subject.info["name"] ?? .null),
                                   ("weight", .double(Double(s.weight))), ("targets_fingerprint", .string(s.subject.targetLayers.tableFingerprint)),
                                   ("layers", .int(s.subject.layers.count))]))
        }
        md = md.setting("merged", .array(merged))
        if md["merged_from"] == nil, let fp = base.metadata["fingerprints"] { md = md.setting("merged_from", fp) }
        md = md.removing("fingerprints")
        try rewrite(base, metadata: md, to: path) { (name, info, bytes) throws(TensorFileError) -> OwnedBytes? in
            guard let terms = deltas[name] else { return nil }
            return try apply(terms, to: bytes, info: info, sign: 1, bound: nil)
        }
        return summary
    }

    /// Takes subjects back out of a merged base. With `original`, the touched tensors are copied
    /// back from it (bit-exact); without, ΔW is subtracted and a bound on the error is reported.
    public static func unmerge(merged: BaseModel, subjects: [AppliedSubject], original: BaseModel?, to path: String,
                               cache: BasisCache = BasisCache()) throws(TensorFileError) -> MergeSummary {
        for s in subjects { try s.subject.check(against: merged, subjectPath: s.path) }
        let deltas = try collect(subjects)
        var summary = MergeSummary()
        summary.touchedLayers = deltas.count
        var md = merged.metadata
        var list = md["merged"]?.arrayValue ?? []
        for s in subjects {
            let fp = s.subject.targetLayers.tableFingerprint
            guard let i = list.firstIndex(where: { $0["targets_fingerprint"]?.stringValue == fp && $0["weight"]?.doubleValue == Double(s.weight) }) else {
                throw TensorFileError(file: s.path, .invalidArgument("this subject (with weight \(s.weight)) is not recorded as merged into \(merged.file.path)"))
            }
            list.remove(at: i)
        }
        md = list.isEmpty ? md.removing("merged") : md.setting("merged", .array(list))
        if let original {
            if let from = merged.metadata["merged_from"]?["content"]?.stringValue, let oc = original.contentFingerprint, from != oc {
                throw TensorFileError(file: original.file.path, .invalidArgument("not the original of \(merged.file.path): content \(oc.prefix(16))…, expected \(from.prefix(16))…"))
            }
            guard original.file.tensors == merged.file.tensors else {
                throw TensorFileError(file: original.file.path, .invalidArgument("the tensor table differs from \(merged.file.path)"))
            }
            summary.restored = true
        }
        if list.isEmpty { md = md.removing("merged_from") }
        md = md.removing("fingerprints")
        let boundBox = BoundBox()
        try rewrite(merged, metadata: md, to: path) { (name, info, bytes) throws(TensorFileError) -> OwnedBytes? in
            guard let terms = deltas[name] else { return nil }
            if let original { return OwnedBytes(copying: try original.file.tensorBytes(name).bytes) }
            return try apply(terms, to: bytes, info: info, sign: -1, bound: boundBox)
        }
        if original == nil { summary.deviationBound = boundBox.value }
        return summary
    }

    final class BoundBox: @unchecked Sendable { var value: Double = 0 }

    /// Low-rank factors per base weight name, all subjects together.
    static func collect(_ subjects: [AppliedSubject]) throws(TensorFileError) -> [String: [(up: [Float], down: [Float], rank: Int)]] {
        var out: [String: [(up: [Float], down: [Float], rank: Int)]] = [:]
        for s in subjects {
            let cache = BasisCache()
            for l in s.subject.layers {
                out[l.target.weightName, default: []].append(try s.subject.lowRankFactors(l, weight: s.weight, cache: cache))
            }
        }
        return out
    }

    /// `W ± Σ U·D` in f32, rounded back to W's dtype. With `bound`, accumulates the largest
    /// possible deviation from the true value caused by the two roundings of merge and unmerge.
    static func apply(_ terms: [(up: [Float], down: [Float], rank: Int)], to bytes: TensorBytes, info: TensorInfo, sign: Float,
                      bound: BoundBox?) throws(TensorFileError) -> OwnedBytes {
        guard info.shape.count == 2, DTypeConversion.canConvert(from: info.dtype, to: .F32), DTypeConversion.canConvert(from: .F32, to: info.dtype) else {
            throw TensorFileError(file: "merge", tensor: info.name, .unsupportedConversion(from: info.dtype.name, to: "F32 arithmetic"))
        }
        let out = info.shape[0], inDim = info.shape[1], n = out * inDim
        var w = [Float](repeating: 0, count: n)
        w.withUnsafeMutableBytes { _ = DTypeConversion.convert(bytes.bytes, from: info.dtype, into: $0, to: .F32, count: n) }
        let before = bound != nil ? w : []
        w.withUnsafeMutableBufferPointer { wp in
            for t in terms { addLowRankUpdate(t.up, t.down, out: out, in: inDim, rank: t.rank, into: wp.baseAddress!, sign: sign) }
        }
        let result = OwnedBytes(count: n * info.dtype.byteSize)
        w.withUnsafeBytes { _ = DTypeConversion.convert($0, from: .F32, into: result.buffer, to: info.dtype, count: n) }
        if let bound {
            // merged = rnd(W + Δ), result = rnd(merged − Δ): |result − W| ≤ u·|merged| + u·|result| (+ f32 terms),
            // u the unit roundoff of the stored type.
            let u: Double = info.dtype == .F16 ? 0x1p-11 : info.dtype == .BF16 ? 0x1p-8 : 0x1p-24
            var back = [Float](repeating: 0, count: n)
            back.withUnsafeMutableBytes { _ = DTypeConversion.convert(result.bytes, from: info.dtype, into: $0, to: .F32, count: n) }
            var m = 0.0
            for i in 0..<n {
                let b = u * (Double(abs(before[i])) + Double(abs(back[i]))) + 0x1p-23 * (Double(abs(before[i])) + Double(abs(w[i])))
                if b > m { m = b }
            }
            if m > bound.value { bound.value = m }
        }
        return result
    }

    /// Writes `base` again with `metadata`, replacing tensors for which `transform` returns bytes.
    static func rewrite(_ base: BaseModel, metadata: JSONValue, to path: String,
                        transform: @escaping (String, TensorInfo, TensorBytes) throws(TensorFileError) -> OwnedBytes?) throws(TensorFileError) {
        let file = base.file
        let tensors = file.tensors.map { t in
            PlannedTensor(info: t, fetch: { () throws(TensorFileError) -> TensorBytes in
                let b = try file.tensorBytes(t.name)
                if let replaced = try transform(t.name, t, b) { return TensorBytes(owned: replaced) }
                return b
            }, isWeight: !t.name.hasPrefix("tokenizer.") && !t.name.hasPrefix("extra."),
               encodingHint: file.entry(t.name)?.encoding == .zstd ? .zstd(level: 19) : nil)
        }
        _ = try BaseConverter.write(BasePlan(architecture: base.architecture, metadata: metadata, tensors: tensors), to: path, dtype: nil)
    }
}

func basenameOf(_ path: String) -> String {
    path.split(separator: "/").last.map(String.init) ?? path
}

