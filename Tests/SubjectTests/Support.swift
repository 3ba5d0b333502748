import Foundation
@testable import TensorFile

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static let tests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path
    static func path(_ rel: String) -> String { root + "/" + rel }
}

final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "lidb-subject-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// The tensor table (names and shapes) of a released architecture, as diffusers builds it.
func layerTable(_ name: String) throws -> [TensorInfo] {
    let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("\(name)-tensors.json")))
    let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
    return (json["tensors"] as! [[Any]]).map { TensorInfo(name: $0[0] as! String, dtype: .F32, shape: $0[1] as! [Int]) }
}
