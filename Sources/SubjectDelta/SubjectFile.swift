import Checkpoint
import TensorFile

extension Subject {
    /// Writes the subject as a `.lidb` file of kind `subject` (spec/subject.md §3): factors in
    /// `dtype`, zstd where it pays, compressed header.
    public func write(to path: String, dtype: SubjectDType = .f16) throws(TensorFileError) {
        try validate(file: path)
        var tensors: [TensorSource] = []
        let lidbLayers = layers.compactMap(\.lidb)
        if !lidbLayers.isEmpty {
            let names = layers.filter { $0.lidb != nil }.map(\.target.name)
            tensors += try Self.packed("lidb.down_train", lidbLayers.map(\.downTrain), dtype: dtype, file: path, blockNames: names)
            tensors += try Self.packed("lidb.up_train", lidbLayers.map(\.upTrain), dtype: dtype, file: path, blockNames: names)
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
    /// Errors name the tensor and, with `blockNames` (one per block), the layer of the block.
    static func packed(_ name: String, _ blocks: [[Float]], dtype: SubjectDType, file: String, shape: [Int]? = nil,
                       blockNames: [String]? = nil) throws(TensorFileError) -> [TensorSource] {
        let all = blocks.flatMap { $0 }
        let shp = shape ?? [all.count]
        /// "layer 'L': " for the block holding element `i` of `all`, when blocks have names.
        func whose(block b: Int) -> String {
            guard let blockNames, b < blockNames.count else { return "" }
            return "layer '\(blockNames[b])': "
        }
        func whose(element i: Int) -> String {
            var start = 0
            for (b, blk) in blocks.enumerated() {
                if i < start + blk.count { return whose(block: b) }
                start += blk.count
            }
            return ""
        }
        if let i = all.firstIndex(where: { !$0.isFinite }) {
            throw TensorFileError(file: file, tensor: name, .invalidArgument(whose(element: i) + "factor values must be finite"))
        }
        switch dtype {
        case .f32:
            return [.array(TensorInfo(name: name, dtype: .F32, shape: shp), floatBytes(all))]
        case .f16, .bf16:
            let d: DType = dtype == .f16 ? .F16 : .BF16
            let out = OwnedBytes(count: all.count * 2)
            all.withUnsafeBytes { _ = DTypeConversion.convert($0, from: .F32, into: out.buffer, to: d, count: all.count) }
            // A finite f32 factor can overflow the narrower type (|x| ≥ 65520 in f16): the file
            // would hold infinities that no reader accepts, so refuse rather than write it.
            let exponent: UInt16 = dtype == .f16 ? 0x7C00 : 0x7F80
            let halves = out.buffer.bindMemory(to: UInt16.self)
            for i in 0..<all.count where halves[i] & exponent == exponent {
                throw TensorFileError(file: file, tensor: name, .invalidArgument(whose(element: i) + "factor value \(all[i]) does not fit \(dtype.rawValue) (use --dtype f32)"))
            }
            return [.bytes(TensorInfo(name: name, dtype: d, shape: shp), TensorBytes(owned: out))]
        case .q8:
            var q: [UInt8] = []
            var scales: [Float] = []
            q.reserveCapacity(all.count)
            for (b, blk) in blocks.enumerated() {
                let m = blk.reduce(Float(0)) { max($0, abs($1)) }
                // max|x| / 127, but never 0: a block whose maximum is below 127 times the smallest
                // subnormal gets that subnormal as its scale, and its values are then exact.
                let s = m > 0 ? max(m / 127, Float.leastNonzeroMagnitude) : 1
                // The reader's rule, exactly: a scale it would refuse is not written.
                guard Self.isValidQ8Scale(s) else {
                    throw TensorFileError(file: file, tensor: name, .invalidArgument(
                        whose(block: b) + "max |factor| \(m) needs the q8 scale \(s), above the largest a reader accepts "
                        + "(\(Self.maxQ8Scale): 127 · scale must be finite in binary32); use --dtype f32"))
                }
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

    /// The q8 scale rule readers apply (spec/subject.md §3): positive, and `127 · scale` finite in
    /// binary32 so every dequantised value is. The writer applies the same test before writing.
    static func isValidQ8Scale(_ s: Float) -> Bool { s > 0 && (s * 127).isFinite }

    /// The largest scale `isValidQ8Scale` accepts.
    static var maxQ8Scale: Float {
        var s = Float.greatestFiniteMagnitude / 127
        while !isValidQ8Scale(s) { s = s.nextDown }
        while isValidQ8Scale(s.nextUp) { s = s.nextUp }
        return s
    }

    /// Reads a subject file, validating it as spec/subject.md §4 requires.
    public init(path: String) throws(TensorFileError) {
        try self.init(file: LidbFile(path: path, checksums: .always))
    }

    /// The element type of the factor tensors for a metadata `dtype`.
    static func tensorDType(_ d: SubjectDType) -> DType {
        switch d {
        case .f16: return .F16
        case .f32: return .F32
        case .bf16: return .BF16
        case .q8: return .I8
        }
    }

    public init(file: LidbFile) throws(TensorFileError) {
        let path = file.path
        func fail(_ m: String, _ t: String? = nil) -> TensorFileError { TensorFileError(file: path, tensor: t, .invalidArgument(m)) }
        func wrong(_ field: String, _ expected: String) -> TensorFileError { TensorFileError(file: path, .wrongType(field: field, expected: expected)) }
        guard file.kind == "subject" else { throw TensorFileError(file: path, .unsupportedFormat("expected a subject file, found kind '\(file.kind)'")) }
        let md = file.metadata
        guard let vv = md["lidb_subject"] else { throw TensorFileError(file: path, .missingField("metadata.lidb_subject")) }
        guard let v = vv.int64Value else { throw wrong("metadata.lidb_subject", "an integer") }
        guard v == Int64(Self.schemaVersion) else { throw TensorFileError(file: path, .unsupportedFormat("subject schema version \(v) (this lidb reads version 1)")) }
        // binding
        guard let binding = md["binding"] else { throw TensorFileError(file: path, .missingField("metadata.binding")) }
        guard binding.objectValue != nil else { throw wrong("metadata.binding", "an object") }
        guard let archV = binding["architecture"] else { throw TensorFileError(file: path, .missingField("metadata.binding.architecture")) }
        guard let arch = archV.stringValue, !arch.isEmpty else { throw wrong("metadata.binding.architecture", "a non-empty string") }
        guard let fpV = binding["targets_fingerprint"] else { throw TensorFileError(file: path, .missingField("metadata.binding.targets_fingerprint")) }
        guard let recordedFP = fpV.stringValue, isHex64(recordedFP) else { throw wrong("metadata.binding.targets_fingerprint", "64 lower-case hex digits") }
        var baseContent: String? = nil
        if let bc = binding["base_content"] {
            guard let s = bc.stringValue, isHex64(s) else { throw wrong("metadata.binding.base_content", "64 lower-case hex digits") }
            baseContent = s
        }
        // basis
        guard let basisV = md["basis"] else { throw TensorFileError(file: path, .missingField("metadata.basis")) }
        let basis: SubjectBasis
        if basisV["generator"]?.stringValue == Basis.generatorName, let seed = basisV["seed"]?.uint64Value {
            basis = .seed(seed)
        } else if basisV["generator"] == nil, basisV["stored"]?.boolValue == true {
            basis = .stored([:])
        } else {
            throw fail("unknown basis (expected generator '\(Basis.generatorName)' with a seed, or stored bases)")
        }
        // dtype, targets, info
        guard let dtV = md["dtype"] else { throw TensorFileError(file: path, .missingField("metadata.dtype")) }
        guard let dtS = dtV.stringValue, let dtype = SubjectDType(rawValue: dtS) else { throw wrong("metadata.dtype", "one of f16, f32, bf16, q8") }
        let factorDType = Self.tensorDType(dtype)
        guard let tV = md["targets"] else { throw TensorFileError(file: path, .missingField("metadata.targets")) }
        guard let targets = tV.stringValue, targets == "custom" || TargetSet(rawValue: targets) != nil else {
            throw wrong("metadata.targets", "one of " + (TargetSet.allCases.map(\.rawValue) + ["custom"]).joined(separator: ", "))
        }
        if let info = md["info"], info.objectValue == nil { throw wrong("metadata.info", "an object") }
        guard let layersV = md["layers"] else { throw TensorFileError(file: path, .missingField("metadata.layers")) }
        guard let rows = layersV.arrayValue else { throw wrong("metadata.layers", "an array") }

        // The layer table: names, shapes and terms, within the limits, before any tensor is read.
        struct Row { var target: TargetLayer; var lidb: (rank: Int, a: Int, b: Int, alpha: Float)?; var lora: (rank: Int, alpha: Float)? }
        var table: [Row] = []
        var names = Set<String>()
        func int(_ v: JSONValue?, _ field: String) throws(TensorFileError) -> Int {
            guard let v else { throw TensorFileError(file: path, .missingField(field)) }
            guard let x = v.int64Value else { throw wrong(field, "an integer") }
            return Int(x)
        }
        func number(_ v: JSONValue?, _ field: String) throws(TensorFileError) -> Double {
            guard let v else { throw TensorFileError(file: path, .missingField(field)) }
            guard case .number = v, let x = v.doubleValue else { throw wrong(field, "a number") }
            return x
        }
        for (i, row) in rows.enumerated() {
            let at = "metadata.layers[\(i)]"
            guard row.objectValue != nil else { throw wrong(at, "an object") }
            guard let nameV = row["name"] else { throw TensorFileError(file: path, .missingField(at + ".name")) }
            guard let name = nameV.stringValue, !name.isEmpty else { throw wrong(at + ".name", "a non-empty string") }
            guard names.insert(name).inserted else { throw fail("layer listed twice", name) }
            guard let shapeV = row["shape"] else { throw TensorFileError(file: path, .missingField(at + ".shape")) }
            guard let dims = shapeV.arrayValue, dims.count == 2, dims.allSatisfy(\.isInteger) else { throw wrong(at + ".shape", "[out, in], two integers") }
            guard let out = dims[0].int64Value, let inDim = dims[1].int64Value,
                  out >= 1, inDim >= 1, out <= Int64(SubjectLimits.maxDimension), inDim <= Int64(SubjectLimits.maxDimension) else {
                throw fail("shape [\(dims[0].serializedString), \(dims[1].serializedString)]: each dimension must be 1 … \(SubjectLimits.maxDimension)", name)
            }
            try Self.checkShape(out: Int(out), in: Int(inDim), layer: name, file: path)
            var r = Row(target: TargetLayer(name: name, out: Int(out), in: Int(inDim)), lidb: nil, lora: nil)
            if let t = row["lidb"] {
                guard t.objectValue != nil else { throw wrong(at + ".lidb", "an object") }
                let rank = try int(t["rank"], at + ".lidb.rank"), a = try int(t["a"], at + ".lidb.a"), b = try int(t["b"], at + ".lidb.b")
                let alpha = try number(t["alpha"], at + ".lidb.alpha")
                try Self.checkLiDB(rank: rank, a: a, b: b, alpha: alpha, out: r.target.out, in: r.target.inDim, layer: name, file: path)
                r.lidb = (rank, a, b, Float(alpha))
            }
            if let t = row["lora"] {
                guard t.objectValue != nil else { throw wrong(at + ".lora", "an object") }
                let rank = try int(t["rank"], at + ".lora.rank"), alpha = try number(t["alpha"], at + ".lora.alpha")
                try Self.checkLoRA(rank: rank, alpha: alpha, out: r.target.out, in: r.target.inDim, layer: name, file: path)
                r.lora = (rank, Float(alpha))
            }
            guard r.lidb != nil || r.lora != nil else { throw fail("layer has no term", name) }
            table.append(r)
        }
        let targetLayers = table.map(\.target)
        guard recordedFP == targetLayers.tableFingerprint else {
            throw fail("the layer table does not match its recorded targets fingerprint (\(recordedFP.prefix(16))…, computed \(targetLayers.tableFingerprint.prefix(16))…)")
        }

        // The tensors the table calls for, with their dtype and shape; nothing else may be present.
        var expected: [(name: String, dtype: DType, shape: [Int])] = []
        var downTotal = CheckedSize(), upTotal = CheckedSize(), params = CheckedSize()
        let lidbRows = table.filter { $0.lidb != nil }
        for r in table {
            if let t = r.lidb {
                downTotal.add(CheckedSize.product(t.rank, t.a)); upTotal.add(CheckedSize.product(t.b, t.rank))
                params.add(CheckedSize.product(t.rank, t.a)); params.add(CheckedSize.product(t.b, t.rank))
            }
            if let t = r.lora { params.add(CheckedSize.product(t.rank, r.target.inDim)); params.add(CheckedSize.product(r.target.out, t.rank)) }
        }
        guard let nDown = downTotal.value, let nUp = upTotal.value, let nParams = params.value,
              nDown <= UInt64(Int.max), nUp <= UInt64(Int.max), nParams <= UInt64(Int.max) else { throw fail("the layer table's sizes overflow 64 bits") }
        if !lidbRows.isEmpty {
            expected.append(("lidb.down_train", factorDType, [Int(nDown)]))
            expected.append(("lidb.up_train", factorDType, [Int(nUp)]))
            if dtype == .q8 {
                expected.append(("lidb.down_train.scale", .F32, [lidbRows.count]))
                expected.append(("lidb.up_train.scale", .F32, [lidbRows.count]))
            }
        }
        for r in table {
            guard let t = r.lora else { continue }
            expected.append(("lora.\(r.target.name).down", factorDType, [t.rank, r.target.inDim]))
            expected.append(("lora.\(r.target.name).up", factorDType, [r.target.out, t.rank]))
            if dtype == .q8 {
                expected.append(("lora.\(r.target.name).down.scale", .F32, [1]))
                expected.append(("lora.\(r.target.name).up.scale", .F32, [1]))
            }
        }
        if case .stored = basis {
            for r in table {
                guard let t = r.lidb else { continue }
                expected.append(("basis.\(r.target.name).down", .F32, [t.a, r.target.inDim]))
                expected.append(("basis.\(r.target.name).up", .F32, [r.target.out, t.b]))
            }
        }
        var wanted: [String: (DType, [Int])] = [:]
        for e in expected { wanted[e.name] = (e.dtype, e.shape) }
        for t in file.tensors where wanted[t.name] == nil {
            throw fail("unexpected tensor: the layer table and basis do not call for it", t.name)
        }
        for e in expected {
            guard let info = file.entry(e.name)?.info else { throw TensorFileError(file: path, tensor: e.name, .tensorNotFound) }
            guard info.dtype == e.dtype else {
                throw fail("is \(info.dtype.name), but " + (e.dtype == .F32 && e.name.hasPrefix("basis.") || e.name.hasSuffix(".scale")
                    ? "it must be F32" : "the metadata dtype \(dtype.rawValue) calls for \(e.dtype.name)"), e.name)
            }
            guard info.shape == e.shape else {
                throw fail("sizes do not match the layer table: the shape must be \(e.shape), found \(info.shape)", e.name)
            }
        }
        if let tp = md["trained_parameters"] {
            guard let x = tp.int64Value else { throw wrong("metadata.trained_parameters", "an integer") }
            guard x >= 0, UInt64(x) == nParams else { throw fail("trained_parameters is \(x), the layer table has \(nParams)") }
        }
        // Memory for the values: each tensor decoded, as f32, and its per-layer copies.
        var need = CheckedSize()
        for e in expected {
            guard let info = file.entry(e.name)?.info else { continue }
            need.add(UInt64(info.byteCount)); need.add(CheckedSize.product(8, info.elementCount))
        }
        try MemoryBudget.check(need.value, for: "reading the subject's factors", file: path)

        // Values: decoded to f32 (q8: q · scale, one binary32 product), all finite.
        func decode(_ name: String) throws(TensorFileError) -> [Float] {
            guard let e = file.entry(name) else { throw TensorFileError(file: path, tensor: name, .tensorNotFound) }
            let bytes = try file.tensorBytes(name)
            let n = e.info.elementCount
            var out = [Float](repeating: 0, count: n)
            if e.info.dtype == .I8 {
                for k in 0..<n { out[k] = Float(Int8(bitPattern: bytes.bytes[k])) }
            } else {
                out.withUnsafeMutableBytes { _ = DTypeConversion.convert(bytes.bytes, from: e.info.dtype, into: $0, to: .F32, count: n) }
                guard out.allSatisfy(\.isFinite) else { throw fail("factor values must be finite (found NaN or infinity)", name) }
            }
            return out
        }
        func scales(_ name: String) throws(TensorFileError) -> [Float]? {
            guard dtype == .q8 else { return nil }
            let s = try decode(name + ".scale")
            for x in s where !Self.isValidQ8Scale(x) {
                throw fail("q8 scales must be positive and at most \(Self.maxQ8Scale) (found \(x))", name + ".scale")
            }
            return s
        }
        func dequantised(_ q: ArraySlice<Float>, _ s: Float?) -> [Float] {
            guard let s else { return Array(q) }
            return q.map { $0 * s }
        }
        var layers: [SubjectLayer] = table.map { SubjectLayer(target: $0.target, lidb: nil, lora: nil) }
        if !lidbRows.isEmpty {
            let down = try decode("lidb.down_train"), up = try decode("lidb.up_train")
            let ds = try scales("lidb.down_train"), us = try scales("lidb.up_train")
            var di = 0, ui = 0, k = 0
            for i in table.indices {
                guard let t = table[i].lidb else { continue }
                let nd = t.rank * t.a, nu = t.b * t.rank
                layers[i].lidb = LiDBTerm(rank: t.rank, a: t.a, b: t.b, alpha: t.alpha,
                                          downTrain: dequantised(down[di..<(di + nd)], ds?[k]), upTrain: dequantised(up[ui..<(ui + nu)], us?[k]))
                di += nd; ui += nu; k += 1
            }
        }
        for i in table.indices {
            guard let t = table[i].lora else { continue }
            let n = table[i].target.name
            let down = try decode("lora.\(n).down"), up = try decode("lora.\(n).up")
            let ds = try scales("lora.\(n).down"), us = try scales("lora.\(n).up")
            layers[i].lora = LoRATerm(rank: t.rank, alpha: t.alpha, down: dequantised(down[...], ds?[0]), up: dequantised(up[...], us?[0]))
        }
        var finalBasis = basis
        if case .stored = basis {
            var stored: [String: StoredBasis] = [:]
            for l in layers where l.lidb != nil {
                let d = try decode("basis.\(l.target.name).down"), u = try decode("basis.\(l.target.name).up")
                stored[l.target.name] = StoredBasis(down: d, up: u)
            }
            finalBasis = .stored(stored)
        }
        self.init(layers: layers, basis: finalBasis, targets: targets, architecture: arch,
                  baseContent: baseContent, info: md["info"] ?? .object([]))
        self.source = path
    }
}

func isHex64(_ s: String) -> Bool {
    s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
}

func floatBytes(_ v: [Float]) -> [UInt8] {
    v.withUnsafeBytes { Array($0) }
}
