import Foundation
import Testing
@testable import Compute
import TensorFile

/// The backward-kernel fixtures written by converters/fixtures/make_finetune_fixtures.py
/// (PyTorch autograd): `kernels.safetensors`, described by the `kernels` list of `manifest.json`.
final class KernelFixtures: @unchecked Sendable {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("TrainingTests").appendingPathComponent("Fixtures").path

    /// Loaded once for all tests.
    static let shared: Result<KernelFixtures, any Error> = Result { try KernelFixtures() }
    static func load() throws -> KernelFixtures { try shared.get() }

    let file: SafetensorsFile
    let cases: [String: JSONValue]

    init() throws {
        file = try SafetensorsFile(path: Self.root + "/kernels.safetensors")
        let manifest = try JSONValue.parse([UInt8](Data(contentsOf: URL(fileURLWithPath: Self.root + "/manifest.json"))))
        var cases: [String: JSONValue] = [:]
        for k in manifest["kernels"]?.arrayValue ?? [] {
            if let name = k["name"]?.stringValue { cases[name] = k }
        }
        self.cases = cases
    }

    func info(_ name: String) throws -> TensorInfo {
        guard let e = file.entry(name) else { throw FixtureError("no tensor \(name) in kernels.safetensors") }
        return e.info
    }

    func shape(_ name: String) throws -> [Int] { try info(name).shape }

    func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        guard info.dtype == .F32 else { throw FixtureError("\(name) is \(info.dtype), expected F32") }
        let b = try file.tensorBytes(name)
        var out = [Float](repeating: 0, count: info.elementCount)
        out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: .F32, into: $0, to: .F32, count: info.elementCount) }
        return out
    }

    func int64s(_ name: String) throws -> [Int64] {
        let info = try info(name)
        guard info.dtype == .I64 else { throw FixtureError("\(name) is \(info.dtype), expected I64") }
        let b = try file.tensorBytes(name)
        return (0..<info.elementCount).map { b.bytes.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self) }
    }

    /// The manifest entry of a case, and the tensor names it lists.
    func entry(_ kernel: String) throws -> JSONValue {
        guard let e = cases[kernel] else { throw FixtureError("no kernel case \(kernel) in manifest.json") }
        return e
    }

    func tensorName(_ kernel: String, _ group: String, _ key: String) throws -> String {
        guard let n = try entry(kernel)[group]?[key]?.stringValue else { throw FixtureError("\(kernel): no \(group).\(key)") }
        return n
    }

    func input(_ kernel: String, _ key: String = "x") throws -> [Float] { try floats(try tensorName(kernel, "inputs", key)) }
    func param(_ kernel: String, _ key: String) throws -> [Float] { try floats(try tensorName(kernel, "params", key)) }
    func grad(_ kernel: String, _ key: String = "x") throws -> [Float] { try floats(try tensorName(kernel, "grads", key)) }
    func output(_ kernel: String) throws -> [Float] {
        guard let n = try entry(kernel)["output"]?.stringValue else { throw FixtureError("\(kernel): no output") }
        return try floats(n)
    }
    func upstream(_ kernel: String) throws -> [Float] {
        guard let n = try entry(kernel)["upstream"]?.stringValue else { throw FixtureError("\(kernel): no upstream") }
        return try floats(n)
    }
    func inputShape(_ kernel: String, _ key: String = "x") throws -> [Int] { try shape(try tensorName(kernel, "inputs", key)) }
    func config(_ kernel: String, _ key: String) throws -> Int {
        guard let v = try entry(kernel)["config"]?[key]?.int64Value else { throw FixtureError("\(kernel): no config.\(key)") }
        return Int(v)
    }
    func configDouble(_ kernel: String, _ path: String...) throws -> Double {
        var v: JSONValue? = try entry(kernel)["config"]
        for p in path { v = v?[p] }
        guard let d = v?.doubleValue else { throw FixtureError("\(kernel): no config.\(path.joined(separator: "."))") }
        return d
    }
    /// torch's own float32 error against float64 for a tensor of a case (manifest).
    func float64Deviation(_ kernel: String, _ key: String) throws -> Double? {
        try entry(kernel)["float64_deviation"]?[key]?.doubleValue
    }
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The tolerance of spec/finetune.md §10 for backward kernels: max |diff| / max |ref| ≤ 1e-5.
let kernelTolerance: Double = 1e-5

/// max |a − b| / max |b| (binary64).
func relativeError(_ a: [Float], _ b: [Float]) -> Double {
    guard a.count == b.count, !b.isEmpty else { return .infinity }
    var num: Double = 0, den: Double = 0
    for (x, y) in zip(a, b) {
        guard x.isFinite else { return .infinity }
        num = max(num, abs(Double(x) - Double(y)))
        den = max(den, abs(Double(y)))
    }
    return den == 0 ? (num == 0 ? 0 : .infinity) : num / den
}

/// Checks `got` against the fixture's `ref` at `tolerance` and prints the measured error.
func expectClose(_ got: [Float], _ ref: [Float], _ label: String, tolerance: Double = kernelTolerance,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(got.count == ref.count, "\(label): \(got.count) values, reference has \(ref.count)", sourceLocation: sourceLocation)
    let e = relativeError(got, ref)
    print("kernel \(label): max|diff|/max|ref| = \(String(format: "%.3g", e))")
    #expect(e <= tolerance, "\(label): relative error \(e) > \(tolerance)", sourceLocation: sourceLocation)
}

/// Item `i` of a batch of `n` equal-sized items stored contiguously.
func item(_ v: [Float], _ i: Int, of n: Int) -> [Float] {
    let size = v.count / n
    return Array(v[(i * size)..<((i + 1) * size)])
}

/// Deterministic pseudo-random values in [−1, 1) (SplitMix64), for inputs the tests build themselves.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> Float {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Float(z >> 40) / Float(1 << 23) - 1
    }
    mutating func values(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in scale * next() } }
}
