import Crypto
import TensorFile

/// One layer a subject changes: a 2-D weight of the base, `[out, in]`.
public struct TargetLayer: Equatable, Sendable {
    /// The base tensor's name without `.weight`.
    public var name: String
    public var out: Int
    public var inDim: Int
    public var weightName: String { name + ".weight" }
    public init(name: String, out: Int, in inDim: Int) {
        self.name = name
        self.out = out
        self.inDim = inDim
    }
}

/// Named sets of target layers (spec/subject.md §2).
public enum TargetSet: String, CaseIterable, Sendable {
    /// UNet self- and cross-attention q, k, v and output projections.
    case unetAttn = "unet-attn"
    /// Text-encoder self-attention q, k, v and output projections.
    case textAttn = "text-attn"
    /// Text-encoder MLP fc1 and fc2.
    case textMLP = "text-mlp"
    /// All three: HyperDreamBooth's configuration (200 layers on SD 1.5).
    case paper

    func contains(_ weight: String) -> Bool {
        switch self {
        case .unetAttn:
            guard weight.hasPrefix("unet."), weight.hasSuffix(".weight") else { return false }
            let stem = weight.dropLast(".weight".count)
            return [".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0",
                    ".attn2.to_q", ".attn2.to_k", ".attn2.to_v", ".attn2.to_out.0"].contains { stem.hasSuffix($0) }
        case .textAttn:
            guard weight.hasPrefix("text_encoder.text_model.encoder.layers."), weight.hasSuffix(".weight") else { return false }
            return [".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".self_attn.out_proj.weight"].contains { weight.hasSuffix($0) }
        case .textMLP:
            guard weight.hasPrefix("text_encoder.text_model.encoder.layers.") else { return false }
            return weight.hasSuffix(".mlp.fc1.weight") || weight.hasSuffix(".mlp.fc2.weight")
        case .paper:
            return TargetSet.unetAttn.contains(weight) || TargetSet.textAttn.contains(weight) || TargetSet.textMLP.contains(weight)
        }
    }

    /// The target layers of this set in a base's tensor table, in the base's order.
    public func layers(in tensors: [TensorInfo]) -> [TargetLayer] {
        tensors.compactMap { t in
            // Empty weights have nothing to adapt (and no basis could span them).
            guard t.shape.count == 2, t.shape[0] > 0, t.shape[1] > 0, contains(t.name) else { return nil }
            return TargetLayer(name: String(t.name.dropLast(".weight".count)), out: t.shape[0], in: t.shape[1])
        }
    }
}

extension Array where Element == TargetLayer {
    /// SHA-256 (hex) over `name \t out,in \n` in table order: what a subject binds to.
    public var tableFingerprint: String {
        var text = ""
        for l in self { text += l.name + "\t\(l.out),\(l.inDim)\n" }
        return hexDigest(SHA256.hash(data: [UInt8](text.utf8)))
    }
}

func hexDigest<D: Sequence>(_ d: D) -> String where D.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    for b in d { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
    return String(decoding: out, as: UTF8.self)
}
