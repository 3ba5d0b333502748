import Checkpoint
import Compute
import TensorFile

/// The pipeline's UNet: `Compute.UNetNetwork` built from the base, plus what the pipeline needs
/// around it — its weights can be loaded late and released between uses. The next use loads them
/// from the base again and replays the merges and attached terms in the order they were made, so
/// the network is the same bit for bit. Delta terms are checked against the layer shapes of the
/// architecture (`UNetArchitecture.linearShapes`), which need no weight; a merge made while the
/// weights are not loaded is checked for a finite result when they are.
public final class PipelineUNet {
    public let architecture: UNetArchitecture
    public let residency: WeightResidency
    let base: BaseModel
    private let shapes: [String: (out: Int, in: Int)]
    /// The network while its weights are loaded.
    private var network: UNetNetwork?
    private var merges: [(layer: String, terms: [any DeltaTerm], sign: Float)] = []
    private var attached: [(layer: String, term: any DeltaTerm)] = []

    /// `load: false` only reads the configs and the tensor table; the weights are loaded by the
    /// first use.
    public init(base: BaseModel, residency: WeightResidency, load: Bool = true) throws(TensorFileError) {
        self.base = base
        self.residency = residency
        let arch = try UNetNetwork.architecture(base: base)
        do { shapes = try arch.linearShapes() } catch {
            throw TensorFileError(file: base.file.path, .invalidArgument("UNet: \(error.message)"))
        }
        architecture = arch
        if load { network = try UNetNetwork(base: base, residency: residency) }
    }

    /// Whether the weights are in memory.
    public var isLoaded: Bool { network != nil }

    /// The network, loading the weights (and replaying merges and attachments) when released.
    public func loaded() throws(TensorFileError) -> UNetNetwork {
        if let network { return network }
        var net = try UNetNetwork(base: base, residency: residency)
        for m in merges {
            do { try net.addWeightDeltas(m.terms, to: m.layer, sign: m.sign) } catch {
                throw TensorFileError(file: base.file.path, tensor: "unet." + m.layer, .invalidArgument(error.message + "; lower the weight"))
            }
        }
        for a in attached {
            do { try net.attach(a.term, to: a.layer) } catch {
                throw TensorFileError(file: base.file.path, tensor: "unet." + a.layer, .invalidArgument(error.message))
            }
        }
        network = net
        return net
    }

    /// Frees the weights until the next use, which loads them from the base again.
    public func releaseWeights() { network = nil }

    /// The names of the layers that take delta terms.
    public var linearNames: [String] { network?.linearNames ?? shapes.keys.sorted() }

    /// The `[out, in]` of the layer named `name`, or nil when the UNet has no linear layer of that name.
    public func layerShape(_ name: String) -> (out: Int, in: Int)? { shapes[name] }

    /// The loaded `Linear` named `name` (loading the weights when released), or nil.
    public func linear(named name: String) -> Linear? { (try? loaded())?.linear(named: name) }

    private func check(_ terms: [any DeltaTerm], _ name: String) throws(ComputeError) {
        guard let s = shapes[name] else { throw ComputeError("UNet: no linear layer named '\(name)'") }
        for t in terms where t.outFeatures != s.out || t.inFeatures != s.in {
            throw ComputeError("UNet layer \(name): a term of [\(t.outFeatures), \(t.inFeatures)] for a layer of [\(s.out), \(s.in)]")
        }
    }

    /// Merges `terms` into the weight of `name` (`UNetNetwork.addWeightDeltas`). Loaded: applied
    /// now, changing nothing when it throws. Released: checked for shape now, applied at the next load.
    public func addWeightDeltas(_ terms: [any DeltaTerm], to name: String, sign: Float = 1) throws(ComputeError) {
        try check(terms, name)
        if var net = network {
            network = nil
            defer { network = net }
            try net.addWeightDeltas(terms, to: name, sign: sign)
        }
        merges.append((name, terms, sign))
    }

    /// Attaches `term` to the adapter slot of `name` (applied live by every evaluation).
    public func attach(_ term: any DeltaTerm, to name: String) throws(ComputeError) {
        try check([term], name)
        if var net = network {
            network = nil
            defer { network = net }
            try net.attach(term, to: name)
        }
        attached.append((name, term))
    }

    /// Removes every attached term (merges stay).
    public func detachAllTerms() {
        network?.detachAllTerms()
        attached = []
    }
}
