import CBLAS
import CLidbSupport
import Checkpoint
import Dispatch
import TensorFile

/// Subjects applied without touching the base's weights: a layer computes `y = W x` as usual and
/// then adds `Σ w · scale · up(down(x))` for the active subjects. Activating or switching subjects
/// only swaps the small trained factors (bases are cached by seed), so it costs well under a
/// millisecond; several subjects can be active at once, each with its weight.
public final class LiveDelta: @unchecked Sendable {
    /// One active term on one layer, kept factored: `ΔW x = up_aux (up_train (down_train (down_aux x)))`.
    struct Term {
        var downAux: [Float]      // [a, in] (LiDB) — empty for LoRA
        var downTrain: [Float]    // [r, a] (LiDB) or down [r, in] (LoRA)
        var upTrain: [Float]      // [b, r] (LiDB) or up [out, r] (LoRA)
        var upAux: [Float]        // [out, b] (LiDB) — empty for LoRA
        var a: Int, b: Int, rank: Int
        var scale: Float
    }

    public let base: BaseModel
    public let cache: BasisCache
    private var terms: [String: [Term]] = [:]
    private var shapes: [String: (out: Int, inDim: Int)] = [:]

    public init(base: BaseModel, cache: BasisCache = BasisCache()) {
        self.base = base
        self.cache = cache
    }

    /// Base weight names that currently have a delta.
    public var activeWeights: [String] { terms.keys.sorted() }

    /// Makes `subjects` the active set (replacing the previous one). Validates each against the base.
    public func activate(_ subjects: [AppliedSubject]) throws(TensorFileError) {
        var next: [String: [Term]] = [:]
        var nextShapes: [String: (Int, Int)] = [:]
        for s in subjects {
            try s.validate()
            try s.subject.check(against: base, subjectPath: s.path)
            for l in s.subject.layers {
                let w = l.target.weightName
                nextShapes[w] = (l.target.out, l.target.inDim)
                if let t = l.lidb {
                    let (d, u): ([Float], [Float])
                    switch s.subject.basis {
                    case let .seed(seed): (d, u) = try cache.bases(seed: seed, layer: l.target, a: t.a, b: t.b, file: s.path)
                    case let .stored(m):
                        guard let sb = m[l.target.name] else { throw TensorFileError(file: s.path, tensor: l.target.name, .invalidArgument("no stored basis")) }
                        (d, u) = (sb.down, sb.up)
                    }
                    next[w, default: []].append(Term(downAux: d, downTrain: t.downTrain, upTrain: t.upTrain, upAux: u, a: t.a, b: t.b, rank: t.rank, scale: t.scale * s.weight))
                }
                if let t = l.lora {
                    next[w, default: []].append(Term(downAux: [], downTrain: t.down, upTrain: t.up, upAux: [], a: l.target.inDim, b: l.target.out, rank: t.rank, scale: t.scale * s.weight))
                }
            }
        }
        terms = next
        shapes = nextShapes.mapValues { (out: $0.0, inDim: $0.1) }
    }

    /// `y[n × out] += ΔW x` for the rows of `x[n × in]` (row-major), summed over the active
    /// subjects. Does nothing for a weight without an active delta.
    public func apply(weight name: String, x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        guard let ts = terms[name], let shape = shapes[name] else { return }
        let out = Int32(shape.out), inDim = Int32(shape.inDim), rows = Int32(n)
        for t in ts {
            let r = Int32(t.rank)
            if t.downAux.isEmpty {
                // LoRA: h = x · downᵀ [n × r]; y += scale · h · upᵀ.
                var h = [Float](repeating: 0, count: n * t.rank)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r, inDim, 1, x, inDim, t.downTrain, inDim, 0, &h, r)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, r, t.scale, h, r, t.upTrain, r, 1, y, out)
                continue
            }
            let a = Int32(t.a), b = Int32(t.b)
            var p = [Float](repeating: 0, count: n * t.a)        // x · down_auxᵀ  [n × a]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, a, inDim, 1, x, inDim, t.downAux, inDim, 0, &p, a)
            var h = [Float](repeating: 0, count: n * t.rank)     // · down_trainᵀ  [n × r]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r, a, 1, p, a, t.downTrain, a, 0, &h, r)
            var q = [Float](repeating: 0, count: n * t.b)        // · up_trainᵀ    [n × b]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, b, r, 1, h, r, t.upTrain, r, 0, &q, b)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, b, t.scale, q, b, t.upAux, b, 1, y, out)  // · up_auxᵀ
        }
    }
}

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
        var jobs: [String: [LowRankDelta]] = [:]
        var order: [String] = []
        for s in subjects {
            var subject = s.subject
            if subject.source.isEmpty { subject.source = s.path }
            for l in subject.layers {
                guard let w = weights[l.target.weightName], w.count == l.target.out * l.target.inDim else { continue }
                let f = try subject.lowRankFactors(l, weight: s.weight, cache: cache)
                if jobs[l.target.weightName] == nil { order.append(l.target.weightName) }
                jobs[l.target.weightName, default: []].append(f)
            }
        }
        let all = order.compactMap { n -> (FloatBuffer, [LowRankDelta], (Int, Int))? in
            guard let w = weights[n], let t = jobs[n], let sh = shapes[n] else { return nil }
            return (w, t, sh)
        }
        DispatchQueue.concurrentPerform(iterations: all.count) { k in
            let (w, terms, shape) = all[k]
            addLowRankTerms(terms, out: shape.0, in: shape.1, into: w.pointer.baseAddress!, sign: sign)
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
