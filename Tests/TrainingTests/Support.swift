import Foundation
import TensorFile

/// Paths of the training fixtures (converters/fixtures/make_finetune_fixtures.py and
/// make_optim_fixtures.py).
enum TrainingFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static func path(_ rel: String) -> String { root + "/" + rel }
    static func json(_ rel: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(rel))))
    }
    static func manifest() throws -> [String: Any] { try json("manifest.json") as! [String: Any] }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A safetensors fixture read into arrays.
struct FixtureFile {
    let file: SafetensorsFile
    init(_ rel: String) throws { file = try SafetensorsFile(path: TrainingFixtures.path(rel)) }

    func info(_ name: String) throws -> TensorInfo {
        guard let e = file.entry(name) else { throw FixtureError("no tensor \(name)") }
        return e.info
    }
    func shape(_ name: String) throws -> [Int] { try info(name).shape }

    func floats(_ name: String) throws -> [Float] {
        guard try info(name).dtype == .F32 else { throw FixtureError("\(name) is not F32") }
        let b = try file.tensorBytes(name)
        return b.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
    func int64s(_ name: String) throws -> [Int64] {
        guard try info(name).dtype == .I64 else { throw FixtureError("\(name) is not I64") }
        let b = try file.tensorBytes(name)
        return b.withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }
    }
    func bytes(_ name: String) throws -> [UInt8] {
        let b = try file.tensorBytes(name)
        return b.withUnsafeBytes { Array($0) }
    }
    /// Rows of a 2-D (or higher, flattened after the first axis) float tensor.
    func rows(_ name: String) throws -> [[Float]] {
        let s = try shape(name)
        let all = try floats(name)
        let n = s.dropFirst().reduce(1, *)
        return (0..<s[0]).map { Array(all[($0 * n)..<(($0 + 1) * n)]) }
    }
    func metadata(_ key: String) -> String? { file.metadata?.first { $0.0 == key }?.1 }
}

/// Distance in units in the last place between two binary32 values of the same sign (the
/// ordered integer difference of their bit patterns); 0 for equal values, also ±0.
func ulps(_ a: Float, _ b: Float) -> Int {
    if a == b { return 0 }
    if a.isNaN || b.isNaN { return Int.max }
    func key(_ x: Float) -> Int64 {
        let i = Int64(Int32(bitPattern: x.bitPattern))
        return i < 0 ? Int64(Int32.min) - i : i
    }
    return Int(abs(key(a) - key(b)))
}

func maxULPs(_ a: [Float], _ b: [Float]) -> Int {
    guard a.count == b.count else { return Int.max }
    return zip(a, b).map { ulps($0, $1) }.max() ?? 0
}

func bitsEqual(_ a: [Float], _ b: [Float]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
}

/// max|a − b| / max|b|.
func relativeError(_ a: [Float], _ b: [Float]) -> Double {
    guard a.count == b.count else { return .infinity }
    var num = 0.0, den = 0.0
    for (x, y) in zip(a, b) {
        num = max(num, abs(Double(x) - Double(y)))
        den = max(den, abs(Double(y)))
    }
    return den == 0 ? num : num / den
}
