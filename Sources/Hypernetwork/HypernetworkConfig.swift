import Checkpoint
import SubjectDelta
import TensorFile

/// A hypernetwork's configuration (spec/hypernetwork.md §3), read from a file's metadata or a
/// `hyper.json`, with every size checked before anything is allocated.
public struct HypernetworkConfig: Sendable {
    public static let schemaVersion: Int64 = 1

    public enum EncoderType: String, Sendable { case clipVision = "clip-vision", vit }
    public enum TokenSelection: String, Sendable { case all, `class`, patch }

    public struct Encoder: Sendable {
        public var type: EncoderType
        public var imageSize: Int, patchSize: Int, hiddenSize: Int, layers: Int, heads: Int, intermediateSize: Int
        public var activation: String
        public var eps: Float
        public var tokens: TokenSelection
        public var patchesPerSide: Int { imageSize / patchSize }
        /// Class token plus patches.
        public var sequence: Int { patchesPerSide * patchesPerSide + 1 }
        /// Image tokens handed to the decoder.
        public var outputTokens: Int {
            switch tokens { case .all: sequence; case .class: 1; case .patch: sequence - 1 }
        }
    }

    public struct Decoder: Sendable {
        public var hiddenSize: Int, layers: Int, heads: Int, intermediateSize: Int, iterations: Int, weightTokens: Int
        public var eps: Float
    }

    public struct SubjectParameters: Sendable {
        public var rank: Int, a: Int, b: Int
        public var alpha: Float
        public var basisSeed: UInt64
    }

    // Ranges of the numbers without a per-field range below (spec/hypernetwork.md §3).
    /// Largest `subject.alpha` (it must be positive).
    public static let maxAlpha: Double = 10_000
    /// Largest `subject.a` / `subject.b` (basis dimensions before clamping).
    public static let maxBasisDimension = 1024
    /// Largest `out` or `in` of a target layer, and of `out · in`.
    public static let maxLayerDimension = 65_536
    public static let maxLayerElements = 1 << 28
    /// Largest side of the preprocessing's `size` and `crop_size` (as the Imaging module's).
    public static let maxImageSide = 8192
    /// Largest resized image before the crop, in pixels (as the Imaging module's
    /// `ImagePreprocessing.maxResizedPixels`): an exact `size` beyond it is refused here.
    public static let maxResizedPixels = 64_000_000
    /// `image_mean` entries lie in ±this; `image_std` entries in [`minImageStd`, this].
    public static let maxImageStatistic: Double = 10
    public static let minImageStd: Double = 0.001

    public var encoder: Encoder
    public var decoder: Decoder
    public var subject: SubjectParameters
    /// The image preprocessing object (schema owned by the Imaging module), validated, kept as is.
    public var preprocessing: JSONValue
    public var targetSet: String
    public var architecture: String
    public var layers: [TargetLayer]
    public var json: JSONValue

    /// Per target layer: basis dimensions after clamping, and the sizes of down_train and up_train.
    public var layerDims: [(a: Int, b: Int, down: Int, up: Int)] {
        layers.map { l in
            let a = min(subject.a, l.inDim), b = min(subject.b, l.out)
            return (a, b, subject.rank * a, b * subject.rank)
        }
    }

    /// Length of a layer's padded estimate, the weight decoder's input: `r·a + b·r`.
    public var paddedSize: Int { subject.rank * subject.a + subject.b * subject.rank }

    public init(json: JSONValue, file: String) throws(HypernetworkError) {
        func bad(_ f: String, _ r: String) -> HypernetworkError { HypernetworkError(file: file, .invalidConfig(field: f, reason: r)) }
        guard case .object = json else { throw bad("(top level)", "must be an object") }
        guard let v = json["lidb_hypernetwork"] else { throw bad("lidb_hypernetwork", "missing") }
        guard v.int64Value == Self.schemaVersion else { throw HypernetworkError(file: file, .unsupportedSchema(v.serializedString)) }
        func obj(_ k: String) throws(HypernetworkError) -> JSONValue {
            guard let o = json[k], case .object = o else { throw bad(k, "missing or not an object") }
            return o
        }
        func int(_ o: JSONValue, _ section: String, _ k: String, _ range: ClosedRange<Int>) throws(HypernetworkError) -> Int {
            guard let v = o[k]?.int64Value else { throw bad("\(section).\(k)", "missing or not an integer") }
            guard v >= Int64(range.lowerBound), v <= Int64(range.upperBound) else {
                throw bad("\(section).\(k)", "\(v) is outside \(range.lowerBound)…\(range.upperBound)")
            }
            return Int(v)
        }
        func eps(_ o: JSONValue, _ section: String) throws(HypernetworkError) -> Float {
            guard let e = o["layer_norm_eps"]?.doubleValue, e.isFinite, e > 0, e < 1 else { throw bad("\(section).layer_norm_eps", "must be a number in (0, 1)") }
            return Float(e)
        }
        let e = try obj("encoder")
        guard let ts = e["type"]?.stringValue, let type = EncoderType(rawValue: ts) else { throw bad("encoder.type", "must be 'clip-vision' or 'vit'") }
        let act = e["hidden_act"]?.stringValue ?? ""
        guard ["gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh"].contains(act) else {
            throw bad("encoder.hidden_act", "'\(act)' is not gelu, quick_gelu, gelu_new or gelu_pytorch_tanh")
        }
        guard let tok = e["tokens"]?.stringValue, let tokens = TokenSelection(rawValue: tok) else { throw bad("encoder.tokens", "must be 'all', 'class' or 'patch'") }
        encoder = Encoder(type: type, imageSize: try int(e, "encoder", "image_size", 1...4096), patchSize: try int(e, "encoder", "patch_size", 1...4096),
                          hiddenSize: try int(e, "encoder", "hidden_size", 1...16384), layers: try int(e, "encoder", "num_hidden_layers", 1...256),
                          heads: try int(e, "encoder", "num_attention_heads", 1...1024), intermediateSize: try int(e, "encoder", "intermediate_size", 1...65536),
                          activation: act, eps: try eps(e, "encoder"), tokens: tokens)
        guard encoder.imageSize % encoder.patchSize == 0 else { throw bad("encoder.patch_size", "\(encoder.patchSize) does not divide image_size \(encoder.imageSize)") }
        guard encoder.hiddenSize % encoder.heads == 0 else { throw bad("encoder.num_attention_heads", "\(encoder.heads) heads do not divide hidden_size \(encoder.hiddenSize)") }
        guard encoder.sequence <= 16385 else { throw bad("encoder.patch_size", "more than 16384 patches") }
        if tokens == .patch && encoder.sequence < 2 { throw bad("encoder.tokens", "no patch tokens") }

        let d = try obj("decoder")
        decoder = Decoder(hiddenSize: try int(d, "decoder", "hidden_size", 1...16384), layers: try int(d, "decoder", "num_layers", 1...256),
                          heads: try int(d, "decoder", "num_heads", 1...1024), intermediateSize: try int(d, "decoder", "intermediate_size", 1...65536),
                          iterations: try int(d, "decoder", "iterations", 1...64), weightTokens: try int(d, "decoder", "weight_tokens", 1...100_000),
                          eps: try eps(d, "decoder"))
        guard decoder.hiddenSize % decoder.heads == 0 else { throw bad("decoder.num_heads", "\(decoder.heads) heads do not divide hidden_size \(decoder.hiddenSize)") }

        let s = try obj("subject")
        guard let alpha = s["alpha"]?.doubleValue, alpha.isFinite, alpha > 0, alpha <= Self.maxAlpha else {
            throw bad("subject.alpha", "missing or not a number in (0, \(Int(Self.maxAlpha))]")
        }
        guard s["basis"]?["generator"]?.stringValue == Basis.generatorName, let seed = s["basis"]?["seed"]?.uint64Value else {
            throw bad("subject.basis", "must be {\"generator\": \"\(Basis.generatorName)\", \"seed\": unsigned 64-bit integer}")
        }
        subject = SubjectParameters(rank: try int(s, "subject", "rank", 1...64), a: try int(s, "subject", "a", 1...Self.maxBasisDimension),
                                    b: try int(s, "subject", "b", 1...Self.maxBasisDimension), alpha: Float(alpha), basisSeed: seed)

        let t = try obj("targets")
        guard let set = t["set"]?.stringValue, TargetSet(rawValue: set) != nil || set == "custom" else {
            throw bad("targets.set", "must be one of \(TargetSet.allCases.map(\.rawValue).joined(separator: ", ")) or custom")
        }
        guard let arch = t["architecture"]?.stringValue, !arch.isEmpty else { throw bad("targets.architecture", "missing") }
        guard let rows = t["layers"]?.arrayValue, !rows.isEmpty else { throw bad("targets.layers", "missing or empty") }
        var layers: [TargetLayer] = []
        var names = Set<String>()
        for (i, row) in rows.enumerated() {
            guard let name = row["name"]?.stringValue, !name.isEmpty, let dims = row["shape"]?.arrayValue, dims.count == 2,
                  let out = dims[0].int64Value, let inDim = dims[1].int64Value else {
                throw bad("targets.layers[\(i)]", "needs a name and an integer shape [out, in]")
            }
            let side = Int64(Self.maxLayerDimension)
            guard out >= 1, inDim >= 1, out <= side, inDim <= side, out * inDim <= Int64(Self.maxLayerElements) else {
                throw bad("targets.layers[\(i)].shape", "[\(out), \(inDim)]: each side must be 1…\(side) and out·in at most \(Self.maxLayerElements)")
            }
            let shape = [out, inDim]
            guard names.insert(name).inserted else { throw bad("targets.layers[\(i)]", "layer '\(name)' listed twice") }
            layers.append(TargetLayer(name: name, out: Int(shape[0]), in: Int(shape[1])))
        }
        guard let fp = t["fingerprint"]?.stringValue else { throw bad("targets.fingerprint", "missing") }
        guard fp == layers.tableFingerprint else { throw bad("targets.fingerprint", "does not match the layer table (computed \(layers.tableFingerprint))") }
        guard decoder.weightTokens == layers.count else {
            throw bad("decoder.weight_tokens", "\(decoder.weightTokens) weight tokens (one head each) for a table of \(layers.count) layers")
        }
        targetSet = set
        architecture = arch
        self.layers = layers
        guard let p = json["preprocessing"] else { throw HypernetworkError(file: file, .invalidPreprocessing("missing")) }
        preprocessing = p
        self.json = json
        try Self.checkPreprocessing(p, imageSize: encoder.imageSize, file: file)
    }

    /// The preprocessing object: exactly the keys of its schema, and an output of the encoder's size.
    static func checkPreprocessing(_ p: JSONValue, imageSize: Int, file: String) throws(HypernetworkError) {
        func bad(_ r: String) -> HypernetworkError { HypernetworkError(file: file, .invalidPreprocessing(r)) }
        guard let pairs = p.objectValue else { throw bad("must be an object") }
        let want = ["size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std"]
        let keys = pairs.map(\.0)
        if let extra = keys.first(where: { !want.contains($0) }) { throw bad("unknown key '\(extra)'") }
        if let missing = want.first(where: { !keys.contains($0) }) { throw bad("missing key '\(missing)'") }
        let maxSide = Int64(Self.maxImageSide)
        func hw(_ v: JSONValue?, _ k: String) throws(HypernetworkError) -> (Int, Int) {
            guard let v, let o = v.objectValue, o.count == 2, let h = v["height"]?.int64Value, let w = v["width"]?.int64Value,
                  (1...maxSide).contains(h), (1...maxSide).contains(w) else {
                throw bad("'\(k)' must be {\"height\": H, \"width\": W} with integers 1…\(maxSide)")
            }
            return (Int(h), Int(w))
        }
        var out: (Int, Int)? = nil
        guard let size = p["size"] else { throw bad("missing key 'size'") }
        if let o = size.objectValue, o.count == 1, o[0].0 == "shortest_edge" {
            guard let n = size["shortest_edge"]?.int64Value, (1...maxSide).contains(n) else { throw bad("'size.shortest_edge' must be an integer 1…\(maxSide)") }
        } else {
            let (h, w) = try hw(size, "size")
            // Sides are at most 8192: the product cannot overflow. (A shortest_edge resize depends
            // on the photo: `ImagePreprocessing.apply` checks it.)
            guard h * w <= Self.maxResizedPixels else {
                throw bad("'size' \(h)×\(w) is \(h * w) pixels, more than the limit of \(Self.maxResizedPixels) for a resized image")
            }
            out = (h, w)
        }
        if let crop = p["crop_size"], crop != .null { out = try hw(crop, "crop_size") }
        guard let o = out else { throw bad("resizing to a shortest edge without a crop gives no fixed size") }
        guard o == (imageSize, imageSize) else { throw bad("output is \(o.0)×\(o.1), the encoder takes \(imageSize)×\(imageSize)") }
        guard let r = p["resample"]?.stringValue, r == "bicubic" || r == "bilinear" else { throw bad("'resample' must be \"bicubic\" or \"bilinear\"") }
        guard let f = p["rescale_factor"]?.doubleValue, abs(f * 255 - 1) < 1e-9 else { throw bad("'rescale_factor' must be 1/255") }
        let m = Self.maxImageStatistic
        for (k, range) in [("image_mean", -m...m), ("image_std", Self.minImageStd...m)] {
            guard let a = p[k]?.arrayValue, a.count == 3, a.allSatisfy({ range.contains($0.doubleValue ?? .nan) }) else {
                throw bad("'\(k)' must be 3 numbers in [\(range.lowerBound), \(range.upperBound)]")
            }
        }
    }

    /// Every tensor the configured model has, with its shape, in a fixed order.
    public var expectedTensors: [(String, [Int])] {
        let e = encoder, W = e.hiddenSize, I = e.intermediateSize, p = e.patchSize, S = e.sequence
        var t: [(String, [Int])] = []
        let ie = "image_encoder."
        switch e.type {
        case .clipVision:
            t += [(ie + "embeddings.class_embedding", [W]), (ie + "embeddings.patch_embedding.weight", [W, 3, p, p]),
                  (ie + "embeddings.position_embedding.weight", [S, W]), (ie + "pre_layrnorm.weight", [W]), (ie + "pre_layrnorm.bias", [W])]
            for i in 0..<e.layers {
                let l = ie + "encoder.layers.\(i)."
                for n in ["q_proj", "k_proj", "v_proj", "out_proj"] { t += [(l + "self_attn.\(n).weight", [W, W]), (l + "self_attn.\(n).bias", [W])] }
                for n in ["layer_norm1", "layer_norm2"] { t += [(l + n + ".weight", [W]), (l + n + ".bias", [W])] }
                t += [(l + "mlp.fc1.weight", [I, W]), (l + "mlp.fc1.bias", [I]), (l + "mlp.fc2.weight", [W, I]), (l + "mlp.fc2.bias", [W])]
            }
            t += [(ie + "post_layernorm.weight", [W]), (ie + "post_layernorm.bias", [W])]
        case .vit:
            t += [(ie + "embeddings.cls_token", [1, 1, W]), (ie + "embeddings.position_embeddings", [1, S, W]),
                  (ie + "embeddings.patch_embeddings.projection.weight", [W, 3, p, p]), (ie + "embeddings.patch_embeddings.projection.bias", [W])]
            for i in 0..<e.layers {
                let l = ie + "layers.\(i)."
                for n in ["q_proj", "k_proj", "v_proj", "o_proj"] { t += [(l + "attention.\(n).weight", [W, W]), (l + "attention.\(n).bias", [W])] }
                for n in ["layernorm_before", "layernorm_after"] { t += [(l + n + ".weight", [W]), (l + n + ".bias", [W])] }
                t += [(l + "mlp.fc1.weight", [I, W]), (l + "mlp.fc1.bias", [I]), (l + "mlp.fc2.weight", [W, I]), (l + "mlp.fc2.bias", [W])]
            }
            t += [(ie + "layernorm.weight", [W]), (ie + "layernorm.bias", [W])]
        }
        let D = decoder.hiddenSize, F = decoder.intermediateSize
        t += [("weight_pos", [layers.count, D]), ("image_proj.weight", [D, W]), ("image_proj.bias", [D]),
              ("weight_in.weight", [D, paddedSize]), ("weight_in.bias", [D])]
        for j in 0..<decoder.layers {
            let l = "decoder.layers.\(j)."
            for a in ["self_attn", "multihead_attn"] {
                t += [(l + a + ".in_proj_weight", [3 * D, D]), (l + a + ".in_proj_bias", [3 * D]), (l + a + ".out_proj.weight", [D, D]), (l + a + ".out_proj.bias", [D])]
            }
            t += [(l + "linear1.weight", [F, D]), (l + "linear1.bias", [F]), (l + "linear2.weight", [D, F]), (l + "linear2.bias", [D])]
            for n in ["norm1", "norm2", "norm3"] { t += [(l + n + ".weight", [D]), (l + n + ".bias", [D])] }
        }
        t += [("decoder.norm.weight", [D]), ("decoder.norm.bias", [D])]
        for (i, dims) in layerDims.enumerated() { t += [("heads.\(i).weight", [dims.down + dims.up, D]), ("heads.\(i).bias", [dims.down + dims.up])] }
        return t
    }

    /// Checks a tensor table against the configuration: every expected tensor present with its
    /// shape and a float type, nothing else.
    public func check(tensors: [TensorInfo], file: String) throws(HypernetworkError) {
        let expected = expectedTensors
        var have: [String: TensorInfo] = [:]
        for t in tensors { have[t.name] = t }
        let wanted = Set(expected.map(\.0))
        if let extra = tensors.first(where: { !wanted.contains($0.name) }) { throw HypernetworkError(file: file, .unexpectedTensor(extra.name)) }
        for (name, shape) in expected {
            guard let t = have[name] else { throw HypernetworkError(file: file, .missingTensor(name)) }
            guard t.shape == shape else { throw HypernetworkError(file: file, .wrongShape(tensor: name, expected: shape, actual: t.shape)) }
            guard [DType.F32, .F16, .BF16, .F64].contains(t.dtype) else { throw HypernetworkError(file: file, .unsupportedDType(tensor: name, dtype: t.dtype.name)) }
        }
    }
}
