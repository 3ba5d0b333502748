import CPNG
import Foundation
import Testing
@testable import Diffusion

@Suite struct PNGTests {
    @Test func libpngReadsBackPixelsAndText() throws {
        let (w, h) = (37, 21)
        let rgb = (0..<(w * h * 3)).map { UInt8(truncatingIfNeeded: $0 * 7 + $0 / 3) }
        let params = "a photo of sks person\nNegative prompt: blurry\nSteps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512"
        let png = try PNGWriter.encode(rgb: rgb, width: w, height: h, text: [("parameters", params), ("comment", "ünïcode ✓")])
        // libpng's reader (not our code) decodes the pixels…
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        let begun = png.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        #expect(begun != 0 && image.width == UInt32(w) && image.height == UInt32(h))
        image.format = UInt32(PNG_FORMAT_RGB)
        var back = [UInt8](repeating: 0, count: w * h * 3)
        let done = back.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, Int32(w * 3), nil) }
        #expect(done != 0 && back == rgb)
        // …and the text chunks are where readers look for them, with valid CRCs.
        var i = 8, found: [String: String] = [:]
        while i + 12 <= png.count {
            let len = Int(png[i]) << 24 | Int(png[i + 1]) << 16 | Int(png[i + 2]) << 8 | Int(png[i + 3])
            let type = String(decoding: png[(i + 4)..<(i + 8)], as: UTF8.self)
            let body = Array(png[(i + 8)..<(i + 8 + len)])
            let crc = UInt32(png[i + 8 + len]) << 24 | UInt32(png[i + 9 + len]) << 16 | UInt32(png[i + 10 + len]) << 8 | UInt32(png[i + 11 + len])
            #expect(crc == PNGWriter.crc32(Array(png[(i + 4)..<(i + 8)]) + body), "\(type)")
            if type == "tEXt", let z = body.firstIndex(of: 0) {
                found[String(decoding: body[..<z], as: UTF8.self)] = String(decoding: body[(z + 1)...], as: UTF8.self)
            }
            if type == "iTXt", let z = body.firstIndex(of: 0) {
                found[String(decoding: body[..<z], as: UTF8.self)] = String(decoding: body[(z + 5)...], as: UTF8.self)
            }
            i += 12 + len
        }
        #expect(found["parameters"] == params)
        #expect(found["comment"] == "ünïcode ✓")
        #expect(throws: (any Error).self) { _ = try PNGWriter.encode(rgb: [1, 2], width: 5, height: 5) }
    }
}
