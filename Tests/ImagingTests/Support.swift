import Crypto
import Foundation
import Imaging
import TensorFile

/// Paths and readers for Tests/ImagingTests/Fixtures (made by converters/fixtures/make_image_fixtures.py).
enum ImagingFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static func path(_ rel: String) -> String { root + "/" + rel }
    static func bytes(_ rel: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path(rel)))) }
    static func floats(_ rel: String) throws -> [Float] {
        let b = try bytes(rel)
        return (0..<(b.count / 4)).map { i in
            Float(bitPattern: UInt32(b[4 * i]) | UInt32(b[4 * i + 1]) << 8 | UInt32(b[4 * i + 2]) << 16 | UInt32(b[4 * i + 3]) << 24)
        }
    }
    nonisolated(unsafe) static let manifest: [String: Any] = {
        let data = try! Data(contentsOf: URL(fileURLWithPath: path("manifest.json")))
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()
    static var decodeCases: [[String: Any]] { manifest["decode"] as! [[String: Any]] }
    static var preprocessCases: [[String: Any]] { manifest["preprocess"] as! [[String: Any]] }
    static func decodeCase(_ name: String) -> [String: Any] { decodeCases.first { $0["name"] as! String == name }! }
    /// The PIL reference decoding of a decode case, as an RGBImage.
    static func reference(_ name: String) throws -> RGBImage {
        let c = decodeCase(name)
        if let rgb = c["rgb"] as? String {
            return RGBImage(width: c["width"] as! Int, height: c["height"] as! Int, pixels: try bytes(rgb))
        }
        // Only a hash is stored: decode with ImageDecoder and check the hash against PIL's.
        let (image, _) = try ImageDecoder.decode(file: path(c["file"] as! String))
        guard sha256Hex(image.pixels) == c["sha256"] as! String else { throw FixtureMismatch(name: name) }
        return image
    }

    struct FixtureMismatch: Error { var name: String }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }
}

/// The error a decode throws, or nil if it succeeds.
func decodeError(_ bytes: [UInt8], name: String = "test", limits: ImageLimits = .default) -> ImageError? {
    do {
        _ = try ImageDecoder.decode(bytes: bytes, name: name, limits: limits)
        return nil
    } catch {
        return error
    }
}

func decodeError(file: String, limits: ImageLimits = .default) -> ImageError? {
    do {
        _ = try ImageDecoder.decode(file: file, limits: limits)
        return nil
    } catch {
        return error
    }
}

func json(_ text: String) -> JSONValue { try! JSONValue.parse(Array(text.utf8)) }

func preprocessingError(_ value: JSONValue) -> ImageError? {
    do {
        _ = try ImagePreprocessing(json: value, file: "pp.json")
        return nil
    } catch {
        return error
    }
}
