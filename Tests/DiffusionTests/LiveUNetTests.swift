import Foundation
import Testing
@testable import Checkpoint
import Compute
@testable import Diffusion
@testable import SubjectDelta
@testable import TensorFile

/// Subjects as `Compute` delta terms: attached to the UNet's layers (live) they give the UNet
/// output of the merged base; detaching them gives the base's output back exactly.
@Suite(.serialized) struct LiveUNetTests {
    static func subject(_ base: BaseModel, _ targets: TargetSet = .unetAttn, seed: UInt64 = 2) -> Subject {
        let layers = targets.layers(in: base.file.tensors)
        return Subject.initialise(layers: layers, rank: 1, a: 3, b: 3, basisSeed: 8, std: 3.0, factorSeed: seed, targetSet: targets.rawValue, architecture: "sd1")
    }

    static func inputs(seed: UInt64) throws -> (FeatureMap, Matrix) {
        var g = TorchGenerator(seed: seed)
        let sample = try FeatureMap(c: 4, h: 8, w: 8, data: g.randn(count: 256))
        return (sample, try Matrix(rows: 77, cols: 32, data: g.randn(count: 77 * 32)))
    }

    @Test func liveEqualsMerged() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let subject = Self.subject(base)
        let applied = [AppliedSubject(subject: subject, weight: 0.8, path: "s")]
        _ = try Merger.merge(base: base, subjects: applied, to: dir + "/merged.lidb")
        let merged = try UNetNetwork(base: BaseModel(path: dir + "/merged.lidb"))
        let plain = try UNetNetwork(base: base)
        var live = plain
        for (layer, term) in try subject.deltaTerms(weight: 0.8, cache: BasisCache()) {
            try live.attach(term, to: String(layer.name.dropFirst("unet.".count)))
        }
        let (sample, ctx) = try Self.inputs(seed: 3)
        let a = try merged.forward(sample, timestep: 500, context: ctx)
        let b = try live.forward(sample, timestep: 500, context: ctx)
        let c = try plain.forward(sample, timestep: 500, context: ctx)
        let scale = a.data.map(abs).max()!
        let diff = zip(a.data, b.data).map { abs($0 - $1) }.max()! / scale
        let effect = zip(a.data, c.data).map { abs($0 - $1) }.max()! / scale
        print("live vs merged UNet output: max relative difference \(diff) (the subject itself changes the output by \(effect))")
        #expect(diff < 1e-5)
        #expect(effect > 100 * diff)
        // Switching is detaching and attaching: without terms the output is the base's, exactly.
        live.detachAllTerms()
        #expect(try live.forward(sample, timestep: 500, context: ctx).data == c.data)
    }

    /// The pipeline's in-memory merge of several subjects (UNet and text-encoder layers) rounds
    /// once per weight, as `lidb merge` does: its weights equal the merged file's bit for bit.
    /// Live application of the same subjects gives the merged pipeline's latents; switching
    /// back to no subject gives the base's latents exactly.
    @Test func pipelineMergeEqualsLidbMergeAndLiveMatches() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let applied = [AppliedSubject(subject: Self.subject(base, .paper, seed: 2), weight: 0.8, path: "a"),
                       AppliedSubject(subject: Self.subject(base, .unetAttn, seed: 5), weight: -0.6, path: "b")]
        _ = try Merger.merge(base: base, subjects: applied, to: dir + "/merged.lidb")
        let file = try LidbFile(path: dir + "/merged.lidb")
        let merged = try StableDiffusion(base: base)
        try merged.apply(applied, mode: .merge)
        var compared = 0
        for l in applied[0].subject.layers {
            let want = try file.tensorBytes(l.target.weightName).bytes.withMemoryRebound(to: Float.self) { Array($0) }
            let got: [Float]?
            if l.target.name.hasPrefix("unet.") {
                got = merged.unet.linear(named: String(l.target.name.dropFirst("unet.".count)))?.weight
            } else {
                got = merged.textEncoder.network?.linear(named: String(l.target.name.dropFirst("text_encoder.".count)))?.weight
            }
            #expect(got == want, "\(l.target.name)")
            compared += 1
        }
        #expect(compared == applied[0].subject.layers.count && applied[0].subject.layers.contains { $0.target.name.hasPrefix("text_encoder.") })

        var o = GenerateOptions(prompt: "a photo")
        (o.steps, o.width, o.height, o.cfg) = (2, 64, 64, 3)
        let mergedLatents = try merged.denoise(o)
        let live = try StableDiffusion(base: base)
        let plainLatents = try live.denoise(o)
        try live.apply(applied, mode: .live)
        let liveLatents = try live.denoise(o)
        let scale = mergedLatents.map(abs).max()!
        let diff = zip(mergedLatents, liveLatents).map { abs($0 - $1) }.max()! / scale
        let effect = zip(mergedLatents, plainLatents).map { abs($0 - $1) }.max()! / scale
        print("pipeline live vs merged latents: max relative difference \(diff) (the subjects change them by \(effect))")
        #expect(diff < 1e-5 && effect > 100 * diff)
        try live.apply([], mode: .live)
        #expect(try live.denoise(o) == plainLatents)
    }
}

/// An F16 base's UNet kept as F16 and converted layer by layer computes exactly what the UNet with
/// every weight converted to f32 at load computes (the conversion is exact), merged subjects included.
@Suite(.serialized) struct WeightResidencyTests {
    @Test func f16PerLayerEqualsF32() throws {
        let (base, dir) = try TextEncoderTests.base("sd1", dtype: .F16)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var cached = try UNetNetwork(base: base, residency: .f32)
        var perLayer = try UNetNetwork(base: base, residency: .f16PerLayer, halfMinimum: 1)
        // Every Linear and Conv2d weight is held as F16; nothing is in the f32 network.
        let matrices = base.file.tensors.filter { $0.name.hasPrefix("unet.") && $0.name.hasSuffix(".weight") && $0.shape.count >= 2 }
        #expect(perLayer.halfWeightCount == matrices.reduce(0) { $0 + $1.elementCount })
        #expect(cached.halfWeightCount == 0)
        let (sample, ctx) = try LiveUNetTests.inputs(seed: 5)
        #expect(try cached.forward(sample, timestep: 300, context: ctx).data == perLayer.forward(sample, timestep: 300, context: ctx).data)
        // A merged subject turns its layers into f32 in both, with the same values.
        let subject = LiveUNetTests.subject(base)
        let terms = try subject.deltaTerms(weight: 0.7, cache: BasisCache())
        for (layer, term) in terms {
            let name = String(layer.name.dropFirst("unet.".count))
            try cached.addWeightDeltas([term], to: name)
            try perLayer.addWeightDeltas([term], to: name)
        }
        let first = String(terms[0].layer.name.dropFirst("unet.".count))
        #expect(perLayer.linear(named: first)?.values.isHalf == false)
        #expect(try cached.forward(sample, timestep: 300, context: ctx).data == perLayer.forward(sample, timestep: 300, context: ctx).data)
    }
}

/// `bf16-per-layer`: any base's Linear and Conv2d weights rounded to bfloat16 once (nearest even)
/// and held so; a BF16 base's bits kept as they are.
@Suite(.serialized) struct BFloat16ResidencyTests {
    static func rounded(_ x: Float) -> Float {
        if x.isNaN { return x }
        let bits = x.bitPattern, lower = bits & 0xFFFF
        var r = bits & 0xFFFF_0000
        if lower > 0x8000 || (lower == 0x8000 && (bits >> 16) & 1 == 1) { r = r &+ 0x1_0000 }
        return Float(bitPattern: r)
    }

    @Test(arguments: [DType.F32, .F16, .BF16]) func weightsAreTheRoundedValues(dtype: DType) throws {
        let (base, dir) = try TextEncoderTests.base("sd1", dtype: dtype)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let full = try UNetNetwork(base: base, residency: .f32)
        let perLayer = try UNetNetwork(base: base, residency: .bf16PerLayer, halfMinimum: 1)
        let matrices = base.file.tensors.filter { $0.name.hasPrefix("unet.") && $0.name.hasSuffix(".weight") && $0.shape.count >= 2 }
        #expect(perLayer.halfWeightCount == matrices.reduce(0) { $0 + $1.elementCount })
        var linears = 0, changed = 0
        for t in matrices {
            let name = String(t.name.dropFirst("unet.".count).dropLast(".weight".count))
            guard let a = full.linear(named: name), let b = perLayer.linear(named: name) else { continue }
            guard case .bf16 = b.values else { Issue.record("\(name) is not held as bf16"); continue }
            let want = a.weight.map(Self.rounded)
            #expect(b.weight == want, "\(name)")
            if want != a.weight { changed += 1 }
            linears += 1
        }
        #expect(linears > 10)
        // F32 and F16 bases are really rounded; a BF16 base is already exact.
        #expect(dtype == .BF16 ? changed == 0 : changed == linears)
        let (sample, ctx) = try LiveUNetTests.inputs(seed: 5)
        let y = try full.forward(sample, timestep: 300, context: ctx).data
        let z = try perLayer.forward(sample, timestep: 300, context: ctx).data
        let scale = y.map(abs).max()!
        let err = zip(y, z).map { abs($0 - $1) }.max()! / scale
        #expect(err.isFinite && err < 3e-2, "\(dtype): \(err)")
        if dtype == .BF16 { #expect(y == z) }
    }
}

/// `StableDiffusion.apply` checks every layer against the networks before changing anything, and
/// refuses a merge whose result would not be finite, naming the subject and the layer.
@Suite(.serialized) struct ApplyRefusalTests {
    @Test func layersTheNetworksLackAreRefusedBeforeAnyChange() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A 2-D base tensor that is no linear layer (the token embedding), after a valid layer.
        let attn = TargetSet.unetAttn.layers(in: base.file.tensors)[0]
        let shape = try #require(base.file.entry("text_encoder.text_model.embeddings.token_embedding.weight")).info.shape
        let embedding = TargetLayer(name: "text_encoder.text_model.embeddings.token_embedding", out: shape[0], in: shape[1])
        var order: [String: Int] = [:]
        for (i, t) in base.file.tensors.enumerated() { order[t.name] = i }
        let layers = [attn, embedding].sorted { order[$0.weightName]! < order[$1.weightName]! }
        let bad = Subject.initialise(layers: layers, rank: 1, a: 2, b: 2, basisSeed: 3, std: 1, factorSeed: 4, targetSet: "custom", architecture: "sd1")
        let good = LiveUNetTests.subject(base)
        let sd = try StableDiffusion(base: base)
        try sd.apply([AppliedSubject(subject: good, weight: 1, path: "good.lidb")], mode: .live)
        let attnName = String(attn.name.dropFirst("unet.".count))
        let before = try #require(sd.unet.linear(named: attnName))
        for mode in [ApplyMode.merge, .live] {
            let e = firstError { try sd.apply([AppliedSubject(subject: bad, weight: 1, path: "bad.lidb")], mode: mode) }
            #expect(e?.file == "bad.lidb" && e?.tensor == embedding.name, "\(mode): \(String(describing: e))")
            #expect("\(String(describing: e))".contains("no linear layer"))
            let after = try #require(sd.unet.linear(named: attnName))
            #expect(after.weight == before.weight && after.terms.count == before.terms.count && after.terms.count == 1, "\(mode)")
        }
    }

    @Test func mergesThatWouldNotBeFiniteAreRefused() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = TargetSet.unetAttn.layers(in: base.file.tensors)[0]
        try HostileBase.write(base, to: dir + "/big.lidb", tensors: [(target.weightName, { $0[0] = 3e38 })])
        let big = try BaseModel(path: dir + "/big.lidb")
        // ΔW[0, 0] = 1e38: finite, and within the subject's own bound, but W + ΔW is not.
        var down = [Float](repeating: 0, count: target.inDim), up = [Float](repeating: 0, count: target.out)
        (down[0], up[0]) = (1, 1e38)
        let s = Subject(layers: [SubjectLayer(target: target, lidb: nil, lora: LoRATerm(rank: 1, alpha: 1, down: down, up: up))],
                        basis: .seed(1), targets: "custom", architecture: "sd1")
        let sd = try StableDiffusion(base: big)
        let name = String(target.name.dropFirst("unet.".count))
        let before = try #require(sd.unet.linear(named: name)?.weight)
        let e = firstError { try sd.apply([AppliedSubject(subject: s, weight: 1, path: "huge.lidb")], mode: .merge) }
        #expect(e?.file == "huge.lidb" && e?.tensor == target.name && "\(String(describing: e))".contains("lower the weight"), "\(String(describing: e))")
        #expect(sd.unet.linear(named: name)?.weight == before)
        // Live, the same subject is applied (its ΔW is finite); a step with it is what the per-step check judges.
        try sd.apply([AppliedSubject(subject: s, weight: 1, path: "huge.lidb")], mode: .live)
        #expect(sd.unet.linear(named: name)?.terms.count == 1)
    }
}

/// A staged pipeline (`StableDiffusion(staged: true)`, what `lidb generate` uses) holds one
/// network at a time and reloads each per generation, replaying merges and attached terms: it
/// gives the resident pipeline's images bit for bit, with subjects merged or live, twice in a row.
@Suite(.serialized) struct StagedPipelineTests {
    @Test func stagedEqualsResidentWithSubjects() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let applied = [AppliedSubject(subject: LiveUNetTests.subject(base, .paper, seed: 2), weight: 0.8, path: "a"),
                       AppliedSubject(subject: LiveUNetTests.subject(base, .unetAttn, seed: 5), weight: -0.6, path: "b")]
        var o = GenerateOptions(prompt: "a photo")
        (o.steps, o.width, o.height, o.cfg) = (2, 64, 64, 3)
        let plain = try StableDiffusion(base: base).generate(o)
        for mode in ApplyMode.allCases {
            let resident = try StableDiffusion(base: base)
            try resident.apply(applied, mode: mode)
            let want = try resident.generate(o)
            let staged = try StableDiffusion(base: base, staged: true)
            #expect(!staged.unet.isLoaded)
            try staged.apply(applied, mode: mode)
            #expect(!staged.unet.isLoaded)  // terms checked against the architecture's shapes, applied at load
            for round in 0..<2 {
                let got = try staged.generate(o)
                // The same computation; on a loaded machine the BLAS may split a product over
                // another number of threads, so the images agree to float32 rounding, not bit for bit.
                let a = got.flatMap(\.data), b = want.flatMap(\.data)
                let gap = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity, size = b.map { abs($0) }.max() ?? 0
                #expect(a.count == b.count && gap <= 1e-5 * size, "\(mode), generation \(round + 1): \(gap / size)")
                #expect(!staged.unet.isLoaded && staged.textEncoder.released)
            }
            #expect(want.map(\.data) != plain.map(\.data))  // the subjects change the images
        }
    }

    /// Every linear layer of the loaded UNet has the shape the architecture states without
    /// weights, and no other layer is named (SD 1 and SD 2 bases).
    @Test(arguments: ["sd1", "sd2"]) func architectureShapesMatchTheLoadedNetwork(family: String) throws {
        let (base, dir) = try TextEncoderTests.base(family)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let net = try UNetNetwork(base: base)
        let shapes = try UNetNetwork.architecture(base: base).linearShapes()
        #expect(Set(shapes.keys) == Set(net.linearNames))
        for name in net.linearNames {
            let l = try #require(net.linear(named: name))
            #expect(shapes[name]?.out == l.outFeatures && shapes[name]?.in == l.inFeatures, "\(name)")
        }
    }

    /// A term of the wrong shape or for an unknown layer is refused by a staged pipeline before
    /// anything is loaded, naming the layer.
    @Test func stagedRefusesMismatchedTermsUpFront() throws {
        let (base, dir) = try TextEncoderTests.base("sd1")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let staged = try StableDiffusion(base: base, staged: true)
        let name = try #require(staged.unet.linearNames.first { $0.hasSuffix("attn1.to_q") })
        let shape = try #require(staged.unet.layerShape(name))
        #expect(throws: ComputeError.self) { try staged.unet.attach(NaNTerm(out: shape.out + 1, in: shape.in), to: name) }
        #expect(throws: ComputeError.self) { try staged.unet.addWeightDeltas([NaNTerm(out: shape.out, in: shape.in)], to: "no.such.layer") }
        #expect(!staged.unet.isLoaded)
        // A merge that makes a weight non-finite is found at the load, as an error naming the layer.
        try staged.unet.addWeightDeltas([NaNTerm(out: shape.out, in: shape.in)], to: name)
        var o = GenerateOptions(prompt: "a photo")
        (o.steps, o.width, o.height) = (1, 64, 64)
        let e = firstError { _ = try staged.generate(o) }
        #expect(e?.description.contains(name) == true)
    }
}
