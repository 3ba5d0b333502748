import Checkpoint
import Compute
import TensorFile

/// The pipeline's text encoder: transformers' `CLIPTextModel` as `Compute.CLIPTextNetwork`
/// (SD 1.x: CLIP ViT-L, quick_gelu; SD 2.x: OpenCLIP ViT-H's first 23 layers, gelu), configured
/// from the base's `text_encoder` config, plus what the pipeline needs around it: its weights
/// can be released between generations (the next `encode` loads them again from the base and
/// re-applies the merges and attached terms, so the result is the same), and errors are
/// `TensorFileError`s.
public final class CLIPTextEncoder {
    public let architecture: CLIPTextArchitecture
    public var hidden: Int { architecture.hidden }
    public var heads: Int { architecture.heads }
    public var intermediate: Int { architecture.intermediate }
    public var maxPositions: Int { architecture.maxPositions }
    public var vocab: Int { architecture.vocab }
    public var layerCount: Int { architecture.layers }
    /// `hidden_act` as the config names it.
    public let activation: String
    public var eps: Float { architecture.eps }
    let base: BaseModel
    /// The network while its weights are loaded.
    var network: CLIPTextNetwork?
    /// Merges (terms, sign) per layer in the order they were made, replayed after a reload.
    private var merges: [(layer: String, terms: [any DeltaTerm], sign: Float)] = []
    /// Terms attached live, re-attached after a reload.
    private var attached: [(layer: String, term: any DeltaTerm)] = []

    public init(base: BaseModel) throws(TensorFileError) {
        self.base = base
        let net = try CLIPTextNetwork(base: base)
        architecture = net.architecture
        activation = try TextEncoderConfig(base: base).activation
        network = net
    }

    /// The names of the layers that take delta terms (`text_model.encoder.layers.N.self_attn.q_proj`, …).
    public var linearNames: [String] { (try? loaded().linearNames) ?? [] }

    func loaded() throws(TensorFileError) -> CLIPTextNetwork {
        if let network { return network }
        var net = try CLIPTextNetwork(base: base)
        for m in merges { try Self.mapped { () throws(ComputeError) in try net.addWeightDeltas(m.terms, to: m.layer, sign: m.sign) } }
        for a in attached { try Self.mapped { () throws(ComputeError) in try net.attach(a.term, to: a.layer) } }
        network = net
        return net
    }

    static func mapped<R>(_ body: () throws(ComputeError) -> R) throws(TensorFileError) -> R {
        do { return try body() } catch { throw TensorFileError(file: "text encoder", .invalidArgument(error.message)) }
    }

    /// Merges `terms` into the weight of `layer` (a name of `linearNames`): `W ← round(W + sign · Σ ΔW)`.
    /// Throws for an unknown layer, a term of another shape or a result that is not finite,
    /// changing nothing.
    public func addWeightDeltas(_ terms: [any DeltaTerm], to layer: String, sign: Float = 1) throws(TensorFileError) {
        var net = try loaded()
        network = nil  // the network is changed in place
        defer { network = net }
        try Self.mapped { () throws(ComputeError) in try net.addWeightDeltas(terms, to: layer, sign: sign) }
        merges.append((layer, terms, sign))
    }

    /// The `[out, in]` of the layer named `layer`, or nil when it has none.
    public func layerShape(_ layer: String) -> (out: Int, in: Int)? {
        guard let l = (try? loaded())?.linear(named: layer) else { return nil }
        return (l.outFeatures, l.inFeatures)
    }

    /// Attaches a term to the adapter slot of `layer` (applied live by every `encode`).
    public func attach(_ term: any DeltaTerm, to layer: String) throws(TensorFileError) {
        var net = try loaded()
        network = nil
        defer { network = net }
        try Self.mapped { () throws(ComputeError) in try net.attach(term, to: layer) }
        attached.append((layer, term))
    }

    /// Removes every attached term (merges stay).
    public func detachAllTerms() {
        network?.detachAllTerms()
        attached = []
    }

    /// Frees the weights until the next `encode`, which loads them from the base again: a
    /// pipeline needs the text encoder once per generation, for well under a second, and its
    /// weights need not stay resident next to the UNet's and the VAE's.
    public func releaseWeights() { network = nil }

    public var released: Bool { network == nil }

    /// Encodes one sequence of token ids (1 … `max_position_embeddings`, each within the
    /// vocabulary). `hiddenState` k returns transformers' `hidden_states[k]` (the input of layer
    /// k, without the final norm); nil returns the last layer after the final layer norm (what SD
    /// uses). `[tokens × hidden]` row-major.
    public func encode(_ ids: [Int], hiddenState: Int? = nil) throws(TensorFileError) -> [Float] {
        guard !ids.isEmpty, ids.count <= maxPositions else {
            throw TensorFileError(file: "text encoder", .invalidArgument("\(ids.count) tokens, expected 1…\(maxPositions)"))
        }
        let net = try loaded()
        return try Self.mapped { () throws(ComputeError) in
            if let k = hiddenState { return try net.hiddenState(ids: ids, layer: k).data }
            return try net.forward(ids: ids).data
        }
    }
}
