import Foundation
import Testing
@testable import Imaging

@Suite struct DecoderTests {
    /// Every fixture image decodes to PIL's reference: PNG exactly, JPEG within ±1 per channel.
    @Test(arguments: ImagingFixtures.decodeCases.map { $0["name"] as! String })
    func decodesLikePIL(name: String) throws {
        let c = ImagingFixtures.decodeCase(name)
        let (image, info) = try ImageDecoder.decode(file: ImagingFixtures.path(c["file"] as! String))
        #expect(image.width == c["width"] as! Int && image.height == c["height"] as! Int)
        if let hash = c["sha256"] as? String {
            // Large image: PIL's decoding is stored as a SHA-256 of its RGB bytes.
            #expect(ImagingFixtures.sha256Hex(image.pixels) == hash)
            return
        }
        let ref = try ImagingFixtures.reference(name)
        #expect(info.format == c["format"] as! String)
        #expect(info.bitDepth == c["bit_depth"] as! Int)
        #expect(info.colorType == c["color_type"] as! String)
        #expect(info.hadAlpha == c["alpha"] as! Bool)
        #expect(info.orientation == c["orientation"] as! Int)
        #expect(info.interlaced == (name.hasSuffix("_interlaced") || name == "progressive"))
        #expect(info.width == c["source_width"] as! Int && info.height == c["source_height"] as! Int)
        guard image.pixels.count == ref.pixels.count else { return }
        let maxDiff = zip(image.pixels, ref.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0
        let differing = zip(image.pixels, ref.pixels).filter { $0 != $1 }.count
        print("decode \(name): max |Δ| = \(maxDiff), differing samples = \(differing) of \(ref.pixels.count)")
        if info.format == "png" {
            #expect(maxDiff == 0)
        } else {
            #expect(maxDiff <= 1)
        }
    }

    /// Orientations 1–8 (the same encoded pixels in every file): the value is read, the displayed
    /// size swaps for 5–8, and each decodes to PIL's `exif_transpose` reference.
    @Test func orientationsAllEight() throws {
        let (upright, _) = try ImageDecoder.decode(file: ImagingFixtures.path("images/orient1.jpg"))
        for o in 1...8 {
            let (image, info) = try ImageDecoder.decode(file: ImagingFixtures.path("images/orient\(o).jpg"))
            #expect(info.orientation == o)
            #expect(info.width == 37 && info.height == 53)
            if o >= 5 {
                #expect(image.width == 53 && image.height == 37)
            } else {
                #expect(image.width == 37 && image.height == 53)
            }
            let ref = try ImagingFixtures.reference("orient\(o)")
            #expect(image.pixels.count == ref.pixels.count && zip(image.pixels, ref.pixels).allSatisfy { abs(Int($0) - Int($1)) <= 1 })
            #expect(image.pixels.count == upright.pixels.count)
        }
    }

    /// Hostile EXIF (offsets and counts pointing anywhere) never reads out of bounds and means
    /// "no orientation".
    @Test func hostileExifIsIgnored() throws {
        let jpeg = try ImagingFixtures.bytes("images/baseline.jpg")
        func withApp1(_ payload: [UInt8]) -> [UInt8] {
            let len = payload.count + 2
            return [0xFF, 0xD8, 0xFF, 0xE1, UInt8(len >> 8), UInt8(len & 255)] + payload + Array(jpeg[2...])
        }
        let exif: [UInt8] = [0x45, 0x78, 0x69, 0x66, 0, 0]
        let cases: [[UInt8]] = [
            exif,                                                     // no TIFF header
            exif + [0x49, 0x49, 42, 0, 0xFF, 0xFF, 0xFF, 0x7F],       // IFD offset far beyond the segment
            exif + [0x4D, 0x4D, 0, 42, 0, 0, 0, 8, 0xFF, 0xFF],       // 65535 entries, none present
            exif + [0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6],  // entry cut short
            exif + [0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0],  // value 9
            exif + [0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 4, 0, 1, 0, 0, 0, 6, 0, 0, 0],  // wrong type
            exif + [0x49, 0x49, 43, 0, 8, 0, 0, 0],                   // not TIFF
        ]
        for payload in cases {
            let (_, info) = try ImageDecoder.decode(bytes: withApp1(payload), name: "exif.jpg")
            #expect(info.orientation == 1)
        }
        // A well-formed little- and big-endian entry is found.
        let le = exif + [0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]
        let be = exif + [0x4D, 0x4D, 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 3, 0, 0]
        #expect(try ImageDecoder.decode(bytes: withApp1(le), name: "le.jpg").1.orientation == 6)
        #expect(try ImageDecoder.decode(bytes: withApp1(be), name: "be.jpg").1.orientation == 3)
        // A segment length running past the end of the data.
        #expect(ExifOrientation.find(inJPEG: [0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, 0x45]) == nil)
        // Random payloads: never a crash.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<40, using: &rng)
            let tail = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let header: [UInt8] = Bool.random(using: &rng) ? [0x49, 0x49, 42, 0] : [0x4D, 0x4D, 0, 42]
            _ = ExifOrientation.find(inJPEG: withApp1(exif + header + tail))
        }
    }
}

@Suite struct MalformedImageTests {
    let png = try! ImagingFixtures.bytes("images/rgb8.png")
    let jpeg = try! ImagingFixtures.bytes("images/baseline.jpg")

    @Test func missingFileDirectoryEmptyAndNotAnImage() throws {
        let dir = NSTemporaryDirectory() + "imaging-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(decodeError(file: dir + "/missing.png") == .notFound(file: dir + "/missing.png"))
        #expect(decodeError(file: dir) == .notARegularFile(file: dir))
        _ = FileManager.default.createFile(atPath: dir + "/empty.png", contents: Data())
        #expect(decodeError(file: dir + "/empty.png") == .empty(file: dir + "/empty.png"))
        _ = FileManager.default.createFile(atPath: dir + "/text.jpg", contents: Data("just some text\n".utf8))
        #expect(decodeError(file: dir + "/text.jpg") == .notAnImage(file: dir + "/text.jpg"))
        _ = FileManager.default.createFile(atPath: dir + "/big.png", contents: Data(png))
        let small = ImageLimits(maxPixels: 1 << 30, maxSide: 1 << 20, maxFileBytes: 100)
        #expect(decodeError(file: dir + "/big.png", limits: small) == .fileTooLarge(file: dir + "/big.png", bytes: UInt64(png.count), limit: 100))
        #expect(decodeError([], name: "x") == .empty(file: "x"))
        #expect(decodeError([0x47, 0x49, 0x46, 0x38, 0x39, 0x61], name: "x.gif") == .notAnImage(file: "x.gif"))
        // Every message names the file.
        for e in [decodeError(file: dir + "/text.jpg"), decodeError(file: dir)] {
            #expect(e.map { "\($0)".contains(dir) } == true)
        }
    }

    @Test func hugeHeadersRefusedBeforeAllocation() throws {
        let p = decodeError(try ImagingFixtures.bytes("malformed/huge.png"), name: "huge.png")
        guard case let .tooLarge(file, format, w, h, _) = p else { Issue.record("expected tooLarge, got \(String(describing: p))"); return }
        #expect(file == "huge.png" && format == "png" && w == 100_000 && h == 100_000)
        let j = decodeError(try ImagingFixtures.bytes("malformed/huge.jpg"), name: "huge.jpg")
        guard case let .tooLarge(_, jf, jw, jh, _) = j else { Issue.record("expected tooLarge, got \(String(describing: j))"); return }
        #expect(jf == "jpeg" && jw == 65500 && jh == 65500)
        // Limits apply to ordinary images too, per side and per pixel count.
        let side = ImageLimits(maxPixels: 1 << 30, maxSide: 50, maxFileBytes: 1 << 30)
        let count = ImageLimits(maxPixels: 37 * 53 - 1, maxSide: 1000, maxFileBytes: 1 << 30)
        for limits in [side, count] {
            if case .tooLarge(_, "png", 37, 53, _) = decodeError(png, limits: limits) {} else { Issue.record("png limit not applied") }
            if case .tooLarge(_, "jpeg", 37, 53, _) = decodeError(jpeg, limits: limits) {} else { Issue.record("jpeg limit not applied") }
        }
        #expect(decodeError(png, limits: ImageLimits(maxPixels: 37 * 53, maxSide: 53, maxFileBytes: png.count)) == nil)
    }

    @Test func cmykJPEGIsRefused() throws {
        let e = decodeError(try ImagingFixtures.bytes("malformed/cmyk.jpg"), name: "cmyk.jpg")
        guard case let .unsupported(file, format, _) = e else { Issue.record("expected unsupported, got \(String(describing: e))"); return }
        #expect(file == "cmyk.jpg" && format == "jpeg")
    }

    @Test func corruptDataIsAnError() throws {
        // PNG: a flipped byte inside IDAT fails its CRC.
        var p = png
        let idat = findChunk(p, "IDAT")!
        p[idat + 8 + 10] ^= 0x5A
        if case let .corrupt(f, "png", m) = decodeError(p, name: "bad.png") { #expect(f == "bad.png" && !m.isEmpty) } else { Issue.record("png CRC error not reported as corrupt: \(String(describing: decodeError(p)))") }
        // PNG: a bad IHDR (bit depth 7).
        var q = png
        q[24] = 7
        if case .corrupt(_, "png", _) = decodeError(q) {} else { Issue.record("bad IHDR: \(String(describing: decodeError(q)))") }
        // JPEG: a Huffman table with impossible code counts.
        var j = jpeg
        let dht = findMarker(j, 0xC4)!
        for k in (dht + 5)..<(dht + 21) { j[k] = 0xFF }
        if case let .corrupt(f, "jpeg", m) = decodeError(j, name: "bad.jpg") { #expect(f == "bad.jpg" && !m.isEmpty) } else { Issue.record("bad DHT: \(String(describing: decodeError(j)))") }
        // JPEG: entropy-coded data replaced by a run of markers.
        var k = jpeg
        let sos = findMarker(k, 0xDA)!
        let dataStart = sos + 2 + (Int(k[sos + 2]) << 8 | Int(k[sos + 3]))
        for i in dataStart..<(dataStart + 64) { k[i] = i % 2 == 0 ? 0xFF : 0xD3 }
        #expect(decodeError(k) != nil)
    }

    /// Every strict prefix of a PNG or JPEG is refused as truncated (or corrupt, where the cut
    /// leaves a valid-looking structure behind); never a crash, a hang, or padded pixels.
    @Test(arguments: ["images/rgb8.png", "images/palette_trns.png", "images/rgba16.png", "images/baseline.jpg", "images/progressive.jpg", "images/grey.jpg"])
    func truncatedAtEveryCut(file: String) throws {
        let bytes = try ImagingFixtures.bytes(file)
        var truncated = 0, corrupt = 0
        for cut in 1..<bytes.count {
            switch decodeError(Array(bytes[0..<cut]), name: file) {
            case .truncated?: truncated += 1
            case .corrupt?: corrupt += 1
            case nil: Issue.record("\(file) cut at \(cut) of \(bytes.count) decoded without error")
            case let e?: Issue.record("\(file) cut at \(cut): unexpected \(e)")
            }
        }
        print("truncation \(file): \(bytes.count - 1) cuts, \(truncated) truncated, \(corrupt) corrupt")
        #expect(truncated > (bytes.count - 1) * 9 / 10)
    }

    /// A JPEG missing its last entropy-coded bytes is an error, not an image with grey padding.
    @Test func truncatedJPEGIsNotPadded() throws {
        let e = decodeError(Array(jpeg[0..<(jpeg.count * 2 / 3)]), name: "cut.jpg")
        guard case let .truncated(file, format, detail) = e else { Issue.record("expected truncated, got \(String(describing: e))"); return }
        #expect(file == "cut.jpg" && format == "jpeg" && detail.contains("Premature end"))
    }

    func findChunk(_ b: [UInt8], _ type: String) -> Int? {
        var i = 8
        while i + 8 <= b.count {
            let len = Int(b[i]) << 24 | Int(b[i + 1]) << 16 | Int(b[i + 2]) << 8 | Int(b[i + 3])
            if String(decoding: b[(i + 4)..<(i + 8)], as: UTF8.self) == type { return i }
            i += 12 + len
        }
        return nil
    }

    func findMarker(_ b: [UInt8], _ marker: UInt8) -> Int? {
        var i = 2
        while i + 4 <= b.count, b[i] == 0xFF {
            if b[i + 1] == marker { return i }
            i += 2 + (Int(b[i + 2]) << 8 | Int(b[i + 3]))
        }
        return nil
    }
}

@Suite struct CorruptionTests {
    /// Random byte changes anywhere in PNG and JPEG files: every outcome is an image or a typed
    /// error, never a crash or a hang.
    @Test(arguments: ["images/rgb8.png", "images/palette_trns.png", "images/grey2.png", "images/baseline.jpg", "images/progressive.jpg", "images/orient6.jpg"])
    func randomCorruptionNeverCrashes(file: String) throws {
        let original = try ImagingFixtures.bytes(file)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 &+ UInt64(original.count)
        func next() -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int(truncatingIfNeeded: state >> 33)
        }
        let limits = ImageLimits(maxPixels: 1 << 20, maxSide: 4096, maxFileBytes: 1 << 20)
        var decoded = 0, refused = 0
        for _ in 0..<400 {
            var b = original
            for _ in 0..<(1 + next() % 8) { b[next() % b.count] = UInt8(truncatingIfNeeded: next()) }
            if decodeError(b, name: file, limits: limits) == nil { decoded += 1 } else { refused += 1 }
        }
        print("corruption \(file): 400 variants, \(decoded) decoded, \(refused) refused")
        #expect(decoded + refused == 400)
    }
}
