import Checkpoint
import Compute
import Foundation
import SubjectDelta
import TensorFile

/// The tiny bases of the whole-model gradient fixtures, and their delta terms as Compute terms.
enum NetworkFixtures {
    /// The diffusers folder of a fixture model (`sd1`, `sd2`: the base fixtures; `sd1-cond`: the
    /// conditioned copy of the training fixtures).
    static func folder(_ model: String) -> String {
        model == "sd1-cond" ? TrainingFixtures.path("sd1-cond")
            : TrainingFixtures.repo + "/Tests/BaseTests/Fixtures/\(model)/diffusers-safetensors"
    }

    /// The model converted to a base file in a fresh temporary folder (the caller removes it).
    static func base(_ model: String) throws -> (base: BaseModel, dir: String) {
        let dir = NSTemporaryDirectory() + "lidb-net-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/base.lidb"
        _ = try BaseConverter.write(BaseConverter.plan(input: folder(model)), to: path, dtype: nil)
        return (try BaseModel(path: path), dir)
    }

    static func model(_ model: String) throws -> [String: Any] {
        let m = try TrainingFixtures.manifest()
        guard let models = m["models"] as? [String: Any], let entry = models[model] as? [String: Any] else { throw FixtureError("no model \(model)") }
        return entry
    }

    static func variant(_ model: String, _ variant: String) throws -> [String: Any] {
        guard let vs = try Self.model(model)["variants"] as? [String: Any], let v = vs[variant] as? [String: Any] else {
            throw FixtureError("no variant \(model)/\(variant)")
        }
        return v
    }

    /// The layer table `[name, out, in]` of the model's fixtures, in order.
    static func layerTable(_ model: String) throws -> [(name: String, out: Int, in: Int)] {
        guard let key = try Self.model(model)["layer_table"] as? String,
              let tables = try TrainingFixtures.manifest()["layer_tables"] as? [String: Any], let rows = tables[key] as? [[Any]] else {
            throw FixtureError("no layer table for \(model)")
        }
        return try rows.map { r in
            guard r.count == 3, let n = r[0] as? String, let o = r[1] as? Int, let i = r[2] as? Int else { throw FixtureError("layer table row \(r)") }
            return (n, o, i)
        }
    }
}

/// The delta terms of one fixture variant, per layer in layer-table order.
struct FixtureTerms {
    var names: [String] = []
    var lidb: [LowRankTerm] = []
    var lora: [LowRankTerm] = []

    /// The concatenated factor gradients of `kind` (`lidb.down_train`, `lidb.up_train`,
    /// `lora.down`, `lora.up`), and each layer's range in it.
    func gradients(_ kind: String) -> (values: [Float], ranges: [Range<Int>]) {
        var values: [Float] = [], ranges: [Range<Int>] = []
        let list = kind.hasPrefix("lidb") ? lidb : lora
        for i in list.indices {
            let g: [Float]
            switch kind {
            case "lidb.down_train", "lora.down": g = list[i].gradDown
            default: g = list[i].gradUp
            }
            ranges.append(values.count..<(values.count + g.count))
            values += g
        }
        return (values, ranges)
    }

    /// Reads the variant's subject file (structure, alphas, basis) and the fixture's exact
    /// factor values, builds `LowRankTerm`s (LiDB trained in `lidb`, frozen in `lidb+lora`, where
    /// the LoRA terms train) and attaches them to the networks by base name.
    static func attach(model: String, variant: String, unet: inout UNetNetwork, text: inout CLIPTextNetwork) throws -> FixtureTerms {
        let entry = try NetworkFixtures.variant(model, variant)
        guard let subjectFile = entry["subject"] as? String else { throw FixtureError("no subject for \(model)/\(variant)") }
        let subject = try Subject(path: TrainingFixtures.path(subjectFile))
        let table = try NetworkFixtures.layerTable(model)
        guard subject.layers.map(\.target.name) == table.map(\.name) else { throw FixtureError("\(subjectFile): layers are not the fixture's table") }
        let f = try FixtureFile("\(model).safetensors")
        let downTrain = try f.floats("\(variant).lidb.down_train"), upTrain = try f.floats("\(variant).lidb.up_train")
        let withLoRA = variant == "lidb+lora"
        let loraDown = withLoRA ? try f.floats("\(variant).lora.down") : [], loraUp = withLoRA ? try f.floats("\(variant).lora.up") : []
        var offsets = (down: 0, up: 0, loraDown: 0, loraUp: 0)
        var terms = FixtureTerms()
        func slice(_ a: [Float], _ o: inout Int, _ n: Int) throws -> [Float] {
            guard o + n <= a.count else { throw FixtureError("factor tensor too short") }
            defer { o += n }
            return Array(a[o..<(o + n)])
        }
        for layer in subject.layers {
            let t = layer.target
            guard let l = layer.lidb else { throw FixtureError("\(t.name): no LiDB term") }
            let aux: (down: [Float], up: [Float])
            switch subject.basis {
            case .seed(let s):
                let b = try Basis.layer(seed: s, name: t.name, out: t.out, in: t.inDim, a: l.a, b: l.b)
                guard b.a == l.a, b.b == l.b else { throw FixtureError("\(t.name): basis sizes") }
                aux = (b.down, b.up)
            case .stored(let m):
                guard let b = m[t.name] else { throw FixtureError("\(t.name): no stored basis") }
                aux = (b.down, b.up)
            }
            let dt = try slice(downTrain, &offsets.down, l.rank * l.a), ut = try slice(upTrain, &offsets.up, l.b * l.rank)
            // The file holds the same values (rounded to its dtype).
            guard relativeError(l.downTrain, dt) <= 1e-3, relativeError(l.upTrain, ut) <= 1e-3 else {
                throw FixtureError("\(t.name): the subject's LiDB factors are not the fixture's")
            }
            let lidb = try LowRankTerm.lidb(downAux: aux.down, downTrain: dt, upTrain: ut, upAux: aux.up, out: t.out, in: t.inDim,
                                            rank: l.rank, alpha: l.alpha, trainable: !withLoRA)
            try attach(lidb, t.name, &unet, &text)
            terms.names.append(t.name)
            terms.lidb.append(lidb)
            if withLoRA {
                guard let r = layer.lora else { throw FixtureError("\(t.name): no LoRA term") }
                let d = try slice(loraDown, &offsets.loraDown, r.rank * t.inDim), u = try slice(loraUp, &offsets.loraUp, t.out * r.rank)
                guard relativeError(r.down, d) <= 1e-3, relativeError(r.up, u) <= 1e-3 else {
                    throw FixtureError("\(t.name): the subject's LoRA factors are not the fixture's")
                }
                let lora = try LowRankTerm.lora(down: d, up: u, out: t.out, in: t.inDim, rank: r.rank, alpha: r.alpha, trainable: true)
                try attach(lora, t.name, &unet, &text)
                terms.lora.append(lora)
            }
        }
        guard offsets.down == downTrain.count, offsets.up == upTrain.count, offsets.loraDown == loraDown.count, offsets.loraUp == loraUp.count else {
            throw FixtureError("factor tensors longer than the layers' terms")
        }
        return terms
    }

    static func attach(_ term: LowRankTerm, _ name: String, _ unet: inout UNetNetwork, _ text: inout CLIPTextNetwork) throws {
        if name.hasPrefix("unet.") {
            try unet.attach(term, to: String(name.dropFirst("unet.".count)))
        } else if name.hasPrefix("text_encoder.") {
            try text.attach(term, to: String(name.dropFirst("text_encoder.".count)))
        } else {
            throw FixtureError("\(name): neither a UNet nor a text-encoder layer")
        }
    }
}

/// Deterministic pseudo-random values in [−scale, scale) (a 64-bit LCG; test inputs only).
func testValues(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var s = seed &* 6364136223846793005 &+ 1442695040888963407
    return (0..<count).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return (Float(s >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
}
