import Checkpoint
import TensorFile

extension Subject {
    /// Writes the subject as a `.lidb` file of kind `subject` (spec/subject.md §3): factors in
    /// `dtype`, zstd where it pays, compressed header.
    public func write(to path: String, dtype: SubjectDType = .f16) throws(TensorFileError) {
        var tensors: [TensorSource] = []
        let lidbLayers = layers.compactMap(\.lidb)
        if !lidbLayers.isEmpty {
            tensors += try Self.packed("lidb.down_train", lidbLayers.map(\.downTrain), dtype: dtype, file: path)
            tensors += try Self.packed("lidb.up_train", lidbLayers.map(\.upTrain), dtype: dtype, file: path)
        }
        for l in layers {
            guard let t = l.lora else { continue }
            tensors += try Self.packed("lora.\(l.target.name).down", [t.down], dtype: dtype, file: path, shape: [t.rank, l.target.inDim])
            tensors += try Self.packed("lora.\(l.target.name).up", [t.up], dtype: dtype, file: path, shape: [l.target.out, t.rank])
        }
        if case let .stored(bases) = basis {
            for l in layers {
                guard let term = l.lidb else { continue }
                guard let sb = bases[l.target.name] else {
                    throw TensorFileError(file: path, tensor: l.target.name, .invalidArgument("stored basis missing for this layer"))
                }
                tensors.append(.array(TensorInfo(name: "basis.\(l.target.name).down", dtype: .F32, shape: [term.a, l.target.inDim]), floatBytes(sb.down)))
                tensors.append(.array(TensorInfo(name: "basis.\(l.target.name).up", dtype: .F32, shape: [l.target.out, term.b]), floatBytes(sb.up)))
            }
        }
        var layerRows: [JSONValue] = []
        for l in layers {
            var row: [(String, JSONValue)] = [("name", .string(l.target.name)), ("shape", .array([.int(l.target.out), .int(l.target.inDim)]))]
            if let t = l.lidb {
                row.append(("lidb", .object([("rank", .int(t.rank)), ("a", .int(t.a)), ("b", .int(t.b)), ("alpha", .double(Double(t.alpha)))])))
            }
            if let t = l.lora { row.append(("lora", .object([("rank", .int(t.rank)), ("alpha", .double(Double(t.alpha)))]))) }
            layerRows.append(.object(row))
        }
        var binding: [(String, JSONValue)] = [("architecture", .string(architecture)), ("targets_fingerprint", .string(targetLayers.tableFingerprint))]
        if let baseContent { binding.append(("base_content", .string(baseContent))) }
        let basisJSON: JSONValue
        switch basis {
        case let .seed(s): basisJSON = .object([("generator", .string(Basis.generatorName)), ("seed", .int(s))])
        case .stored: basisJSON = .object([("stored", .bool(true))])
        }
        let metadata = JSONValue.object([
            ("lidb_subject", .int(Self.schemaVersion)),
            ("targets", .string(targets)),
            ("binding", .object(binding)),
            ("basis", basisJSON),
            ("dtype", .string(dtype.rawValue)),
            ("trained_parameters", .int(trainedParameters)),
            ("info", info),
            ("layers", .array(layerRows)),
        ])
        try LidbWriter.write(to: path, kind: "subject", metadata: metadata, tensors: tensors,
                             options: .init(encoding: .zstdIfSmaller(level: 19), compressHeader: true))
    }

    /// Factors concatenated into one 1-D tensor (or shaped, for a single block), in `dtype`; q8
    /// adds a `.scale` F32 tensor with one symmetric scale per block (max |x| / 127).
    static func packed(_ name: String, _ blocks: [[Float]], dtype: SubjectDType, file: String, shape: [Int]? = nil) throws(TensorFileError) -> [TensorSource] {
        let all = blocks.flatMap { $0 }
        let shp = shape ?? [all.count]
        for x in all where !x.isFinite {
            throw TensorFileError(file: file, tensor: name, .invalidArgument("factor values must be finite"))
        }
        switch dtype {
        case .f32:
            return [.array(TensorInfo(name: name, dtype: .F32, shape: shp), floatBytes(all))]
        case .f16, .bf16:
            let d: DType = dtype == .f16 ? .F16 : .BF16
            let out = OwnedBytes(count: all.count * 2)
            all.withUnsafeBytes { _ = DTypeConversion.convert($0, from: .F32, into: out.buffer, to: d, count: all.count) }
            return [.bytes(TensorInfo(name: name, dtype: d, shape: shp), TensorBytes(owned: out))]
        case .q8:
            var q: [UInt8] = []
            var scales: [Float] = []
            q.reserveCapacity(all.count)
            for blk in blocks {
                let m = blk.reduce(Float(0)) { max($0, abs($1)) }
                let s = m > 0 ? m / 127 : 1
                scales.append(s)
                for x in blk {
                    let v = (x / s).rounded(.toNearestOrEven)
                    q.append(UInt8(bitPattern: Int8(max(-127, min(127, v)))))
                }
            }
            return [.array(TensorInfo(name: name, dtype: .I8, shape: shp), q),
                    .array(TensorInfo(name: name + ".scale", dtype: .F32, shape: [scales.count]), floatBytes(scales))]
        }
    }

    /// Reads a subject file, validating its layer table against its tensors.
    public init(path: String) throws(TensorFileError) {
        try self.init(file: LidbFile(path: path, checksums: .always))
    }

    public init(file: LidbFile) throws(TensorFileError) {
        let path = file.path
        func fail(_ m: String, _ t: String? = nil) -> TensorFileError { TensorFileError(file: path, tensor: t, .invalidArgument(m)) }
        guard file.kind == "subject" else { throw TensorFileError(file: path, .unsupportedFormat("expected a subject file, found kind '\(file.kind)'")) }
        let md = file.metadata
        guard let v = md["lidb_subject"]?.int64Value else { throw TensorFileError(file: path, .missingField("metadata.lidb_subject")) }
        guard v == Int64(Self.schemaVersion) else { throw TensorFileError(file: path, .unsupportedFormat("subject schema version \(v) (this lidb reads version 1)")) }
        guard let rows = md["layers"]?.arrayValue else { throw TensorFileError(file: path, .missingField("metadata.layers")) }
        guard let arch = md["binding"]?["architecture"]?.stringValue else { throw TensorFileError(file: path, .missingField("metadata.binding.architecture")) }
        let basis: SubjectBasis
        if let seed = md["basis"]?["seed"]?.uint64Value, md["basis"]?["generator"]?.stringValue == Basis.generatorName {
            basis = .seed(seed)
        } else if md["basis"]?["stored"]?.boolValue == true {
            basis = .stored([:])
        } else {
            throw fail("unknown basis (expected generator '\(Basis.generatorName)' with a seed, or stored bases)")
        }
        func decode(_ name: String) throws(TensorFileError) -> [Float] {
            guard let e = file.entry(name) else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
            let bytes = try file.tensorBytes(name)
            let n = e.info.elementCount
            switch e.info.dtype {
            case .F32, .F16, .BF16:
                var out = [Float](repeating: 0, count: n)
                out.withUnsafeMutableBytes { _ = DTypeConversion.convert(bytes.bytes, from: e.info.dtype, into: $0, to: .F32, count: n) }
                return out
            case .I8:
                return bytes.bytes.map { Float(Int8(bitPattern: $0)) }
            default:
                throw TensorFileError(file: path, tensor: name, .invalidArgument("factors must be F32, F16, BF16 or I8, not \(e.info.dtype.name)"))
            }
        }
        func scales(_ name: String, blocks: Int) throws(TensorFileError) -> [Float]? {
            guard file.entry(name)?.info.dtype == .I8 else { return nil }
            let s = try decode(name + ".scale")
            guard s.count == blocks, s.allSatisfy({ $0.isFinite && $0 > 0 }) else { throw fail("\(blocks) positive scales expected", name + ".scale") }
            return s
        }
        var layers: [SubjectLayer] = []
        var names = Set<String>()
        var lidbSizes: [(Int, Int)] = []
        for (i, row) in rows.enumerated() {
            guard let name = row["name"]?.stringValue, let shape = row["shape"]?.arrayValue?.compactMap(\.int64Value), shape.count == 2,
                  shape[0] > 0, shape[1] > 0 else { throw fail("layers[\(i)] needs a name and a shape [out, in]") }
            guard names.insert(name).inserted else { throw fail("layer listed twice", name) }
            let target = TargetLayer(name: name, out: Int(shape[0]), in: Int(shape[1]))
            var layer = SubjectLayer(target: target, lidb: nil, lora: nil)
            if let t = row["lidb"] {
                guard let r = t["rank"]?.int64Value, let a = t["a"]?.int64Value, let b = t["b"]?.int64Value, let alpha = t["alpha"]?.doubleValue,
                      r >= 1, a >= 1, b >= 1, a <= shape[1], b <= shape[0], r <= 1024, alpha.isFinite else {
                    throw fail("invalid lidb term (rank ≥ 1, 1 ≤ a ≤ in, 1 ≤ b ≤ out, finite alpha)", name)
                }
                layer.lidb = LiDBTerm(rank: Int(r), a: Int(a), b: Int(b), alpha: Float(alpha), downTrain: [], upTrain: [])
                lidbSizes.append((Int(r * a), Int(b * r)))
            }
            if let t = row["lora"] {
                guard let r = t["rank"]?.int64Value, let alpha = t["alpha"]?.doubleValue, r >= 1, r <= min(shape[0], shape[1]), alpha.isFinite else {
                    throw fail("invalid lora term (1 ≤ rank ≤ min(out, in), finite alpha)", name)
                }
                var down = try decode("lora.\(name).down"), up = try decode("lora.\(name).up")
                guard down.count == Int(r * shape[1]), up.count == Int(shape[0] * r) else { throw fail("lora factors do not match [rank, in] / [out, rank]", name) }
                if let s = try scales("lora.\(name).down", blocks: 1) { down = down.map { $0 * s[0] } }
                if let s = try scales("lora.\(name).up", blocks: 1) { up = up.map { $0 * s[0] } }
                layer.lora = LoRATerm(rank: Int(r), alpha: Float(alpha), down: down, up: up)
            }
            guard layer.lidb != nil || layer.lora != nil else { throw fail("layer has no term", name) }
            layers.append(layer)
        }
        if !lidbSizes.isEmpty {
            let down = try decode("lidb.down_train"), up = try decode("lidb.up_train")
            guard down.count == lidbSizes.reduce(0, { $0 + $1.0 }), up.count == lidbSizes.reduce(0, { $0 + $1.1 }) else {
                throw fail("lidb.down_train / lidb.up_train sizes do not match the layer table")
            }
            let ds = try scales("lidb.down_train", blocks: lidbSizes.count), us = try scales("lidb.up_train", blocks: lidbSizes.count)
            var di = 0, ui = 0, k = 0
            for i in layers.indices where layers[i].lidb != nil {
                let (nd, nu) = lidbSizes[k]
                layers[i].lidb!.downTrain = Array(down[di..<(di + nd)]).map { $0 * (ds?[k] ?? 1) }
                layers[i].lidb!.upTrain = Array(up[ui..<(ui + nu)]).map { $0 * (us?[k] ?? 1) }
                di += nd; ui += nu; k += 1
            }
        }
        var finalBasis = basis
        if case .stored = basis {
            var stored: [String: StoredBasis] = [:]
            for l in layers {
                guard let t = l.lidb else { continue }
                let d = try decode("basis.\(l.target.name).down"), u = try decode("basis.\(l.target.name).up")
                guard d.count == t.a * l.target.inDim, u.count == l.target.out * t.b else { throw fail("stored basis has the wrong size", l.target.name) }
                stored[l.target.name] = StoredBasis(down: d, up: u)
            }
            finalBasis = .stored(stored)
        }
        self.init(layers: layers, basis: finalBasis, targets: md["targets"]?.stringValue ?? "custom", architecture: arch,
                  baseContent: md["binding"]?["base_content"]?.stringValue, info: md["info"] ?? .object([]))
        if let fp = md["binding"]?["targets_fingerprint"]?.stringValue, fp != targetLayers.tableFingerprint {
            throw fail("the layer table does not match its recorded fingerprint")
        }
    }
}

func floatBytes(_ v: [Float]) -> [UInt8] {
    v.withUnsafeBytes { Array($0) }
}
