import Crypto
import Foundation
import Testing
@testable import TensorFile

/// Paths and helpers shared by the format tests.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static func path(_ rel: String) -> String { root + "/" + rel }

    /// A JSON fixture read with Foundation (independent of our own parser).
    static func json(_ rel: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path(rel)))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }
}

func sha256Hex(_ bytes: UnsafeRawBufferPointer) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

func sha256Hex(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { sha256Hex($0) } }

func readBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// A fresh temporary folder, removed when the value is dropped.
final class TempDir {
    let path: String
    init() {
        let p = NSTemporaryDirectory() + "lidb-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        path = p
    }
    func file(_ name: String) -> String { path + "/" + name }
    var contents: [String] { (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// The problem of a thrown TensorFileError, or nil when nothing (or something else) was thrown.
func problem(_ body: () throws -> Void) -> TensorFileError.Problem? {
    do {
        try body()
        return nil
    } catch let e as TensorFileError {
        return e.problem
    } catch {
        return nil
    }
}

/// The thrown TensorFileError, or nil.
func caught(_ body: () throws -> Void) -> TensorFileError? {
    do {
        try body()
        return nil
    } catch {
        return error as? TensorFileError
    }
}

/// Builds a safetensors file from a header string and a data buffer.
func safetensorsBytes(header: String, data: [UInt8], lengthOverride: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var out: [UInt8] = []
    withUnsafeBytes(of: (lengthOverride ?? UInt64(h.count)).littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: h)
    out.append(contentsOf: data)
    return out
}

func parseSafetensors(_ bytes: [UInt8]) throws -> SafetensorsLayout {
    try bytes.withUnsafeBytes { try SafetensorsLayout.parse($0, file: "test.safetensors") }
}

func parseLidb(_ bytes: [UInt8]) throws -> LidbLayout {
    try bytes.withUnsafeBytes { try LidbLayout.parse($0, file: "test.lidb") }
}
