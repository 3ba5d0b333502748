import CLidbSupport
import Checkpoint
import Compute
import Dispatch
import TensorFile

/// f32 values owned by reference, so layers can be updated in place from several threads.
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableBufferPointer<Float>
    public init(count: Int) { pointer = .allocate(capacity: max(count, 1)); pointer.initialize(repeating: 0) }
    public var count: Int { pointer.count }
    public var array: [Float] { Array(pointer) }
    deinit { pointer.deallocate() }
}

/// In-memory f32 weights of a base's target layers, for merging and unmerging in place (what the
/// runtime uses when `--apply merge`, and what the merge benchmark measures).
public final class MergedWeights: @unchecked Sendable {
    public private(set) var weights: [String: FloatBuffer] = [:]
    private var originals: [String: FloatBuffer] = [:]
    private var shapes: [String: (Int, Int)] = [:]

    /// Loads `names` from `base` as f32 (and keeps a copy for bit-exact restore).
    public init(base: BaseModel, names: [String]) throws(TensorFileError) {
        for n in names {
            guard let e = base.file.entry(n), e.info.shape.count == 2 else { throw TensorFileError(file: base.file.path, tensor: n, .tensorNotFound) }
            let b = try base.file.tensorBytes(n)
            let w = FloatBuffer(count: e.info.elementCount), o = FloatBuffer(count: e.info.elementCount)
            _ = DTypeConversion.convert(b.bytes, from: e.info.dtype, into: UnsafeMutableRawBufferPointer(w.pointer), to: .F32, count: e.info.elementCount)
            _ = o.pointer.initialize(from: w.pointer)
            weights[n] = w
            originals[n] = o
            shapes[n] = (e.info.shape[0], e.info.shape[1])
        }
    }

    /// Adds (`sign` +1) or subtracts (−1) the subjects' ΔW in place, layers in parallel on all cores.
    /// All subjects' terms of a layer are added together with one rounding (as `lidb merge` does).
    public func apply(_ subjects: [AppliedSubject], sign: Float = 1, cache: BasisCache) throws(TensorFileError) {
        for s in subjects { try s.validate() }
        var jobs: [String: [any DeltaTerm]] = [:]
        var order: [String] = []
        for s in subjects {
            var subject = s.subject
            if subject.source.isEmpty { subject.source = s.path }
            for l in subject.layers {
                guard let w = weights[l.target.weightName], w.count == l.target.out * l.target.inDim else { continue }
                let terms = try subject.layerTerms(l, weight: s.weight, cache: cache).terms
                if jobs[l.target.weightName] == nil { order.append(l.target.weightName) }
                jobs[l.target.weightName, default: []] += terms as [any DeltaTerm]
            }
        }
        let all = order.compactMap { n -> (String, FloatBuffer, [any DeltaTerm], (Int, Int))? in
            guard let w = weights[n], let t = jobs[n], let sh = shapes[n] else { return nil }
            return (n, w, t, sh)
        }
        let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(all.count, 1))
        counts.initialize(repeating: 0)
        defer { counts.deallocate() }
        let shared = UnsafeSendable(counts)
        DispatchQueue.concurrentPerform(iterations: all.count) { k in
            let (_, w, terms, shape) = all[k]
            shared.p[k] = addWeightDeltas(terms, out: shape.0, in: shape.1, into: w.pointer.baseAddress!, sign: sign)
        }
        if let k = all.indices.first(where: { counts[$0] > 0 }) {
            throw TensorFileError(file: "merge", tensor: all[k].0, .invalidArgument(
                "W \(sign < 0 ? "−" : "+") ΔW is not finite in \(counts[k]) weight(s) (beyond the binary32 range); restore() brings the originals back"))
        }
    }

    /// Copies the original values back (bit-exact).
    public func restore() {
        let names = Array(weights.keys)
        let (w, o) = (weights, originals)
        DispatchQueue.concurrentPerform(iterations: names.count) { i in
            let n = names[i]
            lidb_copy_floats(w[n]!.pointer.baseAddress!, o[n]!.pointer.baseAddress!, o[n]!.count)
        }
    }
}
