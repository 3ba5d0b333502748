import Compute
import Checkpoint
import Dispatch
import SubjectDelta
import TensorFile

/// Weights of a base, read as f32 on demand (each tensor converted once from the base's dtype).
public final class WeightLoader {
    public let base: BaseModel
    public init(base: BaseModel) { self.base = base }

    public func f32(_ name: String) throws(TensorFileError) -> [Float] {
        guard let e = base.file.entry(name) else { throw TensorFileError(file: base.file.path, tensor: name, .tensorNotFound) }
        guard DTypeConversion.canConvert(from: e.info.dtype, to: .F32) else {
            throw TensorFileError(file: base.file.path, tensor: name, .unsupportedConversion(from: e.info.dtype.name, to: "F32"))
        }
        let b = try base.file.tensorBytes(name)
        let n = e.info.elementCount
        let out = [Float](unsafeUninitializedCapacity: n) { buf, count in
            _ = DTypeConversion.convert(b.bytes, from: e.info.dtype, into: UnsafeMutableRawBufferPointer(buf), to: .F32, count: n)
            count = n
        }
        b.releasePages()  // the f32 copy is what stays resident, not the mapped file too
        return out
    }

    public func shape(_ name: String) -> [Int]? { base.file.entry(name)?.info.shape }

    /// The F16 tensors under `prefix` with at least `minimumCount` values, as F16 bit patterns
    /// keyed without the prefix (copied out of the mapped file, whose pages are then released).
    func halfWeights(prefix: String, minimumCount: Int) throws(TensorFileError) -> [String: [UInt16]] {
        var out: [String: [UInt16]] = [:]
        for e in base.file.tensors where e.name.hasPrefix(prefix) && e.dtype == .F16 && e.elementCount >= minimumCount {
            let b = try base.file.tensorBytes(e.name)
            let n = e.elementCount
            out[String(e.name.dropFirst(prefix.count))] = [UInt16](unsafeUninitializedCapacity: n) { buf, count in
                UnsafeMutableRawBufferPointer(buf).copyMemory(from: UnsafeRawBufferPointer(rebasing: b.bytes[0..<(2 * n)]))
                count = n
            }
            b.releasePages()
        }
        return out
    }

    /// The f32 weights of every tensor whose name starts with `prefix`, keyed without it;
    /// converted on all cores (the conversion and the kernel's zeroing of fresh pages dominate a
    /// model's load time). The first failure (in the base's tensor order) is thrown.
    func all(prefix: String, excluding: Set<String> = []) throws(TensorFileError) -> [String: [Float]] {
        let names = base.file.tensors.map(\.name).filter { $0.hasPrefix(prefix) && !excluding.contains(String($0.dropFirst(prefix.count))) }
        let slots = UnsafeMutableBufferPointer<Result<[Float], TensorFileError>?>.allocate(capacity: names.count)
        slots.initialize(repeating: nil)
        defer { slots.deinitialize(); slots.deallocate() }
        let shared = UnsafeSendable(slots)
        let jobs = max(1, min(Parallel.cores, names.count))
        let loader = UnsafeSendable(self)
        DispatchQueue.concurrentPerform(iterations: jobs) { j in
            // Interleaved, so both threads get large and small tensors.
            for i in stride(from: j, to: names.count, by: jobs) {
                let r: Result<[Float], TensorFileError>
                do throws(TensorFileError) { r = .success(try loader.p.f32(names[i])) } catch { r = .failure(error) }
                shared.p[i] = r  // each index written by one thread
            }
        }
        var out: [String: [Float]] = [:]
        for (i, n) in names.enumerated() {
            switch slots[i]! {
            case .success(let v): out[String(n.dropFirst(prefix.count))] = v
            case .failure(let e): throw e
            }
        }
        return out
    }
}

/// transformers' `CLIPTextModel` forward pass (SD 1.x: CLIP ViT-L, quick_gelu; SD 2.x: OpenCLIP
/// ViT-H's first 23 layers, gelu), configured from the base's `text_encoder` config. Returns the
/// last hidden state after the final layer norm, `[tokens × hidden]` per prompt.
public final class CLIPTextEncoder {
    public let hidden: Int, heads: Int, intermediate: Int, maxPositions: Int, vocab: Int, layerCount: Int
    public let activation: String
    public let eps: Float
    /// Weights by base name without the `text_encoder.text_model.` prefix, f32 (empty while
    /// released, except merged weights).
    var w: [String: [Float]]
    /// Weights changed in memory by a merge: these stay resident when the others are released.
    var merged: Set<String> = []
    let loader: WeightLoader
    /// Adds a subject's ΔW·x on the fly (base weight name, x, rows, y).
    public var live: ((String, UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>) -> Void)?
    static let prefix = "text_encoder.text_model."

    public init(base: BaseModel) throws(TensorFileError) {
        let cfg = try TextEncoderConfig(base: base)
        hidden = cfg.hidden
        heads = cfg.heads
        intermediate = cfg.intermediate
        maxPositions = cfg.maxPositions
        vocab = cfg.vocab
        layerCount = cfg.layers
        activation = cfg.activation
        eps = cfg.eps
        loader = WeightLoader(base: base)
        w = try loader.all(prefix: Self.prefix)
        let h = hidden
        var expected: [(String, Int)] = [("embeddings.token_embedding.weight", vocab * h), ("embeddings.position_embedding.weight", maxPositions * h),
                                         ("final_layer_norm.weight", h), ("final_layer_norm.bias", h)]
        for i in 0..<layerCount {
            let l = "encoder.layers.\(i)."
            for n in ["layer_norm1", "layer_norm2"] { expected += [(l + n + ".weight", h), (l + n + ".bias", h)] }
            for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"] { expected += [(l + n + ".weight", h * h), (l + n + ".bias", h)] }
            expected += [(l + "mlp.fc1.weight", intermediate * h), (l + "mlp.fc1.bias", intermediate), (l + "mlp.fc2.weight", h * intermediate), (l + "mlp.fc2.bias", h)]
        }
        try checkWeights(w, expected: expected, prefix: Self.prefix, file: base.file.path)
    }

    func p(_ n: String) -> [Float] { w[n]! }

    func linear(_ name: String, _ x: [Float], rows: Int, in inDim: Int, out: Int) -> [Float] {
        var y = Ops.linear(x, rows: rows, in: inDim, weight: p(name + ".weight"), bias: p(name + ".bias"), out: out)
        if let live { x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in live(Self.prefix + name + ".weight", xp.baseAddress!, rows, yp.baseAddress!) } } }
        return y
    }

    /// Adds `U·D` to a weight in memory (merging a subject); `name` is the base name.
    public func addLowRank(weight name: String, up: [Float], down: [Float], rank: Int, sign: Float = 1) -> Bool {
        guard name.hasPrefix(Self.prefix), var v = w[String(name.dropFirst(Self.prefix.count))] else { return false }
        let out = up.count / rank, inDim = down.count / rank
        guard out * inDim == v.count else { return false }
        v.withUnsafeMutableBufferPointer { vp in addLowRankUpdate(up, down, out: out, in: inDim, rank: rank, into: vp.baseAddress!, sign: sign) }
        w[String(name.dropFirst(Self.prefix.count))] = v
        merged.insert(String(name.dropFirst(Self.prefix.count)))
        return true
    }

    /// Frees the f32 weights (merged ones stay) until the next `encode`, which converts them from
    /// the base again: a pipeline needs the text encoder once per generation, for well under a
    /// second, and its weights need not stay resident next to the UNet's and the VAE's.
    public func releaseWeights() {
        w = w.filter { merged.contains($0.key) }
    }

    var released: Bool { w.count == merged.count }

    func reload() throws(TensorFileError) {
        let kept = w
        w = try loader.all(prefix: Self.prefix)
        for (k, v) in kept { w[k] = v }
    }

    /// Encodes one sequence of token ids (at most `max_position_embeddings`).
    /// `hiddenState` k returns `hidden_states[k]` of transformers (the input of layer k, without
    /// the final norm); nil returns the last layer after the final layer norm (what SD uses).
    public func encode(_ ids: [Int], hiddenState: Int? = nil) throws(TensorFileError) -> [Float] {
        let n = ids.count
        guard n <= maxPositions else { throw TensorFileError(file: "text encoder", .invalidArgument("\(n) tokens, at most \(maxPositions)")) }
        if released { try reload() }
        let tok = p("embeddings.token_embedding.weight"), pos = p("embeddings.position_embedding.weight")
        var x = [Float](repeating: 0, count: n * hidden)
        for (t, id) in ids.enumerated() {
            guard id >= 0 && id < vocab else { throw TensorFileError(file: "text encoder", .invalidArgument("token id \(id) outside the vocabulary (\(vocab))")) }
            for j in 0..<hidden { x[t * hidden + j] = tok[id * hidden + j] + pos[t * hidden + j] }
        }
        for i in 0..<layerCount {
            if let k = hiddenState, k == i { return x }
            let l = "encoder.layers.\(i)."
            var h = Ops.layerNorm(x, rows: n, channels: hidden, weight: p(l + "layer_norm1.weight"), bias: p(l + "layer_norm1.bias"), eps: eps)
            let q = linear(l + "self_attn.q_proj", h, rows: n, in: hidden, out: hidden)
            let k = linear(l + "self_attn.k_proj", h, rows: n, in: hidden, out: hidden)
            let v = linear(l + "self_attn.v_proj", h, rows: n, in: hidden, out: hidden)
            let a = Ops.attention(q: q, k: k, v: v, queries: n, keys: n, heads: heads, headDim: hidden / heads, causal: true)
            let o = linear(l + "self_attn.out_proj", a, rows: n, in: hidden, out: hidden)
            for j in x.indices { x[j] += o[j] }
            h = Ops.layerNorm(x, rows: n, channels: hidden, weight: p(l + "layer_norm2.weight"), bias: p(l + "layer_norm2.bias"), eps: eps)
            var m = linear(l + "mlp.fc1", h, rows: n, in: hidden, out: intermediate)
            switch activation {
            case "gelu": Ops.gelu(&m)
            case "gelu_new", "gelu_pytorch_tanh": Ops.geluTanh(&m)
            default: Ops.quickGELU(&m)
            }
            let f = linear(l + "mlp.fc2", m, rows: n, in: intermediate, out: hidden)
            for j in x.indices { x[j] += f[j] }
        }
        if let k = hiddenState, k == layerCount { return x }
        return Ops.layerNorm(x, rows: n, channels: hidden, weight: p("final_layer_norm.weight"), bias: p("final_layer_norm.bias"), eps: eps)
    }
}
