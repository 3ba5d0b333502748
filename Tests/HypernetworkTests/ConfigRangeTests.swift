import Foundation
import Testing
@testable import Hypernetwork
@testable import TensorFile

/// Every number of a hypernetwork config has a range (spec/hypernetwork.md §3); hostile values —
/// zero, negative, huge, fractional — are refused naming the field, from the config alone.
@Suite struct ConfigRangeTests {
    func field(_ edit: (JSONValue) -> JSONValue, _ name: String = "clip") throws -> String? {
        let json = edit(try fixtureConfig(name))
        do throws(HypernetworkError) {
            _ = try HypernetworkConfig(json: json, file: "h.json")
            return nil
        } catch {
            switch error.problem {
            case let .invalidConfig(f, _): return f
            case .invalidPreprocessing: return "preprocessing"
            default: return "\(error.problem)"
            }
        }
    }

    @Test func everyIntegerFieldHasARange() throws {
        let fields = [
            ["encoder", "image_size"], ["encoder", "patch_size"], ["encoder", "hidden_size"], ["encoder", "num_hidden_layers"],
            ["encoder", "num_attention_heads"], ["encoder", "intermediate_size"],
            ["decoder", "hidden_size"], ["decoder", "num_layers"], ["decoder", "num_heads"], ["decoder", "intermediate_size"],
            ["decoder", "iterations"], ["decoder", "weight_tokens"],
            ["subject", "rank"], ["subject", "a"], ["subject", "b"],
        ]
        #expect(try field { $0 } == nil)
        for path in fields {
            for value in [JSONValue.int(0), .int(-1), .int(1 << 40), .number("2.5"), .number("1e300"), .string("8")] {
                #expect(try field { $0.setting(path: path, value) } == path.joined(separator: "."), "\(path) = \(value)")
            }
        }
    }

    @Test func realNumbersHaveRanges() throws {
        for (path, value) in [(["subject", "alpha"], JSONValue.int(0)), (["subject", "alpha"], .int(-1)), (["subject", "alpha"], .number("1e300")),
                              (["subject", "alpha"], .int(100_000)), (["encoder", "layer_norm_eps"], .int(1)), (["decoder", "layer_norm_eps"], .number("-1e-5"))] {
            #expect(try field { $0.setting(path: path, value) } == path.joined(separator: "."), "\(path) = \(value)")
        }
        for (key, value) in [("image_mean", [1e6, 0.5, 0.5]), ("image_std", [1e-9, 0.5, 0.5]), ("image_std", [0.5, 0.5, 100])] {
            #expect(try field { $0.setting(path: ["preprocessing", key], .array(value.map { .double($0) })) } == "preprocessing", "\(key)")
        }
        #expect(try field { $0.setting(path: ["preprocessing", "size"], .object([("shortest_edge", .int(100_000))])) } == "preprocessing")
        #expect(try field { $0.setting(path: ["preprocessing", "crop_size"], .object([("height", .int(1 << 40)), ("width", .int(224))])) } == "preprocessing")
        #expect(try field { $0.setting(path: ["preprocessing", "size"], .object([("shortest_edge", .int(0))])) } == "preprocessing")
        #expect(try field { $0.setting(path: ["preprocessing", "crop_size"], .object([("height", .int(0)), ("width", .int(224))])) } == "preprocessing")
    }

    /// An exact resize beyond `maxResizedPixels` (each side within 1…8192) is refused from the
    /// config; one inside the limit is not. (A shortest-edge resize depends on the photo and is
    /// checked when the photo is preprocessed.)
    @Test func exactResizesAreBoundedInPixels() throws {
        func exact(_ h: Int, _ w: Int) -> (JSONValue) -> JSONValue {
            { $0.setting(path: ["preprocessing", "size"], .object([("height", .int(h)), ("width", .int(w))])) }
        }
        #expect(HypernetworkConfig.maxResizedPixels == 64_000_000)
        #expect(try field(exact(8192, 8192)) == "preprocessing")
        #expect(try field(exact(8000, 8001)) == "preprocessing")
        // The CLIP fixture crops to its encoder's 32×32 after resizing: 8000 × 8000 is inside.
        #expect(try field(exact(8000, 8000)) == nil)
    }

    @Test func targetShapesAreBoundedIntegers() throws {
        func withFirstShape(_ shape: [JSONValue]) -> (JSONValue) -> JSONValue {
            { c in
                var rows = c["targets"]!["layers"]!.arrayValue!
                rows[0] = rows[0].setting("shape", .array(shape))
                return c.setting(path: ["targets", "layers"], .array(rows))
            }
        }
        // A fractional entry used to be dropped silently, leaving a valid-looking [out, in].
        #expect(try field(withFirstShape([.number("2.5"), .int(32), .int(32)])) == "targets.layers[0]")
        #expect(try field(withFirstShape([.int(70_000), .int(1)])) == "targets.layers[0].shape")
        #expect(try field(withFirstShape([.int(65_536), .int(65_536)])) == "targets.layers[0].shape")
        #expect(try field(withFirstShape([.int(0), .int(32)])) == "targets.layers[0].shape")
    }
}
