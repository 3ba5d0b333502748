import Checkpoint
import SubjectDelta
import TensorFile

/// Who the subject is and where it came from; stored in the subject's `info` (never the photo).
public struct SubjectProvenance: Sendable {
    public var name: String?
    public var trigger: String?
    public var className: String?
    /// SHA-256 (64 lower-case hex digits) of the photo's file bytes.
    public var imageSHA256: String
    /// The hypernetwork's fingerprint; defaults to the loaded file's.
    public var hypernetworkFingerprint: String?

    public init(name: String? = nil, trigger: String? = nil, className: String? = nil, imageSHA256: String, hypernetworkFingerprint: String? = nil) {
        self.name = name
        self.trigger = trigger
        self.className = className
        self.imageSHA256 = imageSHA256
        self.hypernetworkFingerprint = hypernetworkFingerprint
    }
}

extension Hypernetwork {
    /// Refuses a base whose family or target layer table differs from the one this hypernetwork
    /// predicts for, naming the first layer that differs.
    public func checkTargets(against base: BaseModel) throws(HypernetworkError) {
        let c = config
        guard c.architecture == base.architecture.family.rawValue else {
            throw HypernetworkError(file: path, .architectureMismatch(hypernetwork: c.architecture, base: base.architecture.family.rawValue))
        }
        if let set = TargetSet(rawValue: c.targetSet) {
            let theirs = set.layers(in: base.file.tensors)
            if theirs.tableFingerprint == c.layers.tableFingerprint { return }
            for (i, mine) in c.layers.enumerated() {
                guard i < theirs.count else {
                    throw HypernetworkError(file: path, .targetsMismatch(layer: mine.name, reason: "the base's '\(c.targetSet)' table ends after \(theirs.count) layers"))
                }
                let t = theirs[i]
                if t.name != mine.name {
                    throw HypernetworkError(file: path, .targetsMismatch(layer: mine.name, reason: "layer \(i) of the base's table is '\(t.name)'"))
                }
                if t.out != mine.out || t.inDim != mine.inDim {
                    throw HypernetworkError(file: path, .targetsMismatch(layer: mine.name, reason: "shape [\(mine.out), \(mine.inDim)], the base has [\(t.out), \(t.inDim)]"))
                }
            }
            let extra = theirs[c.layers.count]
            throw HypernetworkError(file: path, .targetsMismatch(layer: extra.name, reason: "the base's table has \(theirs.count) layers, the hypernetwork's \(c.layers.count)"))
        }
        for mine in c.layers {
            guard let e = base.file.entry(mine.weightName) else {
                throw HypernetworkError(file: path, .targetsMismatch(layer: mine.name, reason: "not in the base"))
            }
            if e.info.shape != [mine.out, mine.inDim] {
                throw HypernetworkError(file: path, .targetsMismatch(layer: mine.name, reason: "shape [\(mine.out), \(mine.inDim)], the base has \(e.info.shape)"))
            }
        }
    }

    /// A complete subject from this hypernetwork's predictions, bound to `base` (its family and
    /// target table; with `strict`, also its content fingerprint).
    public func subject(from predictions: [LayerPrediction], for base: BaseModel, provenance: SubjectProvenance,
                        strict: Bool = false) throws(HypernetworkError) -> Subject {
        try checkTargets(against: base)
        let c = config
        guard predictions.count == c.layers.count else {
            throw HypernetworkError(file: path, .invalidInput("\(predictions.count) layer predictions for a table of \(c.layers.count) layers"))
        }
        let hex = provenance.imageSHA256.utf8
        guard hex.count == 64, hex.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw HypernetworkError(file: path, .invalidInput("image SHA-256 must be 64 lower-case hex digits"))
        }
        var layers: [SubjectLayer] = []
        for (i, p) in predictions.enumerated() {
            let t = c.layers[i], dims = c.layerDims[i]
            guard p.target == t, p.rank == c.subject.rank, p.a == dims.a, p.b == dims.b,
                  p.downTrain.count == dims.down, p.upTrain.count == dims.up else {
                throw HypernetworkError(file: path, .invalidInput("prediction \(i) does not match layer '\(t.name)' of the table"))
            }
            guard p.downTrain.allSatisfy({ $0.isFinite }), p.upTrain.allSatisfy({ $0.isFinite }) else {
                throw HypernetworkError(file: path, .invalidInput("prediction for '\(t.name)' is not finite"))
            }
            layers.append(SubjectLayer(target: t, lidb: LiDBTerm(rank: p.rank, a: p.a, b: p.b, alpha: c.subject.alpha,
                                                                 downTrain: p.downTrain, upTrain: p.upTrain), lora: nil))
        }
        var info: [(String, JSONValue)] = []
        if let n = provenance.name { info.append(("name", .string(n))) }
        if let t = provenance.trigger { info.append(("trigger", .string(t))) }
        if let k = provenance.className { info.append(("class", .string(k))) }
        info.append(("provenance", .object([
            ("made_by", .string("lidb hypernetwork")),
            ("hypernetwork", .string(provenance.hypernetworkFingerprint ?? fingerprint)),
            ("image_sha256", .string(provenance.imageSHA256)),
            ("iterations", .int(c.decoder.iterations)),
        ])))
        return Subject(layers: layers, basis: .seed(c.subject.basisSeed), targets: c.targetSet, architecture: c.architecture,
                       baseContent: strict ? base.contentFingerprint : nil, info: .object(info))
    }
}
