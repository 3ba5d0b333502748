import Foundation
import Testing
import Imaging
@testable import Training

/// spec/finetune.md §2 against Pillow 13 + torchvision (Fixtures/preprocess.safetensors): the
/// resized image, the crop and the pixels, bit for bit.
@Suite struct PreprocessTests {
    static func cases() throws -> [[String: Any]] {
        let m = try TrainingFixtures.manifest()
        return (m["preprocess"] as! [String: Any])["synthetic"] as! [[String: Any]]
    }

    @Test func syntheticImagesBitForBit() throws {
        let f = try FixtureFile("preprocess.safetensors")
        let list = try Self.cases()
        #expect(list.count == 6)
        #expect(list.contains { $0["vertical_first"] as! Bool })
        for c in list {
            let name = c["name"] as! String
            let (h, w, r) = (c["height"] as! Int, c["width"] as! Int, c["resolution"] as! Int)
            let image = RGBImage(width: w, height: h, pixels: try f.bytes(c["input"] as! String))
            let resized = c["resized"] as! [Int]   // [H', W']
            let size = try #require(TrainingPreprocessing.resizedSize(width: w, height: h, resolution: r))
            #expect(size.height == resized[0] && size.width == resized[1], "\(name): resized size")
            #expect(PillowResize.verticalFirst(width: w, height: h, toWidth: size.width, toHeight: size.height) == c["vertical_first"] as! Bool)
            let out = try #require(PillowResize.bilinear(image, width: size.width, height: size.height))
            #expect(out.pixels == (try f.bytes(c["resized_rgb"] as! String)), "\(name): Pillow resize")
            #expect(TrainingPreprocessing.cropOffset(size: size.height, crop: r) == c["crop_top"] as! Int, "\(name): top")
            #expect(TrainingPreprocessing.cropOffset(size: size.width, crop: r) == c["crop_left"] as! Int, "\(name): left")
            let px = try TrainingPreprocessing.pixels(image, resolution: r, file: name)
            #expect(bitsEqual(px, try f.floats(c["pixels"] as! String)), "\(name): pixels")
        }
    }

    @Test func samplePhotoBitForBit() throws {
        let m = try TrainingFixtures.manifest()
        let photo = (m["preprocess"] as! [String: Any])["photo"] as! [String: Any]
        let f = try FixtureFile("preprocess.safetensors")
        let path = TrainingFixtures.repo + "/" + (photo["file"] as! String)
        let r = photo["resolution"] as! Int
        let p = try TrainingPhoto(file: path, resolution: r, flip: true)
        #expect(p.sha256 == photo["sha256"] as! String)
        let expected = try f.floats(photo["pixels"] as! String)
        #expect(bitsEqual(p.pixels, expected))
        // The crop as 8-bit RGB.
        let (decoded, _) = try ImageDecoder.decode(file: path)
        #expect([decoded.height, decoded.width] == photo["decoded"] as! [Int])
        let crop = try TrainingPreprocessing.cropped(decoded, resolution: r, file: path)
        #expect(crop.pixels == (try f.bytes(photo["crop_rgb"] as! String)))
        // The gradient fixtures' pixels are the same image.
        #expect(bitsEqual(p.pixels, try FixtureFile("sd1.safetensors").floats("pixels")))
        // The mirror: x → R − 1 − x in every channel row.
        let mirror = try #require(p.mirror)
        for c in 0..<3 {
            for y in 0..<r {
                for x in 0..<r {
                    #expect(mirror[(c * r + y) * r + x].bitPattern == expected[(c * r + y) * r + (r - 1 - x)].bitPattern)
                }
            }
        }
        let noFlip = try TrainingPhoto(file: path, resolution: r, flip: false)
        #expect(noFlip.mirror == nil)
    }

    @Test func scaleIsTheSpecFormula() {
        for u in 0...255 {
            let x = TrainingPreprocessing.scale(UInt8(u))
            #expect(x == ((Float(u) / 255) - 0.5) / 0.5)
        }
        #expect(TrainingPreprocessing.scale(0) == -1 && TrainingPreprocessing.scale(255) == 1)
    }

    @Test func cropOffsetsRoundHalfToEven() {
        // (size − crop) / 2 = 1.5 → 2, 2.5 → 2, 4.5 → 4, 11.5 → 12.
        #expect(TrainingPreprocessing.cropOffset(size: 19, crop: 16) == 2)
        #expect(TrainingPreprocessing.cropOffset(size: 21, crop: 16) == 2)
        #expect(TrainingPreprocessing.cropOffset(size: 25, crop: 16) == 4)
        #expect(TrainingPreprocessing.cropOffset(size: 39, crop: 16) == 12)
        #expect(TrainingPreprocessing.cropOffset(size: 16, crop: 16) == 0)
    }

    @Test func unchangedSizeSkipsTheResize() throws {
        let px = (0..<(16 * 16 * 3)).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        let image = RGBImage(width: 16, height: 16, pixels: px)
        #expect(PillowResize.bilinear(image, width: 16, height: 16) == image)
        #expect(PillowResize.bilinear(image, width: 0, height: 16) == nil)
        #expect(PillowResize.bilinear(image, width: Int.max, height: 2) == nil)
    }

    /// An extreme aspect ratio is refused before the resized image is allocated.
    @Test func elongatedImageIsRefusedUpFront() throws {
        let image = RGBImage(width: 4000, height: 1, pixels: [UInt8](repeating: 128, count: 4000 * 3))
        let e = #expect(throws: TrainingError.self) {
            _ = try TrainingPreprocessing.pixels(image, resolution: 4096, file: "strip.png")
        }
        guard case let .imageTooElongated(file, w, h, r, limit)? = e else {
            Issue.record("expected imageTooElongated, got \(String(describing: e))")
            return
        }
        #expect(file == "strip.png" && w == 4000 && h == 1 && r == 4096 && limit == TrainingLimits.maxResizedPixels)
        #expect(e?.description.hasPrefix("strip.png: ") == true)
        // Within the limit it works (and upscales).
        let small = try TrainingPreprocessing.pixels(RGBImage(width: 3, height: 1, pixels: [0, 0, 0, 255, 255, 255, 9, 9, 9]),
                                                     resolution: 8, file: "tiny.png")
        #expect(small.count == 3 * 8 * 8)
        // One pixel limit for every resize before a crop (training and hypernetwork preprocessing).
        #expect(TrainingLimits.maxResizedPixels == ImagePreprocessing.maxResizedPixels)
    }

    @Test func badResolutionAndUnreadableFilesAreTypedErrors() throws {
        let image = RGBImage(width: 4, height: 4, pixels: [UInt8](repeating: 1, count: 48))
        for r in [0, -8, TrainingLimits.maxResolution + 8] {
            #expect(throws: TrainingError.self) { _ = try TrainingPreprocessing.pixels(image, resolution: r, file: "a.png") }
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lidb-train-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = dir.appendingPathComponent("missing.jpg").path
        #expect(throws: TrainingError.image(.notFound(file: missing))) {
            _ = try TrainingPhoto(file: missing, resolution: 64, flip: false)
        }
        let junk = dir.appendingPathComponent("junk.png").path
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: junk))
        #expect(throws: TrainingError.image(.notAnImage(file: junk))) {
            _ = try TrainingPhoto(file: junk, resolution: 64, flip: false)
        }
        #expect(TrainingPreprocessing.mirrored([1, 2, 3], resolution: 2) == nil)
        #expect(TrainingPreprocessing.mirrored([], resolution: 0) == nil)
    }
}
