import Foundation
import Testing
import TensorFile
@testable import Imaging

@Suite struct PreprocessingTests {
    static let names = ImagingFixtures.preprocessCases.map { $0["name"] as! String }

    static func jsonValue(_ any: Any) -> JSONValue {
        let data = try! JSONSerialization.data(withJSONObject: any, options: [.fragmentsAllowed])
        return try! JSONValue.parse([UInt8](data))
    }

    /// Largest difference in [0, 1] pixel units (before normalisation): |Δ| · std.
    static func maxPixelDiff(_ a: [Float], _ b: [Float], std: [Double]) -> Double {
        let plane = a.count / 3
        var m = 0.0
        for i in 0..<a.count { m = max(m, Double(abs(a[i] - b[i])) * std[i / plane]) }
        return m
    }

    /// pixel_values match transformers' default (torchvision) processor within 1/255 per pixel;
    /// the PIL-backend processor's difference is reported.
    @Test(arguments: names)
    func matchesTransformers(name: String) throws {
        let c = ImagingFixtures.preprocessCases.first { $0["name"] as! String == name }!
        let pp = try ImagePreprocessing(json: Self.jsonValue(c["preprocessing"]!), file: "manifest.json")
        #expect(pp.outputHeight == c["height"] as! Int && pp.outputWidth == c["width"] as! Int)
        let image = try ImagingFixtures.reference(c["image"] as! String)
        let ours = try pp.apply(image)
        let variants = c["variants"] as! [String: String]
        if c["stored"] as! String == "uint8" {
            // 8-bit values u with pixel_values == (u − mean/f) / (std/f) in float32 (checked by the generator).
            let u = try ImagingFixtures.bytes(variants["torchvision"]!)
            let inv = Float(1.0 / pp.rescaleFactor)
            let plane = u.count / 3
            let tv = u.indices.map { i in (Float(u[i]) - Float(pp.imageMean[i / plane]) * inv) / (Float(pp.imageStd[i / plane]) * inv) }
            #expect(ours.count == tv.count)
            guard ours.count == tv.count else { return }
            let dTV = Self.maxPixelDiff(ours, tv, std: pp.imageStd)
            let dPIL = c["pil_max_pixel_diff"] as! Double
            print(String(format: "preprocess %@: max |Δ|·255 vs torchvision %.4f (torchvision vs PIL %.4f)", name, dTV * 255, dPIL * 255))
            #expect(dTV <= 1.0 / 255 + 1e-6)
            #expect(dTV < 1e-5, "bit-level agreement with torch's uint8 resampling")
            return
        }
        let tv = try ImagingFixtures.floats(variants["torchvision"]!)
        let pil = try ImagingFixtures.floats(variants["pil"]!)
        #expect(ours.count == tv.count && ours.count == pil.count)
        guard ours.count == tv.count, ours.count == pil.count else { return }
        let dTV = Self.maxPixelDiff(ours, tv, std: pp.imageStd)
        let dPIL = Self.maxPixelDiff(ours, pil, std: pp.imageStd)
        let dRef = Self.maxPixelDiff(tv, pil, std: pp.imageStd)
        print(String(format: "preprocess %@: max |Δ|·255 vs torchvision %.4f, vs PIL %.4f (torchvision vs PIL %.4f)", name, dTV * 255, dPIL * 255, dRef * 255))
        #expect(dTV <= 1.0 / 255 + 1e-6)
        #expect(dTV < 1e-5, "bit-level agreement with torch's uint8 resampling")
        #expect(dPIL <= 1.0 / 255 + 1e-6)
    }

    /// The presets equal transformers' processor defaults as the fixtures record them.
    @Test func presetsMatchTheFixtureConfigs() throws {
        for c in ImagingFixtures.preprocessCases {
            let pp = try ImagePreprocessing(json: Self.jsonValue(c["preprocessing"]!), file: "manifest.json")
            let name = c["name"] as! String
            if name == "clip24_pad" { continue }
            #expect(c["class"] as! [String: String] == ["torchvision": name.hasPrefix("clip") ? "CLIPImageProcessor" : "ViTImageProcessor",
                                                         "pil": name.hasPrefix("clip") ? "CLIPImageProcessorPil" : "ViTImageProcessorPil"])
            if name.hasPrefix("clip") { #expect(pp == .clip(size: pp.outputHeight), "\(name)") }
            if name.hasPrefix("vit") { #expect(pp == .vit(size: pp.outputHeight), "\(name)") }
        }
    }

    @Test func jsonRoundTrips() throws {
        for pp in [ImagePreprocessing.clip(size: 224), .vit(size: 384), .clip(size: 24)] {
            let back = try ImagePreprocessing(json: pp.json, file: "pp.json")
            #expect(back == pp)
            let reparsed = try ImagePreprocessing(json: try JSONValue.parse(pp.json.serialized()), file: "pp.json")
            #expect(reparsed == pp && reparsed.json == pp.json)
        }
        let custom = json(#"{"size": {"height": 30, "width": 20}, "crop_size": {"height": 16, "width": 12}, "resample": "bicubic", "rescale_factor": 0.5, "image_mean": [0, 0.25, 1], "image_std": [1, 2, 3]}"#)
        let pp = try ImagePreprocessing(json: custom, file: "pp.json")
        #expect(pp.outputHeight == 16 && pp.outputWidth == 12)
        #expect(try ImagePreprocessing(json: pp.json, file: "pp.json") == pp)
        #expect(pp.json.serializedString == #"{"size":{"height":30,"width":20},"crop_size":{"height":16,"width":12},"resample":"bicubic","rescale_factor":0.5,"image_mean":[0.0,0.25,1.0],"image_std":[1.0,2.0,3.0]}"#)
    }

    /// Bad descriptions are refused naming the key.
    @Test func badJSONNamesTheKey() throws {
        let good = ImagePreprocessing.clip(size: 32).json
        let cases: [(JSONValue, String)] = [
            (good.removing("resample"), "resample"),
            (good.setting("do_resize", .bool(true)), "do_resize"),
            (good.setting("size", json(#"{"shortest_edge": 0}"#)), "size.shortest_edge"),
            (good.setting("size", json(#"{"shortest_edge": 2.5}"#)), "size.shortest_edge"),
            (good.setting("size", json(#"{"longest_edge": 10}"#)), "size"),
            (good.setting("size", json(#"{"height": 10}"#)), "size"),
            (good.setting("crop_size", .null), "crop_size"),
            (good.setting("crop_size", json(#"{"height": 10, "width": -1}"#)), "crop_size.width"),
            (good.setting("resample", .string("lanczos")), "resample"),
            (good.setting("resample", .int(3)), "resample"),
            (good.setting("rescale_factor", .string("1/255")), "rescale_factor"),
            (good.setting("rescale_factor", .int(0)), "rescale_factor"),
            (good.setting("image_mean", json("[0.5, 0.5]")), "image_mean"),
            (good.setting("image_std", json("[0.5, 0, 0.5]")), "image_std"),
            (good.setting("image_std", json(#"[0.5, "a", 0.5]"#)), "image_std"),
            (json("[1, 2]"), "(root)"),
        ]
        for (value, key) in cases {
            let e = preprocessingError(value)
            guard case let .invalidPreprocessing(file, k, problem) = e else { Issue.record("\(key): expected invalidPreprocessing, got \(String(describing: e))"); continue }
            #expect(file == "pp.json" && k == key && !problem.isEmpty, "\(key): got key \(k)")
            #expect("\(e!)".contains("pp.json") && "\(e!)".contains(key))
        }
    }
}

/// A `shortest_edge` resize of an elongated image (found by the semantic fuzz target: a 1×48
/// image to a shortest edge of 8192 is 8192 × 393,216 pixels, 9.7 GB, before an 8×8 crop).
@Suite struct ResizeLimitTests {
    static func shortestEdge(_ n: Int, crop: Int) throws -> ImagePreprocessing {
        try ImagePreprocessing(json: ImagePreprocessing.clip(size: crop).json.setting("size", .object([("shortest_edge", .int(n))])), file: "hyper.json")
    }

    static func thin(width: Int, height: Int) -> RGBImage {
        RGBImage(width: width, height: height, pixels: (0..<(width * height * 3)).map { UInt8(truncatingIfNeeded: $0 &* 37) })
    }

    /// Refused with the description's file, the key, the image and the size, before the resize
    /// allocates (the refusal takes no time and no memory).
    @Test func elongatedImagesAreRefusedBeforeResizing() throws {
        let pp = try Self.shortestEdge(8192, crop: 8)
        let image = Self.thin(width: 1, height: 48)
        // The size the resize would make, from the rule itself (checked arithmetic).
        let want = try #require(pp.resizedSize(height: 48, width: 1))
        #expect(want.width == 8192 && want.height * want.width > ImagePreprocessing.maxResizedPixels)
        do {
            _ = try pp.apply(image, image: "thin.png", config: "hyper.lidb")
            Issue.record("a resize to \(want.width)×\(want.height) must be refused")
        } catch {
            guard case let .resizeTooLarge(file, key, name, w, h, rw, rh, limit) = error else { Issue.record("got \(error)"); return }
            #expect(file == "hyper.lidb" && key == "size.shortest_edge" && name == "thin.png" && (w, h) == (1, 48))
            #expect((rw, rh) == (want.width, want.height) && limit == 64_000_000)
            print("refused: \(error)")
            for word in ["hyper.lidb", "size.shortest_edge", "thin.png", "1×48", "\(want.width)×\(want.height)", "64000000"] {
                #expect(error.description.contains(word), "'\(word)' not in \(error)")
            }
        }
        // The same image to a shortest edge of 64 (64 × 3072 pixels) is fine.
        let ok = try Self.shortestEdge(64, crop: 8).apply(image)
        #expect(ok.count == 3 * 8 * 8 && ok.allSatisfy { $0.isFinite })
        // A landscape image the other way round.
        #expect(throws: ImageError.self) { try pp.apply(Self.thin(width: 48, height: 1)) }
    }

    /// The arithmetic is checked: sides whose product overflows give nil, and a refusal.
    @Test func resizedSizesUseCheckedArithmetic() throws {
        let pp = try Self.shortestEdge(8192, crop: 8)
        #expect(pp.resizedSize(height: Int.max / 2, width: 1) == nil)
        #expect(pp.resizedSize(height: 0, width: 5) == nil)
        do {
            _ = try pp.checkedResizedSize(height: Int.max / 2, width: 1, image: "p.png", config: "h.lidb")
            Issue.record("must be refused")
        } catch {
            #expect(error.description.contains("beyond 64-bit arithmetic"), "\(error)")
        }
        // The largest resize inside the limit passes: 8000 × 8000.
        let square = try Self.shortestEdge(8000, crop: 8)
        let r = try square.checkedResizedSize(height: 3, width: 3, image: "p.png", config: "h.lidb")
        #expect(r.height == 8000 && r.width == 8000)
    }

    /// An exact size beyond the limit is refused when the description is read, naming `size`.
    @Test func exactSizesBeyondTheLimitAreRefusedOnRead() throws {
        let big = ImagePreprocessing.vit(size: 8).json.setting("size", .object([("height", .int(8192)), ("width", .int(8192))]))
        #expect(preprocessingError(big.setting("crop_size", .object([("height", .int(8)), ("width", .int(8))]))).map { e -> Bool in
            if case let .invalidPreprocessing(_, k, p) = e { return k == "size" && p.contains("64000000") }
            return false
        } == true)
        let inside = ImagePreprocessing.vit(size: 8).json.setting("size", .object([("height", .int(8000)), ("width", .int(8000))]))
        #expect(preprocessingError(inside) == nil)
    }
}

@Suite struct TransformersConfigTests {
    /// Configs as transformers writes them (`resample` numbers, `do_*` switches) give the
    /// processor's own pixel_values.
    @Test(arguments: (ImagingFixtures.manifest["transformers_configs"] as! [[String: Any]]).map { $0["name"] as! String })
    func readsTransformersConfigs(name: String) throws {
        let c = (ImagingFixtures.manifest["transformers_configs"] as! [[String: Any]]).first { $0["name"] as! String == name }!
        let pp = try ImagePreprocessing(transformersConfig: PreprocessingTests.jsonValue(c["config"]!), file: "preprocessor_config.json")
        #expect(pp.outputHeight == c["height"] as! Int && pp.outputWidth == c["width"] as! Int)
        let ours = try pp.apply(try ImagingFixtures.reference(c["image"] as! String))
        let ref = try ImagingFixtures.floats(c["pixel_values"] as! String)
        #expect(ours.count == ref.count)
        guard ours.count == ref.count else { return }
        let maxAbs = zip(ours, ref).map { abs($0 - $1) }.max()!
        print("transformers config \(name): max |Δ| = \(maxAbs)")
        #expect(maxAbs <= 1e-4)
    }

    @Test func refusesWhatItCannotRepresent() throws {
        let clip = try PreprocessingTests.jsonValue((ImagingFixtures.manifest["transformers_configs"] as! [[String: Any]])[0]["config"]!)
        let cases: [(JSONValue, String)] = [
            (clip.setting("do_resize", .bool(false)), "do_resize"),
            (clip.setting("resample", .int(1)), "resample"),
            (clip.removing("resample"), "resample"),
            (clip.setting("size", .int(224)), "size"),
            (clip.removing("crop_size"), "crop_size"),
            (clip.setting("do_normalize", .string("yes")), "do_normalize"),
        ]
        for (value, key) in cases {
            var caught: ImageError?
            do { _ = try ImagePreprocessing(transformersConfig: value, file: "preprocessor_config.json") } catch { caught = error }
            guard case let .invalidPreprocessing(_, k, _) = caught else { Issue.record("\(key): got \(String(describing: caught))"); continue }
            #expect(k == key)
        }
    }
}
