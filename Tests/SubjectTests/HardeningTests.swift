import Foundation
import Testing
@testable import Checkpoint
@testable import SubjectDelta
@testable import TensorFile

/// Hostile subject files, built here: a valid subject written by the library, then written again
/// through the container writer with altered metadata or tensors (the targets fingerprint
/// recomputed, so only the defect under test remains).
struct HostileSubject {
    var metadata: JSONValue
    var tensors: [TensorSource]

    init(_ subject: Subject, dtype: SubjectDType, tmp: TempDir) throws {
        let p = tmp.file("valid-\(UUID().uuidString).lidb")
        try subject.write(to: p, dtype: dtype)
        let f = try LidbFile(path: p)
        metadata = f.metadata
        tensors = try f.tensors.map { TensorSource.bytes($0, try f.tensorBytes($0.name)) }
        try FileManager.default.removeItem(atPath: p)
    }

    var rows: [JSONValue] {
        get { metadata["layers"]?.arrayValue ?? [] }
        set {
            metadata = metadata.setting("layers", .array(newValue))
            refingerprint()
        }
    }

    /// Recomputes `binding.targets_fingerprint` from the rows (as a careful attacker would).
    mutating func refingerprint() {
        let layers = rows.map { r in
            TargetLayer(name: r["name"]?.stringValue ?? "", out: Int(r["shape"]?.arrayValue?[0].int64Value ?? 0), in: Int(r["shape"]?.arrayValue?[1].int64Value ?? 0))
        }
        let binding = metadata["binding"] ?? .object([])
        metadata = metadata.setting("binding", binding.setting("targets_fingerprint", .string(layers.tableFingerprint)))
    }

    mutating func replaceTensor(_ name: String, _ info: TensorInfo, _ bytes: [UInt8]) {
        tensors = tensors.map { $0.info.name == name ? .array(info, bytes) : $0 }
    }

    /// The same bytes under another shape (same element count).
    mutating func reshape(_ name: String, _ shape: ([Int]) -> [Int]) {
        tensors = tensors.map { t in
            guard t.info.name == name else { return t }
            var r = t
            r.info = TensorInfo(name: name, dtype: t.info.dtype, shape: shape(t.info.shape))
            return r
        }
    }

    func write(_ path: String) throws -> String {
        try LidbWriter.write(to: path, kind: "subject", metadata: metadata, tensors: tensors)
        return path
    }
}

func f32Bytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

/// No output file and no temporary file (`.NAME.tmp-XXXXXX`) in the folder of `output`.
func expectNoOutput(_ output: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let dir = (output as NSString).deletingLastPathComponent, name = (output as NSString).lastPathComponent
    #expect(!FileManager.default.fileExists(atPath: output), "output \(name) exists", sourceLocation: sourceLocation)
    let left = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("." + name + ".tmp-") }
    #expect(left.isEmpty, "temporary files left: \(left)", sourceLocation: sourceLocation)
}

/// The error thrown by `body`, which must be a `TensorFileError`.
func thrown(_ body: () throws -> Void) -> TensorFileError? {
    do { try body() } catch let e as TensorFileError { return e } catch { Issue.record("unexpected error type: \(error)") }
    return nil
}

func expectRefusal(_ what: String, file: String, mentions words: [String], sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    guard let e = thrown(body) else { Issue.record("\(what): accepted", sourceLocation: sourceLocation); return }
    let text = e.description
    #expect(text.hasPrefix(file), "\(what): \(text)", sourceLocation: sourceLocation)
    for w in words { #expect(text.contains(w), "\(what): '\(w)' not in: \(text)", sourceLocation: sourceLocation) }
    #expect(!text.contains("\n"), sourceLocation: sourceLocation)
}

/// A small subject for the tiny SD1 base's first `n` paper layers.
func smallSubject(_ base: BaseModel, layers n: Int = 3, rank: Int = 1, seed: UInt64 = 7, std: Float = 0.1) -> Subject {
    let layers = Array(TargetSet.paper.layers(in: base.file.tensors).prefix(n))
    return Subject.initialise(layers: layers, rank: rank, a: 4, b: 3, basisSeed: seed, std: std, factorSeed: seed &+ 1, targetSet: "custom", architecture: "sd1")
}

@Suite(.serialized) struct SubjectLimitTests {
    /// Item 1: metadata sizes whose products overflow 64 bits, or exceed the limits, are refused by
    /// the reader (naming the file and layer) before anything is allocated.
    @Test func oversizedLayerTablesAreRefusedOnRead() throws {
        let tmp = TempDir()
        let layers = [TargetLayer(name: "unet.x.attn1.to_q", out: 8, in: 8)]
        let s = Subject.initialise(layers: layers, rank: 1, a: 2, b: 2, basisSeed: 1, std: 0.1, factorSeed: 1, targetSet: "custom", architecture: "sd1")
        let cases: [(String, JSONValue, JSONValue, [String])] = [
            ("2^62 shape", .array([.int(UInt64(1) << 62), .int(UInt64(1) << 62)]), .object([("rank", .int(1024)), ("a", .int(UInt64(1) << 60)), ("b", .int(1)), ("alpha", .double(1))]), ["each dimension must be 1 … 65536"]),
            ("2^70 shape", .array([.number("1180591620717411303424"), .int(8)]), .object([("rank", .int(1)), ("a", .int(2)), ("b", .int(2)), ("alpha", .double(1))]), ["each dimension"]),
            ("too many elements", .array([.int(65536), .int(65536)]), .object([("rank", .int(1)), ("a", .int(2)), ("b", .int(2)), ("alpha", .double(1))]), ["more than 268435456 elements"]),
            ("rank", .array([.int(8), .int(8)]), .object([("rank", .int(2048)), ("a", .int(2)), ("b", .int(2)), ("alpha", .double(1))]), ["invalid lidb term", "rank 2048"]),
            ("a beyond in", .array([.int(8), .int(8)]), .object([("rank", .int(1)), ("a", .int(9)), ("b", .int(2)), ("alpha", .double(1))]), ["invalid lidb term"]),
            ("a beyond limit", .array([.int(4096), .int(4096)]), .object([("rank", .int(1)), ("a", .int(2000)), ("b", .int(2)), ("alpha", .double(1))]), ["min(in, 1024)"]),
            ("negative rank", .array([.int(8), .int(8)]), .object([("rank", .int(-1)), ("a", .int(2)), ("b", .int(2)), ("alpha", .double(1))]), ["invalid lidb term"]),
        ]
        for (what, shape, lidb, words) in cases {
            var h = try HostileSubject(s, dtype: .f32, tmp: tmp)
            h.rows = [h.rows[0].setting("shape", shape).setting("lidb", lidb)]
            let p = try h.write(tmp.file("huge.lidb"))
            expectRefusal(what, file: p, mentions: words) { _ = try Subject(path: p) }
        }
    }

    @Test func basisGenerationRefusesSizesBeyondTheLimits() {
        #expect(throws: BasisError.self) { _ = try Basis.orthonormal(key: 1, count: 5, n: 3) }
        #expect(throws: BasisError.self) { _ = try Basis.orthonormal(key: 1, count: 0, n: 3) }
        #expect(throws: BasisError.self) { _ = try Basis.orthonormal(key: 1, count: 1, n: 1 << 40) }
        #expect(throws: BasisError.self) { _ = try Basis.orthonormal(key: 1, count: 2000, n: 4096) }
        #expect(throws: BasisError.self) { _ = try Basis.layer(seed: 1, name: "x", out: 0, in: 4, a: 1, b: 1) }
        do { _ = try Basis.layer(seed: 1, name: "x", out: 4, in: 1 << 62, a: 1 << 60, b: 1) } catch { #expect("\(error)".contains("exceed the limits")) }
    }

    /// Item 1 / 4: exporting a small file whose layer table asks for more memory than the machine
    /// has is refused with the estimate, before allocating; nothing is written.
    @Test func exportEstimatesMemoryBeforeAllocating() throws {
        let tmp = TempDir()
        let layers = (0..<2048).map { TargetLayer(name: "unet.l\($0).attn1.to_q", out: 65536, in: 4096) }
        let s = Subject(layers: layers.map { SubjectLayer(target: $0, lidb: LiDBTerm(rank: 1024, a: 1, b: 1, alpha: 1, downTrain: .init(repeating: 0, count: 1024), upTrain: .init(repeating: 0, count: 1024)), lora: nil) },
                        basis: .seed(1), targets: "custom", architecture: "sd1")
        try s.write(to: tmp.file("wide.lidb"), dtype: .q8)
        let size = try FileManager.default.attributesOfItem(atPath: tmp.file("wide.lidb"))[.size] as! Int
        print("hostile subject for export: \(size) bytes")
        let back = try Subject(path: tmp.file("wide.lidb"))
        let out = tmp.file("wide.safetensors")
        expectRefusal("export", file: tmp.file("wide.lidb"), mentions: ["would need about", "TiB", "the limit is"]) {
            try LoRAInterop.export(back, format: .peft, to: out)
        }
        expectNoOutput(out)
    }
}

@Suite(.serialized) struct SubjectStrictReaderTests {
    static func subject(_ tmp: TempDir) -> Subject {
        let layers = [TargetLayer(name: "unet.a.attn1.to_q", out: 6, in: 5), TargetLayer(name: "unet.b.attn1.to_k", out: 4, in: 7)]
        var s = Subject.initialise(layers: layers, rank: 1, a: 3, b: 2, basisSeed: 3, std: 0.2, factorSeed: 4, targetSet: "custom", architecture: "sd1")
        s.layers[1].lora = LoRATerm(rank: 2, alpha: 2, down: (0..<14).map { Float($0) / 16 }, up: (0..<8).map { Float($0) / 8 })
        return s
    }

    /// Item 18: what spec/subject.md forbids is refused, naming the file (and tensor or field).
    @Test func structuralDefectsAreRefused() throws {
        let tmp = TempDir()
        let s = Self.subject(tmp)
        let valid = try HostileSubject(s, dtype: .f32, tmp: tmp)
        _ = try Subject(path: valid.write(tmp.file("valid.lidb")))

        var h = valid   // a 2-D lidb.down_train (same element count)
        h.reshape("lidb.down_train") { [1, $0[0]] }
        var p = try h.write(tmp.file("2d.lidb"))
        expectRefusal("2-D down_train", file: p, mentions: ["lidb.down_train", "shape must be [6]"]) { _ = try Subject(path: p) }

        h = valid       // metadata dtype differs from the tensors'
        h.metadata = h.metadata.setting("dtype", .string("f16"))
        p = try h.write(tmp.file("dtype.lidb"))
        expectRefusal("dtype", file: p, mentions: ["is F32", "calls for F16"]) { _ = try Subject(path: p) }

        h = valid       // an unknown extra tensor
        h.tensors.append(.array(TensorInfo(name: "extra.notes", dtype: .U8, shape: [3]), [1, 2, 3]))
        p = try h.write(tmp.file("extra.lidb"))
        expectRefusal("extra tensor", file: p, mentions: ["extra.notes", "unexpected tensor"]) { _ = try Subject(path: p) }

        h = valid       // a wrong targets fingerprint
        h.metadata = h.metadata.setting("binding", h.metadata["binding"]!.setting("targets_fingerprint", .string(String(repeating: "ab", count: 32))))
        p = try h.write(tmp.file("fp.lidb"))
        expectRefusal("fingerprint", file: p, mentions: ["recorded targets fingerprint"]) { _ = try Subject(path: p) }

        h = valid       // no targets fingerprint at all
        h.metadata = h.metadata.setting("binding", .object([("architecture", .string("sd1"))]))
        p = try h.write(tmp.file("nofp.lidb"))
        expectRefusal("missing fingerprint", file: p, mentions: ["targets_fingerprint"]) { _ = try Subject(path: p) }

        h = valid       // trained_parameters that disagrees with the table
        h.metadata = h.metadata.setting("trained_parameters", .int(1))
        p = try h.write(tmp.file("tp.lidb"))
        expectRefusal("trained_parameters", file: p, mentions: ["trained_parameters is 1"]) { _ = try Subject(path: p) }

        h = valid       // an unknown target set name
        h.metadata = h.metadata.setting("targets", .string("everything"))
        p = try h.write(tmp.file("targets.lidb"))
        expectRefusal("targets", file: p, mentions: ["metadata.targets"]) { _ = try Subject(path: p) }

        h = valid       // a LoRA factor with its dimensions swapped (same element count)
        h.reshape("lora.unet.b.attn1.to_k.up") { _ in [2, 4] }
        p = try h.write(tmp.file("lora.lidb"))
        expectRefusal("lora shape", file: p, mentions: ["lora.unet.b.attn1.to_k.up", "[4, 2]"]) { _ = try Subject(path: p) }
    }

    /// Item 18: layers listed out of the base's tensor order are refused when applied.
    @Test func layersOutOfBaseOrderAreRefused() throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp)
        let base = try BaseModel(path: basePath)
        var s = smallSubject(base, layers: 3)
        s.layers.swapAt(0, 2)
        try s.write(to: tmp.file("order.lidb"), dtype: .f32)
        let r = try Subject(path: tmp.file("order.lidb"))
        let out = tmp.file("m.lidb")
        expectRefusal("order", file: tmp.file("order.lidb"), mentions: ["not in the base's tensor order", s.layers[1].target.name]) {
            _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: r, weight: 1, path: tmp.file("order.lidb"))], to: out)
        }
        expectNoOutput(out)
    }
}

@Suite(.serialized) struct NonFiniteDeltaTests {
    /// Item 6: factors, alpha and q8 scales whose ΔW cannot be finite are refused on read.
    @Test func nonFiniteFactorsAlphaAndScalesAreRefused() throws {
        let tmp = TempDir()
        let s = SubjectStrictReaderTests.subject(tmp)
        let valid = try HostileSubject(s, dtype: .f32, tmp: tmp)
        for (label, bad) in [("NaN", Float.nan), ("Inf", Float.infinity)] {
            var h = valid
            var v = s.layers.compactMap(\.lidb).flatMap(\.downTrain)
            v[1] = bad
            h.replaceTensor("lidb.down_train", TensorInfo(name: "lidb.down_train", dtype: .F32, shape: [v.count]), f32Bytes(v))
            let p = try h.write(tmp.file("\(label).lidb"))
            expectRefusal(label, file: p, mentions: ["lidb.down_train", "finite"]) { _ = try Subject(path: p) }
        }
        // An F16 infinity.
        let f16 = try HostileSubject(s, dtype: .f16, tmp: tmp)
        var h = f16
        let n = s.layers.compactMap(\.lidb).flatMap(\.upTrain).count
        h.replaceTensor("lidb.up_train", TensorInfo(name: "lidb.up_train", dtype: .F16, shape: [n]), [0x00, 0x7C] + [UInt8](repeating: 0, count: 2 * n - 2))
        var p = try h.write(tmp.file("inf16.lidb"))
        expectRefusal("F16 inf", file: p, mentions: ["lidb.up_train", "finite"]) { _ = try Subject(path: p) }
        // alpha 1e308: finite as a double, infinite as a Float.
        h = valid
        h.rows = h.rows.enumerated().map { i, r in i == 0 ? r.setting("lidb", r["lidb"]!.setting("alpha", .number("1e308"))) : r }
        p = try h.write(tmp.file("alpha.lidb"))
        expectRefusal("alpha", file: p, mentions: ["alpha", "not finite as a 32-bit float"]) { _ = try Subject(path: p) }
        // q8 scale 3e38: scale · 127 overflows.
        let q8 = try HostileSubject(s, dtype: .q8, tmp: tmp)
        h = q8
        h.replaceTensor("lidb.down_train.scale", TensorInfo(name: "lidb.down_train.scale", dtype: .F32, shape: [2]), f32Bytes([3e38, 0.01]))
        p = try h.write(tmp.file("scale.lidb"))
        expectRefusal("q8 scale", file: p, mentions: ["lidb.down_train.scale", "q8 scales"]) { _ = try Subject(path: p) }
        for bad: Float in [0, -1, .nan] {
            h = q8
            h.replaceTensor("lora.unet.b.attn1.to_k.up.scale", TensorInfo(name: "lora.unet.b.attn1.to_k.up.scale", dtype: .F32, shape: [1]), f32Bytes([bad]))
            p = try h.write(tmp.file("scale2.lidb"))
            expectRefusal("q8 scale \(bad)", file: p, mentions: ["lora.unet.b.attn1.to_k.up.scale"]) { _ = try Subject(path: p) }
        }
    }

    /// Item 6: weights that are not finite or out of range, and deltas that overflow, are refused
    /// by merge with no output; a q8 scale just inside the reader's bound still cannot make ΔW infinite.
    @Test func mergeRefusesNonFiniteDeltasAndWeights() throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp, dtype: .F16)
        let base = try BaseModel(path: basePath)
        let s = smallSubject(base)
        let sp = tmp.file("s.lidb")
        try s.write(to: sp, dtype: .q8)
        let out = tmp.file("m.lidb")
        for w in [Float.nan, .infinity, -.infinity, 1e30, 101] {
            expectRefusal("weight \(w)", file: sp, mentions: ["weight"]) {
                _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: try Subject(path: sp), weight: w, path: sp)], to: out)
            }
            expectNoOutput(out)
        }
        for text in ["nan", "inf", "1e30", "-1e300"] {
            #expect(throws: TensorFileError.self) { _ = try SubjectWeight.parse(sp + ":" + text) }
        }
        #expect(try SubjectWeight.parse(sp + ":0.5").weight == 0.5)
        #expect(try SubjectWeight.parse("a:b.lidb").path == "a:b.lidb")

        // q8 scales of 2e36 pass the reader (127 · 2e36 is finite) but ΔW could reach ~1e72.
        var h = try HostileSubject(s, dtype: .q8, tmp: tmp)
        h.replaceTensor("lidb.down_train.scale", TensorInfo(name: "lidb.down_train.scale", dtype: .F32, shape: [3]), f32Bytes([2e36, 2e36, 2e36]))
        h.replaceTensor("lidb.up_train.scale", TensorInfo(name: "lidb.up_train.scale", dtype: .F32, shape: [3]), f32Bytes([2e36, 2e36, 2e36]))
        let big = try h.write(tmp.file("big.lidb"))
        let bs = try Subject(path: big)
        expectRefusal("huge scales", file: big, mentions: ["beyond the range of 32-bit floats", s.layers[0].target.name]) {
            _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: bs, weight: 1, path: big)], to: out)
        }
        expectNoOutput(out)

        // Finite in f32 but beyond F16: ΔW ≈ 1e6 on an F16 base.
        var loud = s
        for i in loud.layers.indices { loud.layers[i].lidb!.alpha = 1e9 }
        try loud.write(to: tmp.file("loud.lidb"), dtype: .f32)
        let ls = try Subject(path: tmp.file("loud.lidb"))
        expectRefusal("F16 overflow", file: basePath, mentions: ["beyond the range of F16", "loud.lidb", s.layers[0].target.name]) {
            _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: ls, weight: 1, path: tmp.file("loud.lidb"))], to: out)
        }
        expectNoOutput(out)
    }

    /// Item 6: subtract-unmerge reports a finite, positive bound (never 0 from a NaN comparison).
    @Test func subtractUnmergeBoundIsPositiveAndFinite() throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp, dtype: .F16)
        let base = try BaseModel(path: basePath)
        let s = smallSubject(base)
        let applied = [AppliedSubject(subject: s, weight: 0.5, path: "s.lidb")]
        _ = try Merger.merge(base: base, subjects: applied, to: tmp.file("m.lidb"))
        let r = try Merger.unmerge(merged: BaseModel(path: tmp.file("m.lidb")), subjects: applied, original: nil, to: tmp.file("u.lidb"))
        let b = try #require(r.deviationBound)
        #expect(b.isFinite && b > 0)
    }

    /// LoRA files with non-finite factors are refused on import, naming the tensor.
    @Test func importRefusesNonFiniteLoRAFactors() throws {
        let tmp = TempDir()
        let base = try BaseModel(path: MergeTests.base(tmp))
        let t = TargetSet.paper.layers(in: base.file.tensors)[0]
        var down = [Float](repeating: 0.1, count: 2 * t.inDim)
        down[3] = .nan
        let up = [Float](repeating: 0.1, count: t.out * 2)
        try SafetensorsWriter.write(to: tmp.file("nan.safetensors"), tensors: [
            .array(TensorInfo(name: t.name + ".lora_A.weight", dtype: .F32, shape: [2, t.inDim]), f32Bytes(down)),
            .array(TensorInfo(name: t.name + ".lora_B.weight", dtype: .F32, shape: [t.out, 2]), f32Bytes(up)),
        ], metadata: nil)
        expectRefusal("NaN LoRA", file: tmp.file("nan.safetensors"), mentions: [t.name + ".lora_A.weight", "finite"]) {
            _ = try LoRAInterop.importLoRA(path: tmp.file("nan.safetensors"), base: base)
        }
    }
}

@Suite(.serialized) struct SingleRoundingTests {
    /// Correctly rounded binary16 value of `x` (round to nearest, ties to even), computed with exact
    /// binary64 scaling (x and the result are far inside the binary64 range).
    static func roundToF16(_ x: Double) -> Double {
        if x == 0 { return x }
        let e = max(Int(floor(log2(abs(x)))), -14)
        let q = Double(sign: .plus, exponent: e - 10, significand: 1)
        return (x / q).rounded(.toNearestOrEven) * q
    }

    /// Item 17: merging into an F32 or F16 base at ranks 2–4 rounds each weight once. Factors are
    /// multiples of 2^-8 with small numerators, so every product and sum is exact in binary64 and
    /// the float64 reference computed here is the exact W + ΔW, rounded once.
    @Test(arguments: [DType.F32, .F16])
    func mergeRoundsEachWeightOnce(dtype: DType) throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp, dtype: dtype)
        let base = try BaseModel(path: basePath)
        let targets = Array(TargetSet.paper.layers(in: base.file.tensors).prefix(3))
        var counter = 0
        func dyadic() -> Float {
            counter += 1
            return Float((counter * 37 + 11) % 255 - 127) / 256
        }
        var layers: [SubjectLayer] = []
        for (i, t) in targets.enumerated() {
            let r = 2 + i   // ranks 2, 3, 4
            let down = (0..<(r * t.inDim)).map { _ in dyadic() }, up = (0..<(t.out * r)).map { _ in dyadic() }
            layers.append(SubjectLayer(target: t, lidb: nil, lora: LoRATerm(rank: r, alpha: Float(r), down: down, up: up)))   // scale 1
        }
        let s = Subject(layers: layers, basis: .seed(0), targets: "custom", architecture: "sd1")
        _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: s, weight: 1, path: "dyadic")], to: tmp.file("m.lidb"))
        let merged = try LidbFile(path: tmp.file("m.lidb"))
        var differsFromStepwise = 0
        for l in layers {
            let t = l.target, lora = l.lora!
            let w = try MergeTests().floats(base.file, t.weightName), got = try MergeTests().floats(merged, t.weightName)
            for o in 0..<t.out {
                for c in 0..<t.inDim {
                    var exact = Double(w[o * t.inDim + c])
                    var stepwise = w[o * t.inDim + c]
                    for k in 0..<lora.rank {
                        let p = Double(lora.up[o * lora.rank + k]) * Double(lora.down[k * t.inDim + c])
                        exact += p
                        stepwise += Float(p)   // the old way: one rounding per rank-1 product
                    }
                    let want = dtype == .F32 ? Float(exact) : Float(Self.roundToF16(exact))
                    #expect(got[o * t.inDim + c].bitPattern == want.bitPattern, "\(t.name)[\(o), \(c)]: got \(got[o * t.inDim + c]), want \(want)")
                    if dtype == .F32 && stepwise.bitPattern != want.bitPattern { differsFromStepwise += 1 }
                }
            }
        }
        // The inputs are such that rounding per rank-1 product would give other results.
        if dtype == .F32 { #expect(differsFromStepwise > 0) }
        print("single rounding (\(dtype.name)): weights where per-product rounding differs: \(differsFromStepwise)")
    }
}

@Suite(.serialized) struct UnmergeKeepsOtherSubjectsTests {
    /// Two subjects sharing layers: H on layers 0–3, R on layers 2–5 of the tiny base.
    static func pair(_ base: BaseModel) -> (Subject, Subject) {
        let all = TargetSet.paper.layers(in: base.file.tensors)
        let h = Subject.initialise(layers: Array(all[0..<4]), rank: 2, a: 4, b: 3, basisSeed: 11, std: 0.3, factorSeed: 12, targetSet: "custom", architecture: "sd1")
        let r = Subject.initialise(layers: Array(all[2..<6]), rank: 1, a: 5, b: 2, basisSeed: 21, std: 0.3, factorSeed: 22, targetSet: "custom", architecture: "sd1")
        return (h, r)
    }

    func expectSameTensors(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let x = try LidbFile(path: a), y = try LidbFile(path: b)
        #expect(x.tensors == y.tensors, sourceLocation: sourceLocation)
        for t in x.tensors { #expect(try x.tensorBytes(t.name).array == y.tensorBytes(t.name).array, "\(t.name)", sourceLocation: sourceLocation) }
        #expect(x.metadata["merged"] == y.metadata["merged"], sourceLocation: sourceLocation)
    }

    /// Item 5: restoring H from the original re-applies R: the result equals merging only R into
    /// the original, bit for bit, whether H and R were merged together or one after the other.
    @Test(arguments: [DType.F32, .F16])
    func restoreReappliesTheRemainingSubjects(dtype: DType) throws {
        let tmp = TempDir()
        let basePath = try MergeTests.base(tmp, dtype: dtype)
        let base = try BaseModel(path: basePath)
        let (hs, rs) = Self.pair(base)
        try hs.write(to: tmp.file("h.lidb"), dtype: .f32)
        try rs.write(to: tmp.file("r.lidb"), dtype: .f32)
        let H = AppliedSubject(subject: try Subject(path: tmp.file("h.lidb")), weight: 0.75, path: tmp.file("h.lidb"))
        let R = AppliedSubject(subject: try Subject(path: tmp.file("r.lidb")), weight: 1, path: tmp.file("r.lidb"))
        _ = try Merger.merge(base: base, subjects: [R], to: tmp.file("only-r.lidb"))
        // Together in one merge, and one after the other (R first, then H).
        _ = try Merger.merge(base: base, subjects: [H, R], to: tmp.file("hr.lidb"))
        _ = try Merger.merge(base: BaseModel(path: tmp.file("only-r.lidb")), subjects: [H], to: tmp.file("r-then-h.lidb"))
        for m in ["hr.lidb", "r-then-h.lidb"] {
            let out = tmp.file("out-" + m)
            // Without R's file the restore is refused, naming R.
            expectRefusal("no reapply", file: tmp.file(m), mentions: ["r.lidb", "--reapply"]) {
                _ = try Merger.unmerge(merged: BaseModel(path: tmp.file(m)), subjects: [H], original: base, to: out)
            }
            expectNoOutput(out)
            let summary = try Merger.unmerge(merged: BaseModel(path: tmp.file(m)), subjects: [H], original: base, reapply: [R], to: out)
            #expect(summary.restored && summary.reapplied == 1)
            // Layers touched by R only keep their merged values, which equal merging R alone.
            try expectSameTensors(out, tmp.file("only-r.lidb"))
            #expect(FileManager.default.contentsEqual(atPath: out, andPath: tmp.file("only-r.lidb")), "the whole file, \(m)")
        }
        // A subject given to re-apply that was never merged is refused.
        let (other, _) = Self.pair(base)
        var o = other
        o.layers[0].lidb!.downTrain[0] += 1
        expectRefusal("stranger", file: "stranger.lidb", mentions: ["not recorded as merged"]) {
            _ = try Merger.unmerge(merged: BaseModel(path: tmp.file("hr.lidb")), subjects: [H], original: base,
                                   reapply: [R, AppliedSubject(subject: o, weight: 1, path: "stranger.lidb")], to: tmp.file("x.lidb"))
        }
        expectNoOutput(tmp.file("x.lidb"))
    }

    /// The record of a merge names the delta itself: a different subject with the same layer table
    /// and weight is not taken for it.
    @Test func unmergeMatchesTheDeltaNotOnlyTheLayerTable() throws {
        let tmp = TempDir()
        let base = try BaseModel(path: MergeTests.base(tmp))
        let (h, _) = Self.pair(base)
        var twin = h
        twin.layers[0].lidb!.downTrain[0] += 0.5
        _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: h, weight: 1, path: "h.lidb")], to: tmp.file("m.lidb"))
        expectRefusal("twin", file: "twin.lidb", mentions: ["not recorded as merged"]) {
            _ = try Merger.unmerge(merged: BaseModel(path: tmp.file("m.lidb")), subjects: [AppliedSubject(subject: twin, weight: 1, path: "twin.lidb")],
                                   original: base, to: tmp.file("u.lidb"))
        }
        expectNoOutput(tmp.file("u.lidb"))
    }
}
