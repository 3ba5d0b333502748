import Checkpoint
import Compute
import Crypto
import Dispatch
import TensorFile

/// Bases generated from seeds, kept for reuse (generation costs far more than applying them),
/// checked once to be finite so the delta terms built on them share them without another scan.
public final class BasisCache: @unchecked Sendable {
    private var store: [String: (down: FiniteFactor, up: FiniteFactor)] = [:]
    private let lock = DispatchSemaphore(value: 1)
    public init() {}

    public func bases(seed: UInt64, layer: TargetLayer, a: Int, b: Int, file: String = "") throws(TensorFileError) -> (down: [Float], up: [Float]) {
        let f = try checkedBases(seed: seed, layer: layer, a: a, b: b, file: file)
        return (f.down.values, f.up.values)
    }

    /// The bases as `FiniteFactor`s (`down_aux` `[a × in]`, `up_aux` `[out × b]`).
    public func checkedBases(seed: UInt64, layer: TargetLayer, a: Int, b: Int, file: String = "") throws(TensorFileError) -> (down: FiniteFactor, up: FiniteFactor) {
        let key = "\(seed)|\(layer.name)|\(layer.out)|\(layer.inDim)|\(a)|\(b)"
        lock.wait()
        if let hit = store[key] { lock.signal(); return hit }
        lock.signal()
        let label = file.isEmpty ? "basis" : file
        let g: (down: [Float], up: [Float], a: Int, b: Int)
        do { g = try Basis.layer(seed: seed, name: layer.name, out: layer.out, in: layer.inDim, a: a, b: b) } catch {
            throw TensorFileError(file: label, tensor: layer.name, .invalidArgument("\(error)"))
        }
        let checked: (down: FiniteFactor, up: FiniteFactor)
        do { checked = (try FiniteFactor(g.down, name: "down_aux"), try FiniteFactor(g.up, name: "up_aux")) } catch {
            throw TensorFileError(file: label, tensor: layer.name, .invalidArgument("generated basis: \(error.message)"))
        }
        lock.wait()
        store[key] = checked
        lock.signal()
        return checked
    }
}

/// One low-rank delta `U · D`: `up` is `[out, rank]`, `down` is `[rank, in]`, scales folded into `up`.
public typealias LowRankDelta = (up: [Float], down: [Float], rank: Int)

extension Subject {
    /// A bound on |w · ΔW| for a layer from the magnitudes of its factors, before any product is
    /// formed: `|scale·w| · r · (b · max|up_aux| · max|up_train|) · (a · max|down_aux| · max|down_train|)`
    /// for a LiDB term (generated bases are orthonormal, so their entries are at most 1), and
    /// `|scale·w| · r · max|up| · max|down|` for a LoRA term.
    public func deltaBound(_ layer: SubjectLayer, weight: Float) -> Double {
        func maxAbs(_ v: [Float]) -> Double { Double(v.reduce(Float(0)) { max($0, abs($1)) }) }
        var total = 0.0
        if let t = layer.lidb {
            var mDownAux = 1.0, mUpAux = 1.0
            if case let .stored(m) = basis, let sb = m[layer.target.name] { mDownAux = maxAbs(sb.down); mUpAux = maxAbs(sb.up) }
            total += abs(Double(t.scale) * Double(weight)) * Double(t.rank) * (Double(t.b) * mUpAux * maxAbs(t.upTrain)) * (Double(t.a) * mDownAux * maxAbs(t.downTrain))
        }
        if let t = layer.lora {
            total += abs(Double(t.scale) * Double(weight)) * Double(t.rank) * maxAbs(t.up) * maxAbs(t.down)
        }
        return total
    }

    /// Checks what applying the subject at `weight` needs: a finite weight within ±100, a valid
    /// structure, and a ΔW that stays finite in binary32 on every layer (by `deltaBound`).
    public func checkApplicable(weight: Float, file: String? = nil) throws(TensorFileError) {
        let file = file ?? label
        _ = try SubjectWeight.validated(Double(weight), file: file)
        try validate(file: file)
        for l in layers {
            let b = deltaBound(l, weight: weight)
            guard b.isFinite, b <= Double(Float.greatestFiniteMagnitude) else {
                throw TensorFileError(file: file, tensor: l.target.name, .invalidArgument(
                    "ΔW at weight \(weight) could reach \(b), beyond the range of 32-bit floats (factors, alpha or q8 scales too large)"))
            }
        }
    }

    /// A layer's delta as `U · D` (`U`: `[out, R]`, `D`: `[R, in]`, R = sum of the terms' ranks),
    /// with each term's `alpha/rank` (times `weight`) folded into `U`: the terms of `layerTerms`
    /// and their `lowRankFactors()`, concatenated (what a LoRA export writes).
    public func lowRankFactors(_ layer: SubjectLayer, weight: Float = 1, cache: BasisCache) throws(TensorFileError) -> LowRankDelta {
        let terms = try layerTerms(layer, weight: weight, cache: cache).terms
        let out = layer.target.out
        var ups: [[Float]] = [], downs: [[Float]] = [], ranks: [Int] = []
        for t in terms {
            guard let f = t.lowRankFactors() else { continue }
            ups.append(f.up); downs.append(f.down); ranks.append(f.rank)
        }
        for v in ups + downs where !v.allSatisfy(\.isFinite) {
            throw TensorFileError(file: label, tensor: layer.target.name, .invalidArgument("ΔW at weight \(weight) is not finite in 32-bit floats"))
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
    /// same shape and in the base's tensor order, and the content fingerprint when the subject
    /// records one.
    public func check(against base: BaseModel, subjectPath: String) throws(TensorFileError) {
        func fail(_ m: String) -> TensorFileError { TensorFileError(file: subjectPath, .invalidArgument(m)) }
        if architecture != base.architecture.family.rawValue {
            throw fail("made for \(architecture), but \(base.file.path) is \(base.architecture.family.rawValue)")
        }
        var order: [String: Int] = [:]
        for (i, t) in base.file.tensors.enumerated() { order[t.name] = i }
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
        var previous = -1
        for l in layers {
            let i = order[l.target.weightName] ?? -1
            guard i > previous else {
                throw TensorFileError(file: subjectPath, tensor: l.target.name, .invalidArgument("layers are not in the base's tensor order (this one comes before the layer listed ahead of it)"))
            }
            previous = i
        }
        if let c = baseContent, let bc = base.contentFingerprint, c != bc {
            throw fail("bound to base content \(c.prefix(16))…, but \(base.file.path) has \(bc.prefix(16))…")
        }
    }

    /// SHA-256 (hex) identifying the delta itself: architecture, basis, layer table, terms and the
    /// trained factors' binary32 values (after dequantisation). Two files with the same value
    /// apply the same ΔW; merged bases record it to recognise the subject when unmerging.
    public var deltaFingerprint: String {
        var h = SHA256()
        func text(_ s: String) { h.update(data: Array(s.utf8) + [0]) }
        func ints(_ xs: Int...) { for x in xs { text(String(x)) } }
        func floats(_ v: [Float]) {
            ints(v.count)
            v.withUnsafeBytes { h.update(bufferPointer: $0) }   // little-endian binary32 on every supported platform
        }
        text("lidb-delta-1")
        text(architecture)
        switch basis {
        case let .seed(s): text("seed"); text(String(s))
        case .stored: text("stored")
        }
        ints(layers.count)
        for l in layers {
            text(l.target.name); ints(l.target.out, l.target.inDim)
            if let t = l.lidb {
                text("lidb"); ints(t.rank, t.a, t.b); floats([t.alpha]); floats(t.downTrain); floats(t.upTrain)
                if case let .stored(m) = basis, let sb = m[l.target.name] { floats(sb.down); floats(sb.up) }
            }
            if let t = l.lora { text("lora"); ints(t.rank); floats([t.alpha]); floats(t.down); floats(t.up) }
        }
        return hexDigest(h.finalize())
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

    /// Refuses a weight that is not finite or beyond ±100, and a subject whose ΔW would not be
    /// finite at that weight (see `Subject.checkApplicable`).
    public func validate() throws(TensorFileError) {
        try subject.checkApplicable(weight: weight, file: path)
    }
}

public struct MergeSummary: Sendable {
    public var touchedLayers = 0
    /// For subtract-unmerge: a bound on |result − original| over all touched weights.
    public var deviationBound: Double?
    public var restored = false
    /// Subjects re-applied after a restore (they stay merged and shared layers with the removed ones).
    public var reapplied = 0
}

/// Merge and unmerge of subjects into base files (spec/subject.md §5).
public enum Merger {
    /// One subject's contribution to one base weight: computed when that weight is written.
    struct Contribution {
        var subject: AppliedSubject
        var layer: SubjectLayer
        var cache: BasisCache
        func terms() throws(TensorFileError) -> [any DeltaTerm] {
            var s = subject.subject
            if s.source.isEmpty { s.source = subject.path }
            return try s.layerTerms(layer, weight: subject.weight, cache: cache).terms
        }
    }

    /// Contributions per base weight name, subjects in order.
    static func contributions(_ subjects: [AppliedSubject]) -> [String: [Contribution]] {
        var out: [String: [Contribution]] = [:]
        for s in subjects {
            let cache = BasisCache()
            for l in s.subject.layers { out[l.target.weightName, default: []].append(Contribution(subject: s, layer: l, cache: cache)) }
        }
        return out
    }

    /// Every contribution's terms, subjects in order.
    static func terms(_ c: [Contribution]) throws(TensorFileError) -> [any DeltaTerm] {
        var out: [any DeltaTerm] = []
        for x in c { out += try x.terms() }
        return out
    }

    static func names(_ c: [Contribution]) -> String { c.map { basenameOf($0.subject.path) }.joined(separator: ", ") }

    /// The record of a merged subject in a base's `merged` list.
    static func record(_ s: AppliedSubject, step: Int) -> JSONValue {
        .object([("subject", .string(basenameOf(s.path))), ("name", s.subject.info["name"] ?? .null),
                 ("weight", .double(Double(s.weight))), ("targets_fingerprint", .string(s.subject.targetLayers.tableFingerprint)),
                 ("layers", .int(s.subject.layers.count)), ("delta_fingerprint", .string(s.subject.deltaFingerprint)), ("step", .int(step))])
    }

    /// Writes `base` with every subject's ΔW added: for each touched weight, all subjects' ΔW are
    /// summed and added to W with a single rounding to the base's element type.
    public static func merge(base: BaseModel, subjects: [AppliedSubject], to path: String, cache: BasisCache = BasisCache()) throws(TensorFileError) -> MergeSummary {
        for s in subjects {
            try s.validate()
            try s.subject.check(against: base, subjectPath: s.path)
        }
        let deltas = contributions(subjects)
        var summary = MergeSummary()
        summary.touchedLayers = deltas.count
        var md = base.metadata
        var merged = md["merged"]?.arrayValue ?? []
        let step = (merged.compactMap { $0["step"]?.int64Value }.max() ?? Int64(merged.count)) + 1
        for s in subjects { merged.append(record(s, step: Int(step))) }
        md = md.setting("merged", .array(merged))
        if md["merged_from"] == nil, let fp = base.metadata["fingerprints"] { md = md.setting("merged_from", fp) }
        md = md.removing("fingerprints")
        try rewrite(base, metadata: md, to: path) { (name, info, bytes) throws(TensorFileError) -> OwnedBytes? in
            guard let c = deltas[name] else { return nil }
            return try apply([try terms(c)], to: bytes, info: info, sign: 1, bound: nil, file: base.file.path, subjects: names(c))
        }
        return summary
    }

    /// A recorded merge that matches `s`: the same delta fingerprint and weight (or, for records
    /// written before delta fingerprints, the same layer table and weight).
    static func matches(_ record: JSONValue, _ s: AppliedSubject) -> Bool {
        guard record["weight"]?.doubleValue == Double(s.weight) else { return false }
        if let d = record["delta_fingerprint"]?.stringValue { return d == s.subject.deltaFingerprint }
        return record["targets_fingerprint"]?.stringValue == s.subject.targetLayers.tableFingerprint
    }

    static func describe(_ record: JSONValue) -> String {
        let file = record["subject"]?.stringValue ?? "?"
        let name = record["name"]?.stringValue.map { ", name '\($0)'" } ?? ""
        let w = record["weight"]?.doubleValue.map { ", weight \(Float($0))" } ?? ""
        return file + name + w
    }

    /// Takes subjects back out of a merged base.
    ///
    /// With `original`, the touched tensors are copied back from it (bit-exact). Subjects that stay
    /// merged are re-applied on the restored tensors, in the recorded order and grouped by the
    /// merge that added them, so the result equals merging only them into the original; they must
    /// be given in `reapply` (the file's `merged` list names them), or the restore is refused.
    /// Without `original`, ΔW is subtracted and a bound on the error is reported.
    public static func unmerge(merged: BaseModel, subjects: [AppliedSubject], original: BaseModel?, reapply: [AppliedSubject] = [],
                               to path: String, cache: BasisCache = BasisCache()) throws(TensorFileError) -> MergeSummary {
        for s in subjects + reapply {
            try s.validate()
            try s.subject.check(against: merged, subjectPath: s.path)
        }
        let deltas = contributions(subjects)
        var summary = MergeSummary()
        summary.touchedLayers = deltas.count
        var md = merged.metadata
        var list = md["merged"]?.arrayValue ?? []
        for s in subjects {
            guard let i = list.firstIndex(where: { matches($0, s) }) else {
                throw TensorFileError(file: s.path, .invalidArgument("this subject (with weight \(s.weight)) is not recorded as merged into \(merged.file.path)"))
            }
            list.remove(at: i)
        }
        // Subjects that stay merged, each with the file given to re-apply it.
        var again: [(record: JSONValue, subject: AppliedSubject)] = []
        if original != nil {
            var given = reapply
            var missing: [String] = []
            for r in list {
                if let k = given.firstIndex(where: { matches(r, $0) }) {
                    again.append((r, given.remove(at: k)))
                } else {
                    missing.append(describe(r))
                }
            }
            if !missing.isEmpty {
                throw TensorFileError(file: merged.file.path, .invalidArgument(
                    "restoring from the original would also undo \(missing.count) subject(s) that stay merged (\(missing.joined(separator: "; "))): pass each with --reapply, or unmerge without --original"))
            }
            if let extra = given.first {
                throw TensorFileError(file: extra.path, .invalidArgument("given to re-apply, but not recorded as merged into \(merged.file.path) (or given twice)"))
            }
        } else if let r = reapply.first {
            throw TensorFileError(file: r.path, .invalidArgument("re-applying subjects is only needed (and only done) with --original"))
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
        // Re-applied subjects, grouped by the merge step that added them (records without a step
        // are a step each), in the recorded order.
        var groups: [[AppliedSubject]] = []
        var lastStep: Int64? = nil
        for (r, s) in again {
            let step = r["step"]?.int64Value
            if let step, step == lastStep { groups[groups.count - 1].append(s) } else { groups.append([s]) }
            lastStep = step
        }
        let groupDeltas = groups.map { contributions($0) }
        let reappliedWeights = Set(deltas.keys).filter { n in groupDeltas.contains { $0[n] != nil } }
        summary.reapplied = again.filter { a in a.subject.subject.layers.contains { reappliedWeights.contains($0.target.weightName) } }.count
        let boundBox = BoundBox()
        try rewrite(merged, metadata: md, to: path) { (name, info, bytes) throws(TensorFileError) -> OwnedBytes? in
            guard let c = deltas[name] else { return nil }
            if let original {
                let restored = try original.file.tensorBytes(name)
                var steps: [[any DeltaTerm]] = []
                for g in groupDeltas {
                    guard let cs = g[name] else { continue }
                    steps.append(try terms(cs))
                }
                if steps.isEmpty { return OwnedBytes(copying: restored.bytes) }
                return try apply(steps, to: restored, info: info, sign: 1, bound: nil, file: original.file.path,
                                 subjects: groupDeltas.compactMap { $0[name].map(names) }.joined(separator: ", "))
            }
            return try apply([try terms(c)], to: bytes, info: info, sign: -1, bound: boundBox, file: merged.file.path, subjects: names(c))
        }
        if original == nil { summary.deviationBound = boundBox.value }
        return summary
    }

    final class BoundBox: @unchecked Sendable { var value: Double = 0 }

    /// For each step, in order: `W ← round(W + sign · Σ ΔW)` over the step's terms, with one
    /// rounding to W's element type (see `addWeightDeltas`). With `bound`, accumulates the largest
    /// possible deviation of a subtract-unmerge from the weights without the subtracted subjects.
    static func apply(_ steps: [[any DeltaTerm]], to bytes: TensorBytes, info: TensorInfo, sign: Float,
                      bound: BoundBox?, file: String, subjects: String) throws(TensorFileError) -> OwnedBytes {
        guard info.shape.count == 2, DTypeConversion.canConvert(from: info.dtype, to: .F32), DTypeConversion.canConvert(from: .F32, to: info.dtype),
              info.dtype == .F32 || info.dtype == .F16 || info.dtype == .BF16 else {
            throw TensorFileError(file: file, tensor: info.name, .unsupportedConversion(from: info.dtype.name, to: "F32 arithmetic"))
        }
        let out = info.shape[0], inDim = info.shape[1]
        guard let n = CheckedSize.product(out, inDim).flatMap({ $0 <= UInt64(Int.max / 8) ? Int($0) : nil }) else {
            throw TensorFileError(file: file, tensor: info.name, .sizeOverflow)
        }
        var w = [Float](repeating: 0, count: n)
        w.withUnsafeMutableBytes { _ = DTypeConversion.convert(bytes.bytes, from: info.dtype, into: $0, to: .F32, count: n) }
        guard w.allSatisfy(\.isFinite) else {
            throw TensorFileError(file: file, tensor: info.name, .invalidArgument("the weight holds NaN or infinite values; refusing to change it"))
        }
        let before = bound != nil ? w : []
        let rounding: MergeRounding = info.dtype == .F32 ? .nearest : .odd
        var nonFinite = 0
        var report = ConversionReport()
        w.withUnsafeMutableBufferPointer { wp in
            for (k, terms) in steps.enumerated() where nonFinite == 0 && report.isClean {
                nonFinite += addWeightDeltas(terms, out: out, in: inDim, into: wp.baseAddress!, sign: sign, rounding: rounding)
                if info.dtype != .F32 && k < steps.count - 1 {
                    // Round this step's result into the stored type before the next step adds to it.
                    let tmp = OwnedBytes(count: n * info.dtype.byteSize)
                    report.add(DTypeConversion.convert(UnsafeRawBufferPointer(wp), from: .F32, into: tmp.buffer, to: info.dtype, count: n))
                    _ = DTypeConversion.convert(tmp.bytes, from: info.dtype, into: UnsafeMutableRawBufferPointer(wp), to: .F32, count: n)
                }
            }
        }
        let result = OwnedBytes(count: n * info.dtype.byteSize)
        report.add(w.withUnsafeBytes { DTypeConversion.convert($0, from: .F32, into: result.buffer, to: info.dtype, count: n) })
        guard nonFinite == 0, report.isClean else {
            let count = max(nonFinite, report.overflowed + report.nans)
            throw TensorFileError(file: file, tensor: info.name, .invalidArgument(
                "W \(sign > 0 ? "+" : "−") w·ΔW of \(subjects) is beyond the range of \(info.dtype.name) in \(count) weight(s); lower the weight"))
        }
        if let bound {
            // merged = rnd(W + Δ), result = rnd(merged − Δ), each a single rounding of an (almost)
            // exact binary64 sum: |result − W| ≤ u·(|merged| + |result|) + 2^-50·(|merged| + |Δ|) + 2η,
            // with u the unit roundoff and η half the smallest subnormal of the stored type.
            let (u, eta): (Double, Double) = info.dtype == .F16 ? (0x1p-11, 0x1p-25) : info.dtype == .BF16 ? (0x1p-8, 0x1p-134) : (0x1p-24, 0x1p-150)
            var back = [Float](repeating: 0, count: n)
            back.withUnsafeMutableBytes { _ = DTypeConversion.convert(result.bytes, from: info.dtype, into: $0, to: .F32, count: n) }
            var m = bound.value
            for i in 0..<n {
                let merged = Double(before[i]), res = Double(back[i])
                let b = u * (abs(merged) + abs(res)) + 0x1p-50 * (abs(merged) + abs(merged - res)) + 2 * eta
                guard b.isFinite else {
                    throw TensorFileError(file: file, tensor: info.name, .invalidArgument("the deviation bound is not finite"))
                }
                if b > m { m = b }
            }
            bound.value = m
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
