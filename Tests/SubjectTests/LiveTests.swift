import Foundation
import Testing
@testable import Checkpoint
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

    @Test func liveApplicationAddsTheSameDeltaWithoutTouchingW() throws {
        let tmp = TempDir()
        let (subject, weight) = try MergeTests.fixtureSubject()
        let basePath = try MergeTests.base(tmp)
        let base = try BaseModel(path: basePath)
        let expected = try SafetensorsFile(path: Fixtures.path("merge/expected.safetensors"))
        let live = LiveDelta(base: base)
        try live.activate([AppliedSubject(subject: subject, weight: weight, path: "fixture")])
        #expect(live.activeWeights.count == subject.layers.count)
        var rng = SystemRandomNumberGenerator()
        var worst: Float = 0
        for l in subject.layers {
            let (out, inDim, n) = (l.target.out, l.target.inDim, 3)
            let x = (0..<(n * inDim)).map { _ in Float.random(in: -1...1, using: &rng) }
            var y = [Float](repeating: 0, count: n * out)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in live.apply(weight: l.target.weightName, x: xp.baseAddress!, rows: n, into: yp.baseAddress!) } }
            let delta = try expected.tensorBytes(l.target.name + ".delta").bytes.withMemoryRebound(to: Float.self) { Array($0) }  // [out, in], weight and scale included
            for r in 0..<n { for o in 0..<out {
                var ref: Double = 0, mag: Double = 0
                for i in 0..<inDim { ref += Double(delta[o * inDim + i]) * Double(x[r * inDim + i]); mag += abs(Double(delta[o * inDim + i]) * Double(x[r * inDim + i])) }
                worst = max(worst, Float(abs(Double(y[r * out + o]) - ref) / max(mag, 1e-12)))
            } }
        }
        print("live ΔW·x vs float64 reference: max relative error \(worst)")
        #expect(worst < 1e-5)
        // Switching: a second activation replaces the first; an empty set removes every delta.
        try live.activate([])
        #expect(live.activeWeights.isEmpty)
    }
}
