import Checkpoint
import Compute
import TensorFile

/// One subject layer's delta as `Compute` terms: its LiDB term (aux bases from the subject's
/// basis) and its LoRA term, each scaled by `alpha / rank` times the subject's weight.
public struct LayerTerms: Sendable {
    public var layer: TargetLayer
    public var lidb: LowRankTerm?
    public var lora: LowRankTerm?
    /// The terms in the order the subject stores them (LiDB, then LoRA).
    public var terms: [LowRankTerm] { [lidb, lora].compactMap { $0 } }
}

extension Subject {
    /// The subject's delta at `weight` as terms, layer by layer (LiDB before LoRA on a layer):
    /// what the runtime attaches to its layers to apply the subject live, what merges add into
    /// weights (`addWeightDeltas`) and what training starts from. Bases come from `cache`.
    /// The terms are frozen (`trainable` false). Checks the weight, the structure, the shapes
    /// and that `ΔW` stays finite in binary32 (`deltaBound`); errors name the layer.
    public func deltaTerms(weight: Float = 1, cache: BasisCache) throws(TensorFileError) -> [(layer: TargetLayer, term: LowRankTerm)] {
        var out: [(layer: TargetLayer, term: LowRankTerm)] = []
        for l in layers {
            let t = try layerTerms(l, weight: weight, cache: cache)
            for term in t.terms { out.append((l.target, term)) }
        }
        return out
    }

    /// One layer's terms (see `deltaTerms(weight:cache:)`).
    public func layerTerms(_ layer: SubjectLayer, weight: Float = 1, cache: BasisCache) throws(TensorFileError) -> LayerTerms {
        _ = try SubjectWeight.validated(Double(weight), file: label)
        let out = layer.target.out, inDim = layer.target.inDim, name = layer.target.name
        let bound = deltaBound(layer, weight: weight)
        guard bound.isFinite, bound <= Double(Float.greatestFiniteMagnitude) else {
            throw TensorFileError(file: label, tensor: name, .invalidArgument(
                "ΔW at weight \(weight) could reach \(bound), beyond the range of 32-bit floats (factors, alpha or q8 scales too large)"))
        }
        try Self.checkShape(out: out, in: inDim, layer: name, file: label)
        func term<T>(_ make: () throws(ComputeError) -> T) throws(TensorFileError) -> T {
            do { return try make() } catch { throw TensorFileError(file: label, tensor: name, .invalidArgument(error.message)) }
        }
        var result = LayerTerms(layer: layer.target)
        if let t = layer.lidb {
            try Self.checkLiDB(rank: t.rank, a: t.a, b: t.b, alpha: Double(t.alpha), out: out, in: inDim, layer: name, file: label)
            let (downAux, upAux): (FiniteFactor, FiniteFactor)
            switch basis {
            case let .seed(s): (downAux, upAux) = try cache.checkedBases(seed: s, layer: layer.target, a: t.a, b: t.b, file: label)
            case let .stored(m):
                guard let sb = m[name] else { throw TensorFileError(file: label, tensor: name, .invalidArgument("no stored basis for this layer")) }
                (downAux, upAux) = try term { () throws(ComputeError) in
                    (try FiniteFactor(sb.down, name: "stored down_aux"), try FiniteFactor(sb.up, name: "stored up_aux"))
                }
            }
            guard downAux.values.count == t.a * inDim, upAux.values.count == out * t.b, t.downTrain.count == t.rank * t.a,
                  t.upTrain.count == t.b * t.rank else {
                throw TensorFileError(file: label, tensor: name, .invalidArgument("factor or basis sizes do not match the layer"))
            }
            let scale = t.scale * weight
            result.lidb = try term { () throws(ComputeError) in
                try LowRankTerm(out: out, in: inDim, rank: t.rank, scale: scale, down: t.downTrain, up: t.upTrain,
                                downAux: downAux, upAux: upAux, trainable: false)
            }
        }
        if let t = layer.lora {
            try Self.checkLoRA(rank: t.rank, alpha: Double(t.alpha), out: out, in: inDim, layer: name, file: label)
            guard t.down.count == t.rank * inDim, t.up.count == out * t.rank else {
                throw TensorFileError(file: label, tensor: name, .invalidArgument("lora factor sizes do not match the layer"))
            }
            let scale = t.scale * weight
            result.lora = try term { () throws(ComputeError) in
                try LowRankTerm(out: out, in: inDim, rank: t.rank, scale: scale, down: t.down, up: t.up, trainable: false)
            }
        }
        guard result.lidb != nil || result.lora != nil else {
            throw TensorFileError(file: label, tensor: name, .invalidArgument("layer has no term"))
        }
        return result
    }
}
