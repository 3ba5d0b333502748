import Checkpoint
import Hypernetwork
import Imaging
import SubjectDelta
import TensorFile

/// (c) Hypernetwork configs: either the tiny ViT fixture's weights under a config with hostile
/// edits, or a config built from the choices with tensors synthesised to fit it (so configs the
/// reader accepts also reach the forward pass). When accepted: the personalize path — preprocess a
/// tiny image as the config says, predict, bind to the tiny base, write and read the subject.
enum HyperFuzz {
    static func run(_ c: inout Choices, _ fx: FuzzFixtures) {
        let path = fx.path("h.lidb")
        let written = c.bool() ? synthesised(&c, fx, to: path) : edited(&c, fx, to: path)
        guard written else { trace("hypernetwork: not written"); return }
        let h: Hypernetwork
        do { h = try Hypernetwork(path: path) } catch { trace("hypernetwork: refused: \(error)"); return }
        trace("hypernetwork: accepted")
        personalize(h, &c, fx)
    }

    // MARK: The fixture's weights, edited config

    static let paths: [[String]] = [
        ["lidb_hypernetwork"],
        ["encoder", "type"], ["encoder", "image_size"], ["encoder", "patch_size"], ["encoder", "hidden_size"], ["encoder", "num_hidden_layers"],
        ["encoder", "num_attention_heads"], ["encoder", "intermediate_size"], ["encoder", "hidden_act"], ["encoder", "layer_norm_eps"], ["encoder", "tokens"],
        ["decoder", "hidden_size"], ["decoder", "num_layers"], ["decoder", "num_heads"], ["decoder", "intermediate_size"], ["decoder", "iterations"],
        ["decoder", "layer_norm_eps"], ["decoder", "weight_tokens"],
        ["subject", "rank"], ["subject", "a"], ["subject", "b"], ["subject", "alpha"], ["subject", "basis", "seed"], ["subject", "basis", "generator"],
        ["targets", "set"], ["targets", "architecture"], ["targets", "fingerprint"],
        ["preprocessing", "size"], ["preprocessing", "size", "shortest_edge"], ["preprocessing", "size", "height"], ["preprocessing", "crop_size"],
        ["preprocessing", "crop_size", "height"], ["preprocessing", "crop_size", "width"], ["preprocessing", "resample"],
        ["preprocessing", "rescale_factor"], ["preprocessing", "image_mean"], ["preprocessing", "image_std"],
    ]

    static func edited(_ c: inout Choices, _ fx: FuzzFixtures, to path: String) -> Bool {
        var config = fx.hyperConfig
        for _ in 0..<(1 + c.int(0...2)) {
            if c.rarely(6) {
                // A layer's shape, with the fingerprint recomputed so the table itself is accepted.
                guard var rows = config["targets"]?["layers"]?.arrayValue, !rows.isEmpty else { continue }
                let i = c.int(0...255) % rows.count
                let shape = rows[i]["shape"]?.arrayValue ?? []
                rows[i] = rows[i].setting("shape", .array(shape.map { Hostile.integer(&c, Int($0.int64Value ?? 1)) }))
                config = config.setting(path: ["targets", "layers"], .array(rows))
                config = config.setting(path: ["targets", "fingerprint"], .string(table(rows).tableFingerprint))
                continue
            }
            let p = c.pick(paths)
            let current = config.at(p)
            let v: JSONValue
            if let cur = current, cur.isInteger, let n = cur.int64Value { v = Hostile.integer(&c, Int(n)) }
            else if let d = current?.doubleValue { v = Hostile.double(&c, d) }
            else if let a = current?.arrayValue { v = .array(a.map { Hostile.double(&c, $0.doubleValue ?? 0) }) }
            else { v = Hostile.json(&c) }
            config = config.setting(path: p, v)
        }
        trace("hypernetwork: edited config " + config.serializedString.prefix(1500))
        do { try LidbWriter.write(to: path, kind: "hypernetwork", metadata: config, tensors: fx.hyperTensors) } catch { return false }
        return true
    }

    static func table(_ rows: [JSONValue]) -> [TargetLayer] {
        rows.compactMap { r in
            guard let n = r["name"]?.stringValue, let s = r["shape"]?.arrayValue?.compactMap(\.int64Value), s.count == 2 else { return nil }
            return TargetLayer(name: n, out: Int(s[0]), in: Int(s[1]))
        }
    }

    // MARK: A config from the choices, tensors to fit

    static func synthesised(_ c: inout Choices, _ fx: FuzzFixtures, to path: String) -> Bool {
        func small(_ consistent: Int) -> JSONValue { Hostile.integer(&c, consistent) }
        let image = c.pick([8, 4, 16, 1, 2]), patch = c.pick([4, 8, 2, 1])
        let width = c.pick([8, 4, 16, 2]), heads = c.pick([2, 1, 4])
        let count = 1 + c.int(0...2), offset = c.int(0...255)
        var layers: [TargetLayer] = (0..<count).map { fx.targets[(offset + $0) % fx.targets.count] }
        if c.rarely(8) { layers[0].out = 1 + c.int(0...255); layers[0].inDim = 1 + c.int(0...255) }
        let rows: [JSONValue] = layers.map { .object([("name", .string($0.name)), ("shape", .array([small($0.out), small($0.inDim)]))]) }
        // Preprocessing sizes: the resize before the crop is sized by the image and this side.
        let preSide = c.rarely(6) ? c.pick([8192, 4096, 8193, 1, 0, 1 << 31]) : image
        let config = JSONValue.object([
            ("lidb_hypernetwork", .int(1)),
            ("encoder", .object([("type", .string(c.pick(["clip-vision", "vit"]))), ("image_size", small(image)), ("patch_size", small(patch)),
                                 ("hidden_size", small(width)), ("num_hidden_layers", small(1)), ("num_attention_heads", small(heads)),
                                 ("intermediate_size", small(2 * width)), ("hidden_act", .string(c.pick(["gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh"]))),
                                 ("layer_norm_eps", Hostile.double(&c, 1e-5)), ("tokens", .string(c.pick(["all", "class", "patch"])))])),
            ("decoder", .object([("hidden_size", small(width)), ("num_layers", small(1)), ("num_heads", small(heads)), ("intermediate_size", small(2 * width)),
                                 ("iterations", small(1 + c.int(0...2))), ("layer_norm_eps", Hostile.double(&c, 1e-5)), ("weight_tokens", small(count))])),
            ("preprocessing", .object([
                ("size", c.bool() ? .object([("shortest_edge", .int(preSide))]) : .object([("height", .int(preSide)), ("width", .int(preSide))])),
                ("crop_size", c.rarely(8) ? .null : .object([("height", .int(image)), ("width", .int(image))])),
                ("resample", .string(c.pick(["bicubic", "bilinear"]))), ("rescale_factor", .double(1.0 / 255)),
                ("image_mean", .array([Hostile.double(&c, 0.5), .double(0.5), .double(0.5)])),
                ("image_std", .array([Hostile.double(&c, 0.5), .double(0.5), .double(0.5)])),
            ])),
            ("subject", .object([("rank", small(1 + c.int(0...1))), ("a", small(1 + c.int(0...7))), ("b", small(1 + c.int(0...7))),
                                 ("alpha", Hostile.double(&c, 1)),
                                 ("basis", .object([("generator", .string(Basis.generatorName)), ("seed", .int(c.u16()))]))])),
            ("targets", .object([("set", .string("custom")), ("architecture", .string("sd1")),
                                 ("fingerprint", .string(c.rarely(16) ? String(repeating: "0", count: 64) : table(rows).tableFingerprint)),
                                 ("layers", .array(rows))])),
        ])
        trace("hypernetwork: synthesised config " + config.serializedString)
        let cfg: HypernetworkConfig
        do { cfg = try HypernetworkConfig(json: config, file: path) } catch { trace("hypernetwork: config refused: \(error)"); return false }
        // Tensors exactly as the config expects them (when small enough to make here).
        let expected = cfg.expectedTensors
        var total = 0
        for (_, shape) in expected {
            var n = 1
            for d in shape {
                let (m, o) = n.multipliedReportingOverflow(by: d)
                guard !o else { return false }
                n = m
            }
            total += n
            guard total <= 1 << 18 else { return false }
        }
        let dtype = c.pick([DType.F32, .F16, .BF16, .F64])
        var fill = Filler(&c, count: total)
        let all = fill.values(total)
        var k = 0
        var tensors: [TensorSource] = []
        for (name, shape) in expected {
            let n = shape.reduce(1, *)
            let v = Array(all[k..<(k + n)])
            k += n
            let bytes: [UInt8]
            if dtype == .F64 { bytes = v.map(Double.init).withUnsafeBytes { Array($0) } } else { bytes = encode(v, as: dtype) }
            tensors.append(.array(TensorInfo(name: name, dtype: dtype, shape: shape), bytes))
        }
        do { try LidbWriter.write(to: path, kind: "hypernetwork", metadata: config, tensors: tensors) } catch { return false }
        return true
    }

    // MARK: Using an accepted hypernetwork

    static func personalize(_ h: Hypernetwork, _ c: inout Choices, _ fx: FuzzFixtures) {
        let pre: ImagePreprocessing
        do { pre = try ImagePreprocessing(json: h.config.preprocessing, file: h.path) } catch { trace("preprocessing: \(error)"); return }
        let (w, hgt) = (1 + c.int(0...47), 1 + c.int(0...47))
        var f = Filler(&c, count: 0)
        let img = RGBImage(width: w, height: hgt, pixels: (0..<(w * hgt * 3)).map { _ in UInt8(truncatingIfNeeded: Int((f.next() + 0.5) * 255)) })
        trace("preprocessing: \(w)×\(hgt) image to \(pre.outputWidth)×\(pre.outputHeight)")
        let pixels: [Float]
        do { pixels = try pre.apply(img) } catch { trace("preprocessing: \(error)"); return }
        oracle("preprocess-size", pixels.count == 3 * pre.outputHeight * pre.outputWidth, "preprocessing returned the wrong number of values")
        let predictions: [LayerPrediction]
        do { predictions = try h.predict(pixels: pixels) } catch { trace("predict: \(error)"); return }
        let subject: Subject
        do {
            subject = try h.subject(from: predictions, for: fx.base,
                                    provenance: SubjectProvenance(name: "fuzz", imageSHA256: String(repeating: "0", count: 64)))
        } catch { trace("subject from predictions: \(error)"); return }
        trace("subject from predictions: made")
        guard c.bool() else { return }
        let out = fx.path("hs.lidb")
        do { try subject.write(to: out, dtype: c.pick(SubjectDType.allCases)) } catch { expectAbsent(out, "Subject.write"); return }
        let back: Subject
        do { back = try Subject(path: out) } catch { oracle("hyper-subject-reads", false, "a subject made by the hypernetwork does not read back: \(error)"); return }
        SubjectFuzz.checkReaderInvariants(back)
        if c.rarely(4) { SubjectFuzz.exercise(back, &c, fx, path: out) }
    }
}

extension JSONValue {
    func at(_ path: [String]) -> JSONValue? {
        var v: JSONValue? = self
        for k in path { v = v?[k] }
        return v
    }

    /// `self` with the value at `path` (object keys) replaced, creating objects on the way.
    func setting(path: [String], _ value: JSONValue) -> JSONValue {
        guard let first = path.first else { return value }
        let inner = self[first].flatMap { $0.objectValue != nil ? $0 : nil } ?? .object([])
        return setting(first, inner.setting(path: Array(path.dropFirst()), value))
    }
}
