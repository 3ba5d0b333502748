import Foundation
import Testing
@testable import Checkpoint
@testable import SubjectDelta
@testable import TensorFile

/// Merge checked against converters/fixtures/make_merge_fixtures.py: bases from the independent
/// Python generator, ΔW and merged weights computed in float64 by Python.
@Suite(.serialized) struct MergeTests {
    static func fixtureSubject() throws -> (Subject, Float) {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("merge/subject.json")))) as! [String: Any]
        let factors = try SafetensorsFile(path: Fixtures.path("merge/subject.safetensors"))
        func floats(_ n: String) throws -> [Float] {
            let b = try factors.tensorBytes(n)
            return (0..<(b.count / 4)).map { Float(bitPattern: b.bytes.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
        }
        let rank = json["rank"] as! Int, alpha = Float(json["alpha"] as! Double)
        let layers = try (json["layers"] as! [[String: Any]]).map { l -> SubjectLayer in
            let name = l["name"] as! String
            let t = TargetLayer(name: name, out: l["out"] as! Int, in: l["in"] as! Int)
            return SubjectLayer(target: t, lidb: LiDBTerm(rank: rank, a: l["a"] as! Int, b: l["b"] as! Int, alpha: alpha,
                                                        downTrain: try floats(name + ".down_train"), upTrain: try floats(name + ".up_train")), lora: nil)
        }
        let seed = (json["seed"] as! NSNumber).uint64Value
        return (Subject(layers: layers, basis: .seed(seed), targets: "paper", architecture: "sd1"), Float(json["weight"] as! Double))
    }

    static func base(_ tmp: TempDir, dtype: DType? = nil) throws -> String {
        let folder = Fixtures.tests + "/BaseTests/Fixtures/sd1/diffusers-safetensors"
        let path = tmp.file(dtype == nil ? "base.lidb" : "base-\(dtype!.name).lidb")
        _ = try BaseConverter.write(BaseConverter.plan(input: folder), to: path, dtype: dtype)
        return path
    }

    func floats(_ f: TensorCollection, _ name: String) throws -> [Float] {
        let b = try f.tensorBytes(name)
        let info = f.tensors.first { $0.name == name }!
        var out = [Float](repeating: 0, count: info.elementCount)
        out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: info.dtype, into: $0, to: .F32, count: info.elementCount) }
        return out
    }

    @Test func mergeMatchesTheFloat64Reference() throws {
        let tmp = TempDir()
        let (subject, weight) = try Self.fixtureSubject()
        try subject.write(to: tmp.file("s.lidb"), dtype: .f32)
        let basePath = try Self.base(tmp)
        let s = try Subject(path: tmp.file("s.lidb"))
        let summary = try Merger.merge(base: BaseModel(path: basePath), subjects: [AppliedSubject(subject: s, weight: weight, path: tmp.file("s.lidb"))],
                                       to: tmp.file("merged.lidb"))
        #expect(summary.touchedLayers == 140)
        let merged = try LidbFile(path: tmp.file("merged.lidb"))
        let expected = try SafetensorsFile(path: Fixtures.path("merge/expected.safetensors"))
        var worst: Float = 0
        for l in s.layers {
            let got = try floats(merged, l.target.weightName), want = try floats(expected, l.target.name + ".merged")
            let delta = try floats(expected, l.target.name + ".delta")
            let scale = delta.map(abs).max()! + 1e-30
            for (g, w) in zip(got, want) { worst = max(worst, abs(g - w) / scale) }
        }
        print("merge vs float64 reference: max |error| / max |ΔW| = \(worst)")
        #expect(worst <= 1e-6)
        // Untouched tensors are unchanged, byte for byte.
        let base = try LidbFile(path: basePath)
        let touched = Set(s.layers.map(\.target.weightName))
        for t in base.tensors where !touched.contains(t.name) { #expect(try base.tensorBytes(t.name).array == merged.tensorBytes(t.name).array) }
        #expect(try BaseModel(path: tmp.file("merged.lidb")).metadata["merged"]?.arrayValue?.count == 1)
    }

    @Test(arguments: [DType.F32, .F16])
    func unmergeRestoresOrStaysWithinItsBound(dtype: DType) throws {
        let tmp = TempDir()
        let (subject, weight) = try Self.fixtureSubject()
        let basePath = try Self.base(tmp, dtype: dtype)
        let applied = [AppliedSubject(subject: subject, weight: weight, path: "fixture")]
        _ = try Merger.merge(base: BaseModel(path: basePath), subjects: applied, to: tmp.file("m.lidb"))
        // Restore: bit-exact, fingerprints back to the original's.
        let r = try Merger.unmerge(merged: BaseModel(path: tmp.file("m.lidb")), subjects: applied, original: BaseModel(path: basePath), to: tmp.file("r.lidb"))
        #expect(r.restored)
        let a = try LidbFile(path: basePath), b = try LidbFile(path: tmp.file("r.lidb"))
        for t in a.tensors { #expect(try a.tensorBytes(t.name).array == b.tensorBytes(t.name).array, "\(t.name)") }
        #expect(try BaseModel(path: tmp.file("r.lidb")).contentFingerprint == BaseModel(path: basePath).contentFingerprint)
        #expect(try BaseModel(path: tmp.file("r.lidb")).metadata["merged"] == nil)
        // Subtract: every weight within the reported bound.
        let sub = try Merger.unmerge(merged: BaseModel(path: tmp.file("m.lidb")), subjects: applied, original: nil, to: tmp.file("s.lidb"))
        let bound = try #require(sub.deviationBound)
        let c = try LidbFile(path: tmp.file("s.lidb"))
        var worst = 0.0
        for l in subject.layers {
            for (x, y) in zip(try floats(a, l.target.weightName), try floats(c, l.target.weightName)) { worst = max(worst, Double(abs(x - y))) }
        }
        print("subtract-unmerge (\(dtype.name)): max deviation \(worst), bound \(bound)")
        #expect(worst <= bound)
        #expect(bound < (dtype == .F16 ? 2e-3 : 1e-6))
    }

    @Test func subjectsForAnotherLayerTableAreRefused() throws {
        let tmp = TempDir()
        let basePath = try Self.base(tmp)
        var (subject, _) = try Self.fixtureSubject()
        subject.layers[0].target.inDim += 1
        #expect { try subject.check(against: BaseModel(path: basePath), subjectPath: "s.lidb") } throws: {
            "\($0)".contains("differs in 1 layer") && "\($0)".contains(subject.layers[0].target.name)
        }
        var strict = try Self.fixtureSubject().0
        strict.baseContent = String(repeating: "ab", count: 32)
        #expect { try strict.check(against: BaseModel(path: basePath), subjectPath: "s.lidb") } throws: { "\($0)".contains("bound to base content") }
        var other = try Self.fixtureSubject().0
        other.architecture = "sd2"
        #expect { try other.check(against: BaseModel(path: basePath), subjectPath: "s.lidb") } throws: { "\($0)".contains("made for sd2") }
    }
}
