import Crypto
import Foundation
import Testing
@testable import TensorFile

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let samples = repoRoot + "/samples"
let personalizeFixtures = repoRoot + "/Tests/CLITests/Fixtures/personalize"

/// `lidb personalize` end to end on the bundled samples (tiny SD 1 pipeline, tiny hypernetwork,
/// EXIF-rotated JPEG photo), against transformers' image processor + the PyTorch reference
/// hypernetwork (converters/fixtures/make_personalize_fixtures.py).
@Suite(.serialized) struct PersonalizeCLITests {

    func f32(_ bytes: TensorBytes, count: Int) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes.bytes[0..<(count * 4)])) }
        return out
    }

    func relative(_ a: [Float], _ b: [Float]) -> Double {
        let scale = b.reduce(Float(0)) { max($0, abs($1)) }
        let diff = zip(a, b).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return Double(diff / max(scale, 1e-30))
    }

    func hex<S: Sequence>(_ s: S) -> String where S.Element == UInt8 { s.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

    @Test func photoInSubjectOutMatchesTheReference() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", samples + "/tiny-sd", "-o", s.file("base.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["convert", samples + "/tiny-hyper.safetensors", "--kind", "hypernetwork", "--config", samples + "/tiny-hyper.json",
                         "-o", s.file("hyper.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["personalize", "--hypernet", s.file("hyper.lidb"), "--base", s.file("base.lidb"), "--image", samples + "/face.jpg",
                         "--trigger", "sks", "--class", "face", "--name", "sample", "--dtype", "f32", "-o", s.file("face.lidb"), "--timings"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("EXIF orientation 6") && r.stdout.contains("\"hypernetwork_s\""))

        let want = try SafetensorsFile(path: personalizeFixtures + "/expected.safetensors")
        let subject = try LidbFile(path: s.file("face.lidb"))
        for name in ["down_train", "up_train"] {
            let e = try #require(want.entry(name)), g = try #require(subject.entry("lidb." + name))
            #expect(g.info.dtype == .F32 && g.info.elementCount == e.info.elementCount)
            let err = relative(f32(try subject.tensorBytes("lidb." + name), count: g.info.elementCount),
                               f32(try want.tensorBytes(name), count: e.info.elementCount))
            print("personalize \(name) vs transformers processor + PyTorch reference: max |Δ| / max |x| = \(err)")
            #expect(err <= 1e-4)
        }
        // Provenance: the photo's SHA-256 and the hypernetwork's fingerprint, never the photo.
        let info = try #require(subject.metadata["info"])
        #expect(info["name"]?.stringValue == "sample" && info["trigger"]?.stringValue == "sks" && info["class"]?.stringValue == "face")
        let prov = try #require(info["provenance"])
        #expect(prov["image_sha256"]?.stringValue == hex(try want.tensorBytes("image_sha256").bytes))
        let hyper = try LidbFile(path: s.file("hyper.lidb"))
        let header = UnsafeRawBufferPointer(rebasing: hyper.map.bytes[64..<(64 + Int(hyper.layout.headerStoredLength))])
        #expect(prov["hypernetwork"]?.stringValue == hex(SHA256.hash(data: header)))
        #expect(subject.tensors.count == 2, "only the factors are stored")

        // The subject merges, unmerges and generates, merged and live alike.
        r = try CLI.run(["merge", s.file("base.lidb"), s.file("face.lidb"), "-o", s.file("merged.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["unmerge", s.file("merged.lidb"), s.file("face.lidb"), "--original", s.file("base.lidb"), "-o", s.file("back.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        for mode in ["merge", "live"] {
            r = try CLI.run(["generate", "--model", s.file("base.lidb"), "--subject", s.file("face.lidb"), "--prompt", "a photo of sks face",
                             "--steps", "2", "--width", "64", "--height", "64", "--apply", mode, "-o", s.file("\(mode).png")])
            #expect(r.status == 0, "\(r.stderr)")
        }
        #expect(FileManager.default.fileExists(atPath: s.file("merge.png")) && FileManager.default.fileExists(atPath: s.file("live.png")))
    }

    @Test func badPhotosAndMismatchedBasesAreRefusedWithoutOutput() throws {
        let s = Scratch()
        _ = try CLI.run(["convert", samples + "/tiny-sd", "-o", s.file("base.lidb")])
        _ = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("other.lidb")])
        _ = try CLI.run(["convert", samples + "/tiny-hyper.safetensors", "--kind", "hypernetwork", "--config", samples + "/tiny-hyper.json",
                         "-o", s.file("hyper.lidb")])
        let photo = [UInt8](try Data(contentsOf: URL(fileURLWithPath: samples + "/face.jpg")))
        try Data(photo.prefix(photo.count / 2)).write(to: URL(fileURLWithPath: s.file("half.jpg")))
        try Data("not a photo".utf8).write(to: URL(fileURLWithPath: s.file("text.png")))
        let cases: [(base: String, image: String, message: String)] = [
            (s.file("base.lidb"), s.file("half.jpg"), "truncated"),
            (s.file("base.lidb"), s.file("text.png"), "not a PNG or JPEG"),
            // a valid PNG header claiming 100000 × 100000 (decompression bomb), from the imaging fixtures
            (s.file("base.lidb"), repoRoot + "/Tests/ImagingTests/Fixtures/malformed/huge.png", "100000"),
            (s.file("base.lidb"), s.file("missing.jpg"), "missing.jpg"),
            (s.file("other.lidb"), samples + "/face.jpg", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"),
        ]
        for c in cases {
            let r = try CLI.run(["personalize", "--hypernet", s.file("hyper.lidb"), "--base", c.base, "--image", c.image, "-o", s.file("out.lidb")])
            #expect(r.status == 2, "\(c.image): \(r.stdout)")
            #expect(r.stderr.contains(c.message), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1)
            #expect(!FileManager.default.fileExists(atPath: s.file("out.lidb")))
        }
        // A subject file is not a hypernetwork.
        let r = try CLI.run(["personalize", "--hypernet", samples + "/subject-lora.lidb", "--base", s.file("base.lidb"),
                             "--image", samples + "/face.jpg", "-o", s.file("out.lidb")])
        #expect(r.status == 2 && r.stderr.contains("subject-lora.lidb"), "\(r.stderr)")
    }

    /// A hypernetwork whose preprocessing resizes the shortest edge to 8192 before its 64×64 crop
    /// (found by the semantic fuzz target): a 1×48 photo would become 8192 × 393,216 pixels
    /// (9.7 GB) before the crop. Refused before allocating — one line naming the hypernetwork,
    /// the key, the photo and the size; no output; a small process — while the same photo with
    /// the sample's shortest edge of 64 personalizes.
    @Test func hugeResizeBeforeTheCropIsRefused() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", samples + "/tiny-sd", "-o", s.file("base.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        let config = try JSONValue.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: samples + "/tiny-hyper.json"))), file: "tiny-hyper.json")
        let pre = try #require(config["preprocessing"])
        let hostile = config.setting("preprocessing", pre.setting("size", .object([("shortest_edge", .int(8192))])))
        try Data(hostile.serialized()).write(to: URL(fileURLWithPath: s.file("hyper.json")))
        r = try CLI.run(["convert", samples + "/tiny-hyper.safetensors", "--kind", "hypernetwork", "--config", s.file("hyper.json"), "-o", s.file("hyper.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["convert", samples + "/tiny-hyper.safetensors", "--kind", "hypernetwork", "--config", samples + "/tiny-hyper.json", "-o", s.file("ok.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        try TinyPNG.write(width: 1, height: 48, to: s.file("thin.png"))
        let before = s.contents
        let args = ["personalize", "--hypernet", s.file("hyper.lidb"), "--base", s.file("base.lidb"), "--image", s.file("thin.png"), "-o", s.file("out.lidb")]
        r = try CLI.run(args)
        print("1×48 photo, shortest_edge 8192: \(r.stderr)", terminator: "")
        #expect(r.status == 2, "\(r.stdout)")
        #expect(r.stderr.hasPrefix("lidb: error: ") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        for word in ["hyper.lidb", "size.shortest_edge", "thin.png", "1×48", "8192×393216", "64000000"] {
            #expect(r.stderr.contains(word), "'\(word)' not in \(r.stderr)")
        }
        #expect(s.contents == before, "left \(Set(s.contents).subtracting(before))")
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/time") {
            let timed = try RuntimeHardeningCLITests.run(args, wrapper: ["/usr/bin/time", "-v"])
            #expect(timed.status == 2)
            let line = timed.stderr.split(separator: "\n").first { $0.contains("Maximum resident set size") }
            let kb = line.flatMap { Int($0.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) }
            print("refused 8192 × 393216 resize: peak RSS \(kb.map { "\($0 / 1024) MiB" } ?? "?")")
            #expect(kb != nil && kb! < 200 * 1000, "\(String(describing: kb)) KB")
            #expect(s.contents == before)
        }
        // The same photo under the sample's shortest edge of 64 (64 × 3072 pixels) is fine.
        r = try CLI.run(["personalize", "--hypernet", s.file("ok.lidb"), "--base", s.file("base.lidb"), "--image", s.file("thin.png"), "-o", s.file("out.lidb")])
        #expect(r.status == 0 && FileManager.default.fileExists(atPath: s.file("out.lidb")), "\(r.stderr)")
    }
}
