import Foundation
import Testing
@testable import Checkpoint
import Compute
@testable import SubjectDelta
@testable import TensorFile

@Suite(.serialized) struct LiveTests {
    @Test func inMemoryMergeEqualsTheMergedFileAndRestoresExactly() throws {
        let tmp = TempDir()
        let (subject, weight) = try MergeTests.fixtureSubject()
        let basePath = try MergeTests.base(tmp)
        let base = try BaseModel(path: basePath)
        let applied = [AppliedSubject(subject: subject, weight: weight, path: "fixture")]
        _ = try Merger.merge(base: base, subjects: applied, to: tmp.file("m.lidb"))
        let merged = try LidbFile(path: tmp.file("m.lidb"))
        let names = subject.layers.map(\.target.weightName)
        let mw = try MergedWeights(base: base, names: names)
        try mw.apply(applied, cache: BasisCache())
        for n in names {
            let want = try merged.tensorBytes(n).bytes.withMemoryRebound(to: Float.self) { Array($0) }
            #expect(mw.weights[n]!.array == want, "\(n)")
        }
        mw.restore()
        for n in names {
            let orig = try base.file.tensorBytes(n).bytes.withMemoryRebound(to: Float.self) { Array($0) }
            #expect(mw.weights[n]!.array == orig)
        }
    }

    /// The subject's delta terms (what the runtime attaches to apply it live) add ΔW·x with the
    /// float64 reference's ΔW, weight and scale included, and merge to the merged file's weights.
    @Test func deltaTermsApplyTheSameDelta() throws {
        let tmp = TempDir()
        let (subject, weight) = try MergeTests.fixtureSubject()
        let basePath = try MergeTests.base(tmp)
        let base = try BaseModel(path: basePath)
        let expected = try SafetensorsFile(path: Fixtures.path("merge/expected.safetensors"))
        let terms = try subject.deltaTerms(weight: weight, cache: BasisCache())
        #expect(terms.count == subject.layers.count && zip(terms, subject.layers).allSatisfy { $0.0.layer == $0.1.target })
        #expect(terms.allSatisfy { !$0.term.trainable })
        var rng = SystemRandomNumberGenerator()
        var worst: Float = 0
        for (l, t) in zip(subject.layers, terms) {
            let (out, inDim, n) = (l.target.out, l.target.inDim, 3)
            let x = (0..<(n * inDim)).map { _ in Float.random(in: -1...1, using: &rng) }
            var y = try Matrix(zeros: n, cols: out)
            try t.term.forward(try Matrix(rows: n, cols: inDim, data: x), into: &y)
            let delta = try expected.tensorBytes(l.target.name + ".delta").bytes.withMemoryRebound(to: Float.self) { Array($0) }  // [out, in], weight and scale included
            for r in 0..<n { for o in 0..<out {
                var ref: Double = 0, mag: Double = 0
                for i in 0..<inDim { ref += Double(delta[o * inDim + i]) * Double(x[r * inDim + i]); mag += abs(Double(delta[o * inDim + i]) * Double(x[r * inDim + i])) }
                worst = max(worst, Float(abs(Double(y.data[r * out + o]) - ref) / max(mag, 1e-12)))
            } }
        }
        print("live ΔW·x vs float64 reference: max relative error \(worst)")
        #expect(worst < 1e-5)
        // Merged into the base's f32 weights, the same terms give the merged file's values.
        _ = try Merger.merge(base: base, subjects: [AppliedSubject(subject: subject, weight: weight, path: "fixture")], to: tmp.file("m.lidb"))
        let merged = try LidbFile(path: tmp.file("m.lidb"))
        for (l, t) in zip(subject.layers, terms).prefix(10) {
            var w = try base.file.tensorBytes(l.target.weightName).bytes.withMemoryRebound(to: Float.self) { Array($0) }
            w.withUnsafeMutableBufferPointer { _ = addWeightDeltas([t.term], out: l.target.out, in: l.target.inDim, into: $0.baseAddress!, sign: 1) }
            #expect(try merged.tensorBytes(l.target.weightName).bytes.withMemoryRebound(to: Float.self) { Array($0) } == w)
        }
        // A weight out of range is refused, naming it.
        #expect(throws: TensorFileError.self) { _ = try subject.deltaTerms(weight: .nan, cache: BasisCache()) }
    }

    /// An in-memory merge whose result leaves the binary32 range is reported, naming the weight.
    @Test func inMemoryMergeReportsNonFiniteResults() throws {
        let tmp = TempDir()
        let (subject, _) = try MergeTests.fixtureSubject()
        let base = try BaseModel(path: try MergeTests.base(tmp))
        let t = subject.layers[0].target
        var down = [Float](repeating: 0, count: t.inDim), up = [Float](repeating: 0, count: t.out)
        (down[0], up[0]) = (1, 1e38)
        let s = Subject(layers: [SubjectLayer(target: t, lidb: nil, lora: LoRATerm(rank: 1, alpha: 1, down: down, up: up))],
                        basis: .seed(1), targets: "custom", architecture: "sd1")
        let mw = try MergedWeights(base: base, names: [t.weightName])
        try #require(mw.weights[t.weightName]).pointer[0] = 3e38
        #expect { try mw.apply([AppliedSubject(subject: s, weight: 1, path: "huge")], cache: BasisCache()) } throws: {
            ($0 as? TensorFileError)?.tensor == t.weightName && "\($0)".contains("not finite in 1 weight(s)")
        }
    }
}
