import Foundation
import Testing
@testable import SubjectDelta
@testable import TensorFile

@Suite struct SubjectFileTests {
    @Test func paperTargetsOnSD15() throws {
        let table = try layerTable("sd15")
        #expect(TargetSet.unetAttn.layers(in: table).count == 128)
        #expect(TargetSet.textAttn.layers(in: table).count == 48)
        #expect(TargetSet.textMLP.layers(in: table).count == 24)
        let paper = TargetSet.paper.layers(in: table)
        #expect(paper.count == 200)
        let s = Subject.initialise(layers: paper, rank: 1, a: 100, b: 50, basisSeed: 1, std: 0.02, factorSeed: 2, targetSet: "paper", architecture: "sd1")
        #expect(s.trainedParameters == 30_000)
        let tmp = TempDir()
        var sizes: [SubjectDType: Int] = [:]
        for d in SubjectDType.allCases {
            try s.write(to: tmp.file("\(d.rawValue).lidb"), dtype: d)
            sizes[d] = try MappedFile(path: tmp.file("\(d.rawValue).lidb")).bytes.count
        }
        print("paper subject on SD 1.5: f32 \(sizes[.f32]!) B, f16 \(sizes[.f16]!) B, bf16 \(sizes[.bf16]!) B, q8 \(sizes[.q8]!) B")
        #expect(sizes[.f16]! <= 64 * 1024)
        #expect(sizes[.q8]! <= 36 * 1024)
        // SD 2.1: the same sets exist (23 text layers).
        #expect(TargetSet.paper.layers(in: try layerTable("sd21")).count == 128 + 23 * 6)
    }

    /// A finite f32 factor beyond the half type's range (found by the semantic fuzz target's
    /// round-trip oracle): writing it as f16 is refused, nothing is written; f32 and bf16 keep it.
    @Test func factorsBeyondTheHalfRangeAreRefused() throws {
        let table = try layerTable("sd15")
        var s = Subject.initialise(layers: Array(TargetSet.paper.layers(in: table).prefix(2)), rank: 1, a: 4, b: 4, basisSeed: 1, std: 0.02,
                                   factorSeed: 2, targetSet: "custom", architecture: "sd1")
        s.layers[1].lidb!.downTrain[2] = 70_000
        let tmp = TempDir()
        do {
            try s.write(to: tmp.file("f16.lidb"), dtype: .f16)
            Issue.record("an f16 write of 70000 must fail")
        } catch {
            #expect(error.description.contains("lidb.down_train") && error.description.contains("does not fit f16"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: tmp.file("f16.lidb")))
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: tmp.path)) ?? []).isEmpty)
        for d in [SubjectDType.f32, .bf16] {
            try s.write(to: tmp.file("\(d.rawValue).lidb"), dtype: d)
            let back = try Subject(path: tmp.file("\(d.rawValue).lidb"))
            #expect(abs(back.layers[1].lidb!.downTrain[2] - 70_000) <= 70_000 * 0x1p-8)
        }
    }

    /// q8 writes follow the reader's scale rule (found by the semantic fuzz target: a factor of
    /// 3.4028235e38 made the scale max/127, whose 127 · scale overflows, so lidb wrote a subject
    /// it then refused to read). Such a block is refused naming the tensor and the layer, and
    /// nothing is written; the largest max |x| the rule allows round-trips; a block of subnormals
    /// (whose max/127 underflowed to a zero scale, then divided by) round-trips exactly.
    @Test func q8ScalesFollowTheReadersRule() throws {
        let table = try layerTable("sd15")
        let layers = Array(TargetSet.paper.layers(in: table).prefix(2))
        var s = Subject.initialise(layers: layers, rank: 1, a: 4, b: 4, basisSeed: 1, std: 0.02,
                                   factorSeed: 2, targetSet: "custom", architecture: "sd1")
        let tmp = TempDir()
        func expectRefused(_ subject: Subject, _ words: [String]) {
            do {
                try subject.write(to: tmp.file("q8.lidb"), dtype: .q8)
                Issue.record("a q8 write with a factor of \(Float.greatestFiniteMagnitude) must fail")
            } catch {
                print("refused: \(error)")
                for w in words { #expect(error.description.contains(w), "'\(w)' not in \(error)") }
            }
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: tmp.path)) ?? []).isEmpty, "no output or temp file")
        }
        var huge = s
        huge.layers[1].lidb!.downTrain[2] = .greatestFiniteMagnitude
        expectRefused(huge, ["lidb.down_train", "layer '\(layers[1].name)'", "q8 scale"])
        huge = s
        huge.layers[0].lora = LoRATerm(rank: 1, alpha: 1, down: (0..<layers[0].inDim).map { Float($0 % 3) }, up: (0..<layers[0].out).map { -Float($0 % 2) })
        huge.layers[0].lora!.up[1] = -.greatestFiniteMagnitude
        expectRefused(huge, ["lora.\(layers[0].name).up", "q8 scale"])

        // The largest block maximum whose scale the reader accepts, found from the rule itself.
        var m = Float.greatestFiniteMagnitude
        while !Subject.isValidQ8Scale(m / 127) { m = m.nextDown }
        #expect(m < .greatestFiniteMagnitude && m > .greatestFiniteMagnitude * 0.999)
        s.layers[1].lidb!.downTrain[2] = m
        s.layers[1].lidb!.downTrain[3] = -m / 3
        // Subnormals only, with a zero among them.
        let tiny = Float.leastNonzeroMagnitude
        s.layers[0].lidb!.downTrain = (0..<s.layers[0].lidb!.downTrain.count).map { Float($0 % 7 - 3) * tiny }
        try s.write(to: tmp.file("q8.lidb"), dtype: .q8)
        let back = try Subject(path: tmp.file("q8.lidb"))
        let big = back.layers[1].lidb!.downTrain
        #expect(big[2].isFinite && abs(big[2] - m) <= m / 254, "\(big[2]) for \(m)")
        #expect(abs(big[3] + m / 3) <= m / 254, "\(big[3])")
        #expect(back.layers[0].lidb!.downTrain == s.layers[0].lidb!.downTrain, "subnormal block")
    }

    @Test(arguments: SubjectDType.allCases)
    func factorsRoundTrip(dtype: SubjectDType) throws {
        let table = try layerTable("sd15")
        let layers = Array(TargetSet.paper.layers(in: table).prefix(12))
        var s = Subject.initialise(layers: layers, rank: 2, a: 16, b: 8, alpha: 3, basisSeed: 9, std: 0.1, factorSeed: 5, targetSet: "paper", architecture: "sd1",
                                   info: .object([("name", .string("test")), ("trigger", .string("sks"))]))
        s.layers[3].lora = LoRATerm(rank: 1, alpha: 1, down: (0..<layers[3].inDim).map { Float($0 % 7) * 0.01 }, up: (0..<layers[3].out).map { Float($0 % 5) * -0.02 })
        let tmp = TempDir()
        try s.write(to: tmp.file("s.lidb"), dtype: dtype)
        let r = try Subject(path: tmp.file("s.lidb"))
        #expect(r.targetLayers == s.targetLayers && r.basis == s.basis && r.architecture == "sd1" && r.info["trigger"] == .string("sks"))
        let tol: Float = dtype == .f32 ? 0 : dtype == .f16 ? 1e-3 : dtype == .bf16 ? 8e-3 : 1.0 / 127
        for (a, b) in zip(s.layers, r.layers) {
            let pairs = zip(a.lidb!.downTrain + a.lidb!.upTrain, b.lidb!.downTrain + b.lidb!.upTrain)
            let scale = (a.lidb!.downTrain + a.lidb!.upTrain).map(abs).max()!
            for (x, y) in pairs { #expect(abs(x - y) <= tol * max(abs(x), dtype == .q8 ? scale : 0) + 1e-12, "\(a.target.name)") }
            #expect((a.lora == nil) == (b.lora == nil))
        }
    }

    @Test func malformedSubjectsAreRefused() throws {
        let table = try layerTable("sd15")
        let layers = Array(TargetSet.textMLP.layers(in: table).prefix(2))
        let s = Subject.initialise(layers: layers, rank: 1, a: 4, b: 4, basisSeed: 1, std: 0.1, factorSeed: 1, targetSet: "text-mlp", architecture: "sd1")
        let tmp = TempDir()
        try s.write(to: tmp.file("s.lidb"), dtype: .f32)
        let f = try LidbFile(path: tmp.file("s.lidb"))
        // Rewrite with a layer table that no longer matches the factors.
        func rewrite(_ md: JSONValue, _ name: String) throws -> String {
            let sources = f.tensors.map { TensorSource.bytes($0, try! f.tensorBytes($0.name)) }
            try LidbWriter.write(to: tmp.file(name), kind: "subject", metadata: md, tensors: sources)
            return tmp.file(name)
        }
        var rows = f.metadata["layers"]!.arrayValue!
        rows[0] = rows[0].setting("lidb", .object([("rank", .int(1)), ("a", .int(5)), ("b", .int(4)), ("alpha", .double(1))]))
        let p1 = try rewrite(f.metadata.setting("layers", .array(rows)), "sizes.lidb")
        #expect { _ = try Subject(path: p1) } throws: { "\($0)".contains("sizes do not match") || "\($0)".contains("fingerprint") }
        let p2 = try rewrite(f.metadata.setting("layers", .array([rows[1], rows[1]])), "dup.lidb")
        #expect { _ = try Subject(path: p2) } throws: { "\($0)".contains("listed twice") }
        let p3 = try rewrite(f.metadata.setting("lidb_subject", .int(2)), "version.lidb")
        #expect { _ = try Subject(path: p3) } throws: { "\($0)".contains("schema version 2") }
        let p4 = try rewrite(f.metadata.setting("basis", .object([("generator", .string("other"))])), "basis.lidb")
        #expect { _ = try Subject(path: p4) } throws: { "\($0)".contains("unknown basis") }
    }
}

@Suite struct QuantisationTests {
    /// q8's effect on ΔW, per layer, for the paper configuration at SD 1.5 sizes (a sample of layers).
    @Test func q8ErrorOfDeltaW() throws {
        let table = try layerTable("sd15")
        let paper = TargetSet.paper.layers(in: table)
        let sample = [paper[0], paper[5], paper[100], paper[130], paper[150], paper[199]]
        let s = Subject.initialise(layers: sample, rank: 1, a: 100, b: 50, basisSeed: 11, std: 0.02, factorSeed: 3, targetSet: "paper", architecture: "sd1")
        let tmp = TempDir()
        try s.write(to: tmp.file("q.lidb"), dtype: .q8)
        let q = try Subject(path: tmp.file("q.lidb"))
        let cache = BasisCache()
        var worst = 0.0
        for (a, b) in zip(s.layers, q.layers) {
            let fa = try s.lowRankFactors(a, cache: cache), fb = try q.lowRankFactors(b, cache: cache)
            var num = 0.0, den = 0.0
            for o in 0..<a.target.out { for i in 0..<a.target.inDim {
                let x = Double(fa.up[o]) * Double(fa.down[i]), y = Double(fb.up[o]) * Double(fb.down[i])
                num += (x - y) * (x - y); den += x * x
            } }
            let rel = (num / den).squareRoot()
            print("q8 relative error of ΔW (Frobenius), \(a.target.name) [\(a.target.out)×\(a.target.inDim)]: \(rel)")
            worst = max(worst, rel)
        }
        #expect(worst < 0.02)
    }
}

@Suite struct StoredBasisTests {
    @Test func storedBasesRoundTripAndGiveTheSameDelta() throws {
        let layers = [TargetLayer(name: "unet.a.attn1.to_q", out: 12, in: 10), TargetLayer(name: "unet.b.attn2.to_k", out: 12, in: 7)]
        let seeded = Subject.initialise(layers: layers, rank: 1, a: 4, b: 3, basisSeed: 5, std: 0.2, factorSeed: 1, targetSet: "custom", architecture: "sd1")
        var stored = seeded
        var bases: [String: StoredBasis] = [:]
        for l in seeded.layers {
            let g = try Basis.layer(seed: 5, name: l.target.name, out: l.target.out, in: l.target.inDim, a: 4, b: 3)
            bases[l.target.name] = StoredBasis(down: g.down, up: g.up)
        }
        stored.basis = .stored(bases)
        let tmp = TempDir()
        try stored.write(to: tmp.file("s.lidb"), dtype: .f32)
        let back = try Subject(path: tmp.file("s.lidb"))
        #expect(back.basis == stored.basis)
        let cache = BasisCache()
        for (a, b) in zip(seeded.layers, back.layers) {
            let fa = try seeded.lowRankFactors(a, cache: cache), fb = try back.lowRankFactors(b, cache: cache)
            #expect(fa.up == fb.up && fa.down == fb.down)
        }
    }
}
