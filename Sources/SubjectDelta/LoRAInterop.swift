import Checkpoint
import TensorFile

/// LoRA files of the ecosystem ↔ subjects: kohya (`lora_unet_…`, `lora_te_…` with
/// `.lora_down/.lora_up/.alpha`) and PEFT/diffusers (`unet.….lora_A/.lora_B`, alpha in
/// `lora_adapter_metadata`), in the naming variants diffusers' loader accepts.
public enum LoRAInterop {
    public enum Format: String, Sendable, CaseIterable { case kohya, peft }

    /// Every name a target layer may have in a LoRA file, mapped to the layer.
    static func nameTable(_ targets: [TargetLayer], architecture: Architecture) throws(TensorFileError) -> [String: TargetLayer] {
        var table: [String: TargetLayer] = [:]
        let map = try BaseConverter.keyMap(architecture, file: "name map")
        for t in targets {
            let underscored = t.name.replacingOccurrences(".", "_")
            if t.name.hasPrefix("unet.") {
                let path = String(t.name.dropFirst("unet.".count))
                table["unet." + path] = t                                    // PEFT / diffusers
                table["lora_unet_" + path.replacingOccurrences(".", "_")] = t   // kohya, diffusers paths
                if let (entry, suffix) = map.lookup(base: t.weightName), entry.base.count == 1 {
                    // kohya, LDM paths: lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q
                    var ldm = entry.ldm + suffix
                    if ldm.hasSuffix(".weight") { ldm.removeLast(".weight".count) }
                    if ldm.hasPrefix("model.diffusion_model.") { ldm.removeFirst("model.diffusion_model.".count) }
                    table["lora_unet_" + ldm.replacingOccurrences(".", "_")] = t
                }
            } else if t.name.hasPrefix("text_encoder.text_model.") {
                let inner = String(t.name.dropFirst("text_encoder.text_model.".count))  // encoder.layers.0.self_attn.q_proj
                table["text_encoder.text_model." + inner] = t
                table["text_encoder." + inner] = t                                 // transformers ≥ 5 naming
                for p in ["lora_te_", "lora_te1_"] {
                    table[p + "text_model_" + inner.replacingOccurrences(".", "_")] = t
                    table[p + inner.replacingOccurrences(".", "_")] = t
                }
            }
            _ = underscored
        }
        return table
    }

    public struct ImportReport: Sendable {
        public var layers = 0
        public var rank = 0
        /// Relative Frobenius error of ΔW per layer, when projected onto LiDB bases.
        public var projectionErrors: [(String, Double)] = []
        /// Element types of the LoRA factors in the source file.
        public var sourceDTypes: Set<DType> = []
        /// The subject dtype that keeps the factors exactly (`f32` for anything but a single
        /// F16 or BF16 type).
        public var keepDType: SubjectDType {
            if sourceDTypes == [.F16] { return .f16 }
            if sourceDTypes == [.BF16] { return .bf16 }
            return .f32
        }
        /// Whether storing the factors as `dtype` rounds them.
        public func isLossy(_ dtype: SubjectDType) -> Bool {
            switch dtype {
            case .f32: return !sourceDTypes.isSubset(of: [.F32, .F16, .BF16])
            case .f16: return !sourceDTypes.isSubset(of: [.F16])
            case .bf16: return !sourceDTypes.isSubset(of: [.BF16])
            case .q8: return true
            }
        }
    }

    /// Reads a LoRA file into a subject with LoRA terms bound to `base`. Keys that match no target
    /// layer are an error listing them, unless `ignoreUnknown`.
    public static func importLoRA(path: String, base: BaseModel, ignoreUnknown: Bool = false) throws(TensorFileError) -> (Subject, ImportReport, [String]) {
        let file = try openTensorCollection(path)
        func fail(_ m: String, _ t: String? = nil) -> TensorFileError { TensorFileError(file: path, tensor: t, .invalidArgument(m)) }
        let allTargets = TargetSet.paper.layers(in: base.file.tensors) + otherLinearLayers(base)
        let table = try nameTable(allTargets, architecture: base.architecture)
        // PEFT alpha from diffusers' adapter metadata.
        var peftAlpha: [String: Double] = [:], peftRank: [String: Int] = [:], rsLoRA: [String: Bool] = [:]
        if let s = file.metadataJSON["lora_adapter_metadata"]?.stringValue,
           let md = try? JSONValue.parse(Array(s.utf8), file: path), let pairs = md.objectValue {
            for (k, v) in pairs {
                if k.hasSuffix(".lora_alpha"), let a = v.doubleValue { peftAlpha[String(k.dropLast(".lora_alpha".count))] = a }
                if k.hasSuffix(".r"), let r = v.int64Value { peftRank[String(k.dropLast(2))] = Int(r) }
                if k.hasSuffix(".use_rslora"), v.boolValue == true { rsLoRA[String(k.dropLast(".use_rslora".count))] = true }
                if k.hasSuffix(".use_dora"), v.boolValue == true { throw fail("DoRA adapters are not supported (\(k))") }
            }
        }
        struct Parts { var down: String?; var up: String?; var alpha: String? }
        var parts: [String: Parts] = [:]   // by layer name
        var unknown: [String] = []
        let suffixes: [(String, WritableKeyPath<Parts, String?>)] = [
            (".lora_down.weight", \.down), (".lora_up.weight", \.up), (".alpha", \.alpha),
            (".lora_A.weight", \.down), (".lora_B.weight", \.up), (".lora.down.weight", \.down), (".lora.up.weight", \.up),
        ]
        for t in file.tensors {
            guard let (suffix, kp) = suffixes.first(where: { t.name.hasSuffix($0.0) }),
                  let layer = table[String(t.name.dropLast(suffix.count))] else { unknown.append(t.name); continue }
            var p = parts[layer.name] ?? Parts()
            if p[keyPath: kp] != nil { throw fail("two tensors for the same factor of layer \(layer.name)", t.name) }
            p[keyPath: kp] = t.name
            parts[layer.name] = p
        }
        if !unknown.isEmpty && !ignoreUnknown {
            throw fail("\(unknown.count) key(s) match no layer of the base: " + unknown.prefix(8).joined(separator: ", ") + (unknown.count > 8 ? ", …" : "") + " (--ignore-unknown skips them)")
        }
        var layers: [SubjectLayer] = []
        var report = ImportReport()
        // Layers in the base's tensor order (spec/subject.md §2).
        var baseOrder: [String: Int] = [:]
        for (i, t) in base.file.tensors.enumerated() { baseOrder[t.name] = i }
        let ordered = allTargets.sorted { (baseOrder[$0.weightName] ?? Int.max) < (baseOrder[$1.weightName] ?? Int.max) }
        for t in ordered {
            guard let p = parts[t.name] else { continue }
            guard let dn = p.down, let un = p.up else { throw fail("layer \(t.name) has only one of its two factors") }
            guard let di = file.tensors.first(where: { $0.name == dn }), let ui = file.tensors.first(where: { $0.name == un }),
                  di.shape.count == 2, ui.shape.count == 2, di.shape[1] == t.inDim, ui.shape[0] == t.out, di.shape[0] == ui.shape[1] else {
                throw fail("factor shapes do not fit layer \(t.name) [\(t.out), \(t.inDim)]", dn)
            }
            let r = di.shape[0]
            guard r >= 1, r <= min(t.out, t.inDim, SubjectLimits.maxRank) else {
                throw fail("rank \(r) is outside 1 … min(out, in, \(SubjectLimits.maxRank)) for layer \(t.name) [\(t.out), \(t.inDim)]", dn)
            }
            let down = try floats(file, dn), up = try floats(file, un)
            report.sourceDTypes.insert(di.dtype)
            report.sourceDTypes.insert(ui.dtype)
            var alpha = Double(r)
            if let an = p.alpha {
                let a = try floats(file, an)
                guard a.count == 1, a[0].isFinite else { throw fail("alpha must be one finite number", an) }
                alpha = Double(a[0])
            } else {
                let comp = t.name.hasPrefix("unet.") ? "unet" : "text_encoder"
                if let a = peftAlpha[comp] { alpha = a }
                if let pr = peftRank[comp], pr != r { throw fail("adapter metadata says rank \(pr), the factors have rank \(r)", dn) }
                if rsLoRA[comp] == true { alpha = alpha * Double(r).squareRoot() }   // rsLoRA scales by alpha/√r
            }
            try Subject.checkLoRA(rank: r, alpha: alpha, out: t.out, in: t.inDim, layer: t.name, file: path)
            layers.append(SubjectLayer(target: t, lidb: nil, lora: LoRATerm(rank: r, alpha: Float(alpha), down: down, up: up)))
            report.rank = max(report.rank, r)
        }
        guard !layers.isEmpty else { throw fail("no LoRA layers found (expected kohya lora_unet_/lora_te_ or PEFT unet./text_encoder. keys)") }
        report.layers = layers.count
        let subject = Subject(layers: layers, basis: .seed(0), targets: "custom", architecture: base.architecture.family.rawValue,
                              info: .object([("provenance", .object([("made_by", .string("lidb subject import")), ("lora", .string(basenameOf(path))),
                                                                      ("rank", .int(report.rank))]))]))
        return (subject, report, unknown)
    }

    /// 2-D weights outside the named target sets that LoRAs commonly train (UNet feed-forward and
    /// projections), so importing them is not refused as unknown.
    static func otherLinearLayers(_ base: BaseModel) -> [TargetLayer] {
        base.file.tensors.compactMap { t in
            guard t.name.hasPrefix("unet."), t.name.hasSuffix(".weight"), t.shape.count == 2, !TargetSet.paper.contains(t.name) else { return nil }
            return TargetLayer(name: String(t.name.dropLast(".weight".count)), out: t.shape[0], in: t.shape[1])
        }
    }

    static func floats(_ c: TensorCollection, _ name: String) throws(TensorFileError) -> [Float] {
        guard let info = c.tensors.first(where: { $0.name == name }) else { throw TensorFileError(file: c.path, tensor: name, .tensorNotFound) }
        guard DTypeConversion.canConvert(from: info.dtype, to: .F32) else {
            throw TensorFileError(file: c.path, tensor: name, .unsupportedConversion(from: info.dtype.name, to: "F32"))
        }
        let b = try c.tensorBytes(name)
        var out = [Float](repeating: 0, count: info.elementCount)
        out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: info.dtype, into: $0, to: .F32, count: info.elementCount) }
        guard out.allSatisfy(\.isFinite) else {
            throw TensorFileError(file: c.path, tensor: name, .invalidArgument("values must be finite in 32-bit floats (found NaN, infinity or a value beyond the F32 range)"))
        }
        return out
    }

    /// Replaces each LoRA term by its least-squares projection onto LiDB bases of the given
    /// dimensions (`down_train = A·down_auxᵀ`, `up_train = up_auxᵀ·B`), reporting the relative
    /// Frobenius error of ΔW per layer.
    public static func project(_ subject: Subject, seed: UInt64, a: Int, b: Int, cache: BasisCache = BasisCache()) throws(TensorFileError) -> (Subject, [(String, Double)]) {
        guard a >= 1, b >= 1, a <= SubjectLimits.maxBasisDimension, b <= SubjectLimits.maxBasisDimension else {
            throw TensorFileError(file: "projection", .invalidArgument("basis dimensions must be 1 … \(SubjectLimits.maxBasisDimension) (got a = \(a), b = \(b))"))
        }
        var out = subject
        var errors: [(String, Double)] = []
        out.basis = .seed(seed)
        for i in out.layers.indices {
            guard let t = out.layers[i].lora else { continue }
            let L = out.layers[i].target
            let a2 = min(a, L.inDim), b2 = min(b, L.out)
            let (dAux, uAux) = try cache.bases(seed: seed, layer: L, a: a2, b: b2)
            let r = t.rank
            // down_train [r, a2] = A [r, in] · down_auxᵀ; up_train [b2, r] = up_auxᵀ [b2, out] · B [out, r]
            var dt = [Float](repeating: 0, count: r * a2)
            for i2 in 0..<r { for j in 0..<a2 {
                var s: Double = 0
                for c in 0..<L.inDim { s += Double(t.down[i2 * L.inDim + c]) * Double(dAux[j * L.inDim + c]) }
                dt[i2 * a2 + j] = Float(s)
            } }
            var ut = [Float](repeating: 0, count: b2 * r)
            for j in 0..<b2 { for i2 in 0..<r {
                var s: Double = 0
                for o in 0..<L.out { s += Double(uAux[o * b2 + j]) * Double(t.up[o * r + i2]) }
                ut[j * r + i2] = Float(s)
            } }
            // ‖ΔW‖² and ‖P ΔW P‖² through r×r Gram matrices (P are orthogonal projectors).
            func gram(_ m: [Float], rows: Int, cols: Int, columnsAreRank: Bool) -> [Double] {
                var g = [Double](repeating: 0, count: r * r)
                for x in 0..<r { for y in 0..<r {
                    var s: Double = 0
                    if columnsAreRank { for k in 0..<rows { s += Double(m[k * cols + x]) * Double(m[k * cols + y]) } }
                    else { for k in 0..<cols { s += Double(m[x * cols + k]) * Double(m[y * cols + k]) } }
                    g[x * r + y] = s
                } }
                return g
            }
            let full = zip(gram(t.up, rows: L.out, cols: r, columnsAreRank: true), gram(t.down, rows: r, cols: L.inDim, columnsAreRank: false)).reduce(0) { $0 + $1.0 * $1.1 }
            let proj = zip(gram(ut, rows: b2, cols: r, columnsAreRank: true), gram(dt, rows: r, cols: a2, columnsAreRank: false)).reduce(0) { $0 + $1.0 * $1.1 }
            let rel = full > 0 ? (max(full - proj, 0) / full).squareRoot() : 0
            errors.append((L.name, rel))
            out.layers[i].lora = nil
            out.layers[i].lidb = LiDBTerm(rank: r, a: a2, b: b2, alpha: t.alpha, downTrain: dt, upTrain: ut)
        }
        return (out, errors)
    }

    /// Writes the subject as a LoRA file: per layer, all terms folded into one LoRA of rank R
    /// (scale folded into the up factor, alpha = R, so scale 1).
    public static func export(_ subject: Subject, format: Format, to path: String, cache: BasisCache = BasisCache()) throws(TensorFileError) {
        try subject.checkApplicable(weight: 1)
        try MemoryBudget.check(exportMemory(subject), for: "exporting \(subject.layers.count) layer(s)", file: subject.label)
        var sources: [TensorSource] = []
        for l in subject.layers {
            let f = try subject.lowRankFactors(l, cache: cache)
            let t = l.target
            let downName: String, upName: String
            var alphaName: String? = nil
            switch format {
            case .kohya:
                let stem: String
                if t.name.hasPrefix("unet.") { stem = "lora_unet_" + t.name.dropFirst("unet.".count).replacingOccurrences(".", "_") }
                else { stem = "lora_te_" + t.name.dropFirst("text_encoder.".count).replacingOccurrences(".", "_") }
                (downName, upName, alphaName) = (stem + ".lora_down.weight", stem + ".lora_up.weight", stem + ".alpha")
            case .peft:
                (downName, upName) = (t.name + ".lora_A.weight", t.name + ".lora_B.weight")
            }
            sources.append(.array(TensorInfo(name: downName, dtype: .F32, shape: [f.rank, t.inDim]), floatBytes(f.down)))
            sources.append(.array(TensorInfo(name: upName, dtype: .F32, shape: [t.out, f.rank]), floatBytes(f.up)))
            if let alphaName { sources.append(.array(TensorInfo(name: alphaName, dtype: .F32, shape: []), floatBytes([Float(f.rank)]))) }
        }
        try SafetensorsWriter.write(to: path, tensors: sources, metadata: [("format", "pt")])
    }
}

/// Bytes `export` allocates for `subject`, from the layer table alone: every layer's output
/// factors (`[R, in]` and `[out, R]` in f32, kept until the file is written) and f32 bases (kept in
/// the cache) plus, for the largest layer, the transient binary64 bases and products. nil on overflow.
func exportMemory(_ subject: Subject) -> UInt64? {
    var total = CheckedSize(), peak: UInt64 = 0
    for l in subject.layers {
        let out = l.target.out, inDim = l.target.inDim
        let r = (l.lidb?.rank ?? 0) + (l.lora?.rank ?? 0)
        var layer = CheckedSize()
        layer.add(CheckedSize.product(8, r, inDim)); layer.add(CheckedSize.product(8, out, r))   // factors and their bytes
        var transient = CheckedSize()
        if let t = l.lidb {
            layer.add(CheckedSize.product(4, t.a, inDim)); layer.add(CheckedSize.product(4, out, t.b))           // cached f32 bases
            transient.add(CheckedSize.product(8, t.a, inDim)); transient.add(CheckedSize.product(8, out, t.b))   // binary64 while generated
        }
        total.add(layer.value)
        transient.add(CheckedSize.product(8, r, inDim)); transient.add(CheckedSize.product(8, out, r))           // U, D and their concatenation
        guard let tv = transient.value else { return nil }
        peak = max(peak, tv)
    }
    total.add(peak)
    return total.value
}

extension StringProtocol {
    func replacingOccurrences(_ a: Character, _ b: Character) -> String { String(map { $0 == a ? b : $0 }) }
}
