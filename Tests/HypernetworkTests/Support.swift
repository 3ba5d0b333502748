import Foundation
@testable import Checkpoint
@testable import Hypernetwork
@testable import TensorFile

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static let tests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path
    static func path(_ rel: String) -> String { root + "/" + rel }
}

final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "lidb-hyper-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

func floats(_ f: TensorCollection, _ name: String) throws -> [Float] {
    let b = try f.tensorBytes(name)
    let info = f.tensors.first { $0.name == name }!
    var out = [Float](repeating: 0, count: info.elementCount)
    out.withUnsafeMutableBytes { _ = DTypeConversion.convert(b.bytes, from: info.dtype, into: $0, to: .F32, count: info.elementCount) }
    return out
}

/// max |a − b| / max |b|.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    let scale = b.map(abs).max()! + 1e-30
    return zip(a, b).map { abs($0 - $1) }.max()! / scale
}

/// The fixture's config (`hyper.json`).
func fixtureConfig(_ name: String) throws -> JSONValue {
    let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.path("\(name)/hyper.json"))))
    return try JSONValue.parse(bytes, file: "hyper.json")
}

/// Writes a hypernetwork file from the fixture's weights, with the config and tensor table
/// changed by the caller (to make malformed files).
func writeHypernetwork(_ name: String, to path: String, config: (JSONValue) -> JSONValue = { $0 },
                       tensors edit: ([TensorSource]) -> [TensorSource] = { $0 }) throws {
    let src = try SafetensorsFile(path: Fixtures.path("\(name)/hyper.safetensors"))
    var sources: [TensorSource] = []
    for t in src.tensors { sources.append(.bytes(t, try src.tensorBytes(t.name))) }
    try LidbWriter.write(to: path, kind: "hypernetwork", metadata: config(try fixtureConfig(name)), tensors: edit(sources))
}

extension JSONValue {
    /// `self` with the value at `path` (object keys) replaced.
    func setting(path: [String], _ value: JSONValue) -> JSONValue {
        guard let first = path.first else { return value }
        return setting(first, (self[first] ?? .object([])).setting(path: Array(path.dropFirst()), value))
    }
}

/// The tiny SD 1.x test base, converted.
func tinyBase(_ tmp: TempDir) throws -> String {
    let folder = Fixtures.tests + "/BaseTests/Fixtures/sd1/diffusers-safetensors"
    let path = tmp.file("base.lidb")
    _ = try BaseConverter.write(BaseConverter.plan(input: folder), to: path, dtype: nil)
    return path
}

func loadError(_ path: String) -> HypernetworkError? {
    do throws(HypernetworkError) { _ = try Hypernetwork(path: path); return nil } catch { return error }
}
