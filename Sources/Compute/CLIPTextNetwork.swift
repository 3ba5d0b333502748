/// The shape of transformers' `CLIPTextModel`: plain numbers, validated by `validate()`.
public struct CLIPTextArchitecture: Sendable, Equatable {
    public var hidden: Int, heads: Int, intermediate: Int
    public var maxPositions: Int, vocab: Int, layers: Int
    public var activation: Activation
    public var eps: Float

    public init(hidden: Int, heads: Int, intermediate: Int, maxPositions: Int, vocab: Int, layers: Int, activation: Activation, eps: Float) {
        self.hidden = hidden; self.heads = heads; self.intermediate = intermediate
        self.maxPositions = maxPositions; self.vocab = vocab; self.layers = layers
        self.activation = activation; self.eps = eps
    }

    public static let maxHidden = 1 << 14, maxIntermediate = 1 << 16, maxPositionsLimit = 8192, maxVocab = 1_000_000, maxLayers = 256

    /// Throws a `ComputeError` naming the field unless every number is in range, the heads divide
    /// the hidden size and every weight's size fits BLAS's 32-bit range.
    public func validate() throws(ComputeError) {
        func fail(_ field: String, _ problem: String) -> ComputeError { ComputeError("CLIP text architecture: \(field) \(problem)") }
        guard (1...Self.maxHidden).contains(hidden) else { throw fail("hidden", "is \(hidden), expected 1…\(Self.maxHidden)") }
        guard heads >= 1, hidden % heads == 0 else { throw fail("heads", "is \(heads): must be positive and divide the hidden size \(hidden)") }
        guard (1...Self.maxIntermediate).contains(intermediate) else { throw fail("intermediate", "is \(intermediate), expected 1…\(Self.maxIntermediate)") }
        guard (1...Self.maxPositionsLimit).contains(maxPositions) else { throw fail("maxPositions", "is \(maxPositions), expected 1…\(Self.maxPositionsLimit)") }
        guard (1...Self.maxVocab).contains(vocab) else { throw fail("vocab", "is \(vocab), expected 1…\(Self.maxVocab)") }
        guard (1...Self.maxLayers).contains(layers) else { throw fail("layers", "is \(layers), expected 1…\(Self.maxLayers)") }
        guard eps.isFinite, eps > 0 else { throw fail("eps", "is \(eps), expected a finite number above 0") }
        for (name, count) in try weightSizes() { _ = try Size.blas(count, what: "text encoder weight \(name)") }
    }

    /// Every weight `CLIPTextNetwork` reads, named as transformers names them (`text_model.…`),
    /// with its number of values.
    public func expectedWeights() throws(ComputeError) -> [(name: String, count: Int)] {
        try validate()
        return try weightSizes()
    }

    func weightSizes() throws(ComputeError) -> [(name: String, count: Int)] {
        let h = hidden
        let what = "CLIP text architecture"
        var out: [(name: String, count: Int)] = [
            ("text_model.embeddings.token_embedding.weight", try Size.product(vocab, h, what: what)),
            ("text_model.embeddings.position_embedding.weight", try Size.product(maxPositions, h, what: what)),
        ]
        let hh = try Size.product(h, h, what: what), hi = try Size.product(h, intermediate, what: what)
        for i in 0..<layers {
            let l = "text_model.encoder.layers.\(i)."
            out += [(l + "layer_norm1.weight", h), (l + "layer_norm1.bias", h)]
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] { out += [(l + "self_attn." + n + ".weight", hh), (l + "self_attn." + n + ".bias", h)] }
            out += [(l + "layer_norm2.weight", h), (l + "layer_norm2.bias", h)]
            out += [(l + "mlp.fc1.weight", hi), (l + "mlp.fc1.bias", intermediate), (l + "mlp.fc2.weight", hi), (l + "mlp.fc2.bias", h)]
        }
        out += [("text_model.final_layer_norm.weight", h), ("text_model.final_layer_norm.bias", h)]
        return out
    }
}

/// transformers' `CLIPTextModel` composed of Compute's typed layers: token + position
/// embeddings, pre-norm encoder layers with a causal self-attention mask, the final layer norm
/// (spec/compute.md §7). The output is the last hidden state after the final layer norm (what SD
/// feeds the UNet). The backward accumulates the gradients of the delta terms attached to its
/// `Linear` layers; no gradient reaches the embeddings.
public struct CLIPTextNetwork: Sendable {
    public let architecture: CLIPTextArchitecture
    let tokenEmbedding: [Float], positionEmbedding: [Float]
    var layers: [CLIPEncoderLayer]
    let finalNorm: LayerNorm
    let index: LinearIndex<CLIPTextNetwork>

    /// Builds the network from `weights`, which returns a weight's values by its transformers
    /// name (`text_model.encoder.layers.0.self_attn.q_proj.weight`, without `text_encoder.`).
    /// Throws a `ComputeError` for an invalid architecture or a weight of another size (naming
    /// it), and whatever `weights` throws.
    public init(architecture arch: CLIPTextArchitecture, weights: (String) throws -> [Float]) throws {
        let expected = try arch.expectedWeights()
        _ = Parallel.allocatorConfigured  // activations are freed and reallocated every step
        var sizes: [String: Int] = [:]
        for (n, c) in expected { sizes[n] = c }
        func load(_ name: String) throws -> [Float] {
            let v = try weights(name)
            let want = sizes[name] ?? 0
            guard v.count == want else { throw ComputeError("text encoder weight \(name): \(v.count) values, expected \(want)") }
            return v
        }
        func linear(_ n: String, out: Int, in inDim: Int) throws -> Linear {
            try Linear(weight: try load(n + ".weight"), bias: try load(n + ".bias"), out: out, in: inDim)
        }
        func layerNorm(_ n: String) throws -> LayerNorm {
            try LayerNorm(channels: arch.hidden, eps: arch.eps, weight: try load(n + ".weight"), bias: try load(n + ".bias"))
        }
        let h = arch.hidden
        architecture = arch
        tokenEmbedding = try load("text_model.embeddings.token_embedding.weight")
        positionEmbedding = try load("text_model.embeddings.position_embedding.weight")
        var built: [CLIPEncoderLayer] = []
        var table: [(String, WritableKeyPath<CLIPTextNetwork, Linear>)] = []
        for i in 0..<arch.layers {
            let l = "text_model.encoder.layers.\(i)."
            let attention = try Attention(toQ: try linear(l + "self_attn.q_proj", out: h, in: h), toK: try linear(l + "self_attn.k_proj", out: h, in: h),
                                          toV: try linear(l + "self_attn.v_proj", out: h, in: h), toOut: try linear(l + "self_attn.out_proj", out: h, in: h),
                                          heads: arch.heads, causal: true)
            built.append(try CLIPEncoderLayer(layerNorm1: try layerNorm(l + "layer_norm1"), selfAttention: attention,
                                              layerNorm2: try layerNorm(l + "layer_norm2"),
                                              fc1: try linear(l + "mlp.fc1", out: arch.intermediate, in: h),
                                              fc2: try linear(l + "mlp.fc2", out: h, in: arch.intermediate), activation: arch.activation))
            let layer: WritableKeyPath<CLIPTextNetwork, CLIPEncoderLayer> = \CLIPTextNetwork.layers[i]
            let a: WritableKeyPath<CLIPTextNetwork, Attention> = layer.appending(path: \CLIPEncoderLayer.selfAttention)
            let projections: [(String, WritableKeyPath<Attention, Linear>)] = [("q_proj", \Attention.toQ), ("k_proj", \Attention.toK),
                                                                               ("v_proj", \Attention.toV), ("out_proj", \Attention.toOut)]
            for (n, p) in projections { table.append((l + "self_attn." + n, a.appending(path: p))) }
            table.append((l + "mlp.fc1", layer.appending(path: \CLIPEncoderLayer.fc1)))
            table.append((l + "mlp.fc2", layer.appending(path: \CLIPEncoderLayer.fc2)))
        }
        layers = built
        finalNorm = try layerNorm("text_model.final_layer_norm")
        index = LinearIndex(table)
    }

    /// The names of every `Linear` layer (`text_model.encoder.layers.N.self_attn.q_proj`, …), in order.
    public var linearNames: [String] { index.names }

    public func linear(named name: String) -> Linear? { index.paths[name].map { self[keyPath: $0] } }

    /// Adds `term` to the adapter slot of the layer named `name`; throws for an unknown name or a
    /// term of another shape.
    public mutating func attach(_ term: any DeltaTerm, to name: String) throws(ComputeError) {
        guard let path = index.paths[name] else { throw ComputeError("text encoder: no linear layer named '\(name)'") }
        do { try self[keyPath: path].attach(term) } catch { throw ComputeError("text encoder layer \(name): \(error.message)") }
    }

    public mutating func detachAllTerms() {
        for p in index.paths.values { self[keyPath: p].detachTerms() }
    }

    /// Merges `terms` into the weight of the layer named `name` (`Linear.addWeightDeltas`).
    /// Throws for an unknown name, a term of another shape or a result that is not finite,
    /// changing nothing.
    public mutating func addWeightDeltas(_ terms: [any DeltaTerm], to name: String, sign: Float = 1) throws(ComputeError) {
        guard let path = index.paths[name] else { throw ComputeError("text encoder: no linear layer named '\(name)'") }
        do { try self[keyPath: path].addWeightDeltas(terms, sign: sign) } catch { throw ComputeError("text encoder layer \(name): \(error.message)") }
    }

    /// `token_embedding[id] + position_embedding[position]` per token.
    func embed(_ ids: [Int]) throws(ComputeError) -> Matrix {
        let a = architecture
        guard !ids.isEmpty, ids.count <= a.maxPositions else {
            throw ComputeError("text encoder: \(ids.count) tokens, expected 1…\(a.maxPositions)")
        }
        let h = a.hidden
        var x = Matrix(uninitializedRows: ids.count, cols: h)
        for (t, id) in ids.enumerated() {
            guard id >= 0, id < a.vocab else { throw ComputeError("text encoder: token id \(id) at position \(t) is outside the vocabulary (\(a.vocab))") }
            tokenEmbedding.withBase { tb in positionEmbedding.withBase { pb in x.data.withMutableBase { xb in
                for j in 0..<h { xb[t * h + j] = tb[id * h + j] + pb[t * h + j] }
            } } }
        }
        return x
    }

    /// The last hidden state after the final layer norm, `[tokens × hidden]`.
    public func forward(ids: [Int]) throws(ComputeError) -> Matrix {
        var x = try embed(ids)
        for layer in layers { x = try layer.forward(x) }
        return try finalNorm.forward(x)
    }

    /// transformers' `hidden_states[k]`: the input of layer `k` (the embeddings for 0, the last
    /// layer's output for `layers`), without the final layer norm. `k` is 0…`layers`.
    public func hiddenState(ids: [Int], layer k: Int) throws(ComputeError) -> Matrix {
        guard (0...architecture.layers).contains(k) else {
            throw ComputeError("text encoder: hidden state \(k), expected 0…\(architecture.layers)")
        }
        var x = try embed(ids)
        for layer in layers.prefix(k) { x = try layer.forward(x) }
        return x
    }

    /// Accumulates the factor gradients of every trainable delta term for `∂loss/∂output` =
    /// `gradOutput` `[tokens × hidden]`. One forward keeps each layer's input; the layers then
    /// run backward in reverse, each recomputing its intermediates.
    public func backward(gradOutput: Matrix, ids: [Int]) throws(ComputeError) {
        try gradOutput.validate("text encoder output gradient", cols: architecture.hidden)
        guard gradOutput.rows == ids.count else {
            throw ComputeError("text encoder output gradient: \(gradOutput.rows) rows for \(ids.count) tokens")
        }
        var inputs: [Matrix] = []
        var x = try embed(ids)
        for layer in layers {
            inputs.append(x)
            x = try layer.forward(x)
        }
        var g = try finalNorm.backward(gradOutput: gradOutput, input: x)
        for (layer, input) in zip(layers, inputs).reversed() {
            g = try layer.backward(gradOutput: g, input: input)
        }
    }
}
