import Foundation
import Testing
@testable import TensorFile

/// Runs the built `lidb` executable (it sits next to the test bundle).
struct CLI {
    static let binary: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // Inside an .xctest bundle on some layouts: climb until `lidb` is found.
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("lidb").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "lidb"
    }()

    struct Result { var status: Int32; var stdout: String; var stderr: String }

    static func run(_ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("TensorFileTests/Fixtures").path

final class Scratch {
    let path = NSTemporaryDirectory() + "lidb-cli-" + UUID().uuidString
    init() { try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
    func file(_ n: String) -> String { path + "/" + n }
    var contents: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

@Suite(.serialized) struct CLITests {
    @Test func helpExplainsCommands() throws {
        let r = try CLI.run(["--help"])
        #expect(r.status == 0)
        for word in ["inspect", "verify", "convert"] { #expect(r.stdout.contains(word)) }
        let c = try CLI.run(["convert", "--help"])
        #expect(c.stdout.contains("--dtype") && c.stdout.contains("lossless") && c.stdout.contains("--no-sync"))
    }

    @Test func convertInspectVerifyRoundTrip() throws {
        let s = Scratch()
        let src = fixtures + "/safetensors/all_dtypes.safetensors"
        var r = try CLI.run(["convert", src, "-o", s.file("a.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["inspect", s.file("a.lidb"), "--json"])
        #expect(r.status == 0)
        let j = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        #expect(j["format"] as? String == "lidb")
        #expect(j["kind"] as? String == "tensors")
        #expect((j["metadata"] as? [String: String])?["format"] == "pt")
        let tensors = j["tensors"] as! [[String: Any]]
        #expect(tensors.count == 15)
        let u64 = tensors.first { $0["name"] as? String == "eta.u64" }!
        #expect(u64["dtype"] as? String == "U64" && u64["shape"] as? [Int] == [2, 3, 4] && u64["nbytes"] as? Int == 192)
        r = try CLI.run(["verify", s.file("a.lidb")])
        #expect(r.status == 0 && r.stdout.contains("OK"))
        r = try CLI.run(["convert", s.file("a.lidb"), "-o", s.file("b.safetensors")])
        #expect(r.status == 0)
        #expect(FileManager.default.contentsEqual(atPath: src, andPath: s.file("b.safetensors")))
        // --no-sync changes durability only, not the bytes.
        r = try CLI.run(["convert", src, "-o", s.file("c.lidb"), "--no-sync"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.contentsEqual(atPath: s.file("a.lidb"), andPath: s.file("c.lidb")))
        r = try CLI.run(["convert", s.file("c.lidb"), "-o", s.file("d.safetensors"), "--no-sync"])
        #expect(r.status == 0 && FileManager.default.contentsEqual(atPath: src, andPath: s.file("d.safetensors")))
        #expect(!s.contents.contains { $0.contains(".tmp-") })
        // Human output: summary plus a truncated table.
        r = try CLI.run(["inspect", fixtures + "/safetensors/sharded/model.safetensors.index.json"])
        #expect(r.status == 0 && r.stdout.contains("shards:    3") && r.stdout.contains("more (use --all)"))
        r = try CLI.run(["inspect", "--all", fixtures + "/safetensors/sharded/model.safetensors.index.json"])
        #expect(!r.stdout.contains("more (use --all)"))
    }

    @Test func verifyReportsDamageWithExitCodeOne() throws {
        let s = Scratch()
        _ = try CLI.run(["convert", fixtures + "/safetensors/scalars_empty.safetensors", "-o", s.file("a.lidb")])
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: s.file("a.lidb"))))
        bytes[bytes.count - 1] ^= 0x01  // last byte belongs to the last tensor
        try Data(bytes).write(to: URL(fileURLWithPath: s.file("bad.lidb")))
        var r = try CLI.run(["verify", s.file("bad.lidb")])
        #expect(r.status == 1)
        #expect(r.stderr.contains("checksum mismatch") && r.stderr.contains("bad.lidb"))
        bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: s.file("a.lidb"))))
        bytes[70] ^= 0x20  // inside the header
        try Data(bytes).write(to: URL(fileURLWithPath: s.file("bad2.lidb")))
        r = try CLI.run(["verify", s.file("bad2.lidb")])
        #expect(r.status == 1 && r.stderr.contains("header checksum mismatch"))
    }

    @Test func badInputGivesOneLineAndNoOutputFile() throws {
        let s = Scratch()
        try Data([8, 0, 0, 0, 0, 0, 0, 0] + Array("{\"a\":1}".utf8)).write(to: URL(fileURLWithPath: s.file("bad.safetensors")))
        let r = try CLI.run(["convert", s.file("bad.safetensors"), "-o", s.file("out.lidb")])
        #expect(r.status == 2)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("bad.safetensors"))
        #expect(s.contents == ["bad.safetensors"], "no output or temporary file")
        let missing = try CLI.run(["inspect", s.file("nope.lidb")])
        #expect(missing.status == 2 && missing.stderr.contains("nope.lidb") && missing.stderr.contains("No such file"))
        let ext = try CLI.run(["convert", fixtures + "/safetensors/scalars_empty.safetensors", "-o", s.file("x.bin")])
        #expect(ext.status == 2 && ext.stderr.contains("must end in .lidb or .safetensors"))
    }

    @Test func castingReportsOverflow() throws {
        let s = Scratch()
        let r = try CLI.run(["convert", fixtures + "/dtype/conversions.safetensors", "-o", s.file("h.safetensors"), "--dtype", "f16"])
        #expect(r.status == 0)
        #expect(r.stderr.contains("tensor 'f32.in'") && r.stderr.contains("overflowed"))
        let f = try SafetensorsFile(path: s.file("h.safetensors"))
        #expect(f.entry("f32.in")?.info.dtype == .F16)
        #expect(f.entry("f64.in")?.info.dtype == .F16)
    }
}

let baseFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("BaseTests/Fixtures").path

@Suite(.serialized) struct BaseCLITests {
    @Test func convertInspectExportABase() throws {
        let s = Scratch()
        let folder = baseFixtures + "/sd1/diffusers-safetensors"
        var r = try CLI.run(["inspect", folder])
        #expect(r.status == 0 && r.stdout.contains("format:    diffusers") && r.stdout.contains("unet.conv_in.weight"))
        r = try CLI.run(["convert", folder, "-o", s.file("base.lidb"), "--dtype", "f16"])
        #expect(r.status == 0 && r.stdout.contains("base, SD 1.x"), "\(r.stderr)")
        r = try CLI.run(["inspect", s.file("base.lidb"), "--json"])
        let j = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        #expect(j["kind"] as? String == "base")
        let md = j["metadata"] as! [String: Any]
        #expect(md["architecture"] as? String == "sd1" && md["prediction_type"] as? String == "epsilon")
        #expect(((md["fingerprints"] as? [String: String])?["content"]?.count ?? 0) == 64)
        r = try CLI.run(["export", s.file("base.lidb"), "--format", "diffusers", "-o", s.file("out")])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: s.file("out/unet/diffusion_pytorch_model.safetensors")))
        r = try CLI.run(["export", s.file("base.lidb"), "--format", "single-file", "-o", s.file("ldm.safetensors")])
        #expect(r.status == 0, "\(r.stderr)")
        // A single file without configs: converted with --config, warned about without a tokenizer.
        r = try CLI.run(["convert", s.file("ldm.safetensors"), "-o", s.file("again.lidb"), "--config", folder])
        #expect(r.status == 0 && !r.stderr.contains("no tokenizer"), "\(r.stderr)")
        r = try CLI.run(["convert", s.file("ldm.safetensors"), "-o", s.file("bare.lidb"), "--prediction-type", "v_prediction"])
        #expect(r.status == 0 && r.stderr.contains("no tokenizer"))
        let help = try CLI.run(["export", "--help"])
        #expect(help.stdout.contains("from_pretrained") && help.stdout.contains("single-file"))
    }

    @Test func unsupportedArchitecturesAreNamed() throws {
        let s = Scratch()
        let t = TensorInfo(name: "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", dtype: .F32, shape: [2])
        let u = TensorInfo(name: "model.diffusion_model.input_blocks.0.0.weight", dtype: .F32, shape: [2, 4, 1, 1])
        try SafetensorsWriter.write(to: s.file("xl.safetensors"), tensors: [.array(t, [UInt8](repeating: 0, count: 8)), .array(u, [UInt8](repeating: 0, count: 32))], metadata: nil)
        let r = try CLI.run(["convert", s.file("xl.safetensors"), "-o", s.file("xl.lidb")])
        #expect(r.status == 2 && r.stderr.contains("not supported yet: SDXL") && r.stderr.contains("xl.safetensors"))
        #expect(!FileManager.default.fileExists(atPath: s.file("xl.lidb")))
        let opt = try CLI.run(["convert", fixtures + "/safetensors/scalars_empty.safetensors", "-o", s.file("x.lidb"), "--ema"])
        #expect(opt.status == 2 && opt.stderr.contains("apply only to Stable Diffusion"))
    }
}

@Suite(.serialized) struct SubjectCLITests {
    @Test func initMergeUnmergeInspect() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb"), "--dtype", "f16"])
        #expect(r.status == 0)
        r = try CLI.run(["subject", "init", "--base", s.file("base.lidb"), "--seed", "42", "--targets", "paper", "--std", "0.1",
                         "--name", "alice", "--trigger", "sks", "--class-name", "face", "-o", s.file("alice.lidb")])
        #expect(r.status == 0 && r.stdout.contains("140 layers"), "\(r.stderr)")
        r = try CLI.run(["inspect", s.file("alice.lidb")])
        #expect(r.stdout.contains("subject:   140 layers (targets: paper)") && r.stdout.contains("seed 42") && r.stdout.contains("binding:"))
        r = try CLI.run(["merge", s.file("base.lidb"), s.file("alice.lidb") + ":0.7", "-o", s.file("merged.lidb")])
        #expect(r.status == 0 && r.stdout.contains("merged into 140 layers"), "\(r.stderr)")
        r = try CLI.run(["unmerge", s.file("merged.lidb"), s.file("alice.lidb") + ":0.7", "--original", s.file("base.lidb"), "-o", s.file("restored.lidb")])
        #expect(r.status == 0 && r.stdout.contains("bit-exact"), "\(r.stderr)")
        r = try CLI.run(["unmerge", s.file("merged.lidb"), s.file("alice.lidb") + ":0.7", "-o", s.file("sub.lidb")])
        #expect(r.status == 0 && r.stdout.contains("deviation from the original ≤"))
        // The wrong weight, or a subject that was never merged, is refused.
        r = try CLI.run(["unmerge", s.file("merged.lidb"), s.file("alice.lidb") + ":0.5", "-o", s.file("x.lidb")])
        #expect(r.status == 2 && r.stderr.contains("not recorded as merged"))
        // A subject for another architecture is refused with what differs.
        _ = try CLI.run(["convert", baseFixtures + "/sd2/diffusers-safetensors", "-o", s.file("sd2.lidb")])
        r = try CLI.run(["merge", s.file("sd2.lidb"), s.file("alice.lidb"), "-o", s.file("y.lidb")])
        #expect(r.status == 2 && r.stderr.contains("made for sd1"))
        #expect(!FileManager.default.fileExists(atPath: s.file("y.lidb")))
    }
}

@Suite(.serialized) struct LoRACLITests {
    @Test func importProjectExport() throws {
        let s = Scratch()
        let lora = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("SubjectTests/Fixtures/lora").path
        _ = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb")])
        var r = try CLI.run(["subject", "import", lora + "/kohya.safetensors", "--base", s.file("base.lidb"), "-o", s.file("k.lidb")])
        #expect(r.status == 0 && r.stdout.contains("136 layers, rank 4"), "\(r.stderr)")
        r = try CLI.run(["subject", "import", lora + "/peft.safetensors", "--base", s.file("base.lidb"), "--project", "--down-dim", "3", "--up-dim", "3", "--seed", "9", "-o", s.file("p.lidb")])
        #expect(r.status == 0 && r.stdout.contains("projection: mean relative error"), "\(r.stderr)")
        r = try CLI.run(["inspect", s.file("p.lidb")])
        #expect(r.stdout.contains("LiDB rank 4") && r.stdout.contains("seed 9"))
        for f in ["kohya", "peft"] {
            r = try CLI.run(["subject", "export", s.file("k.lidb"), "--format", f, "-o", s.file("\(f).safetensors")])
            #expect(r.status == 0, "\(r.stderr)")
            r = try CLI.run(["subject", "import", s.file("\(f).safetensors"), "--base", s.file("base.lidb"), "-o", s.file("\(f)-again.lidb")])
            #expect(r.status == 0 && r.stdout.contains("136 layers"))
        }
        // A LoRA for another model: every key is listed as unknown.
        _ = try CLI.run(["convert", baseFixtures + "/sd2/diffusers-safetensors", "-o", s.file("sd2.lidb")])
        r = try CLI.run(["subject", "import", lora + "/kohya.safetensors", "--base", s.file("sd2.lidb"), "-o", s.file("x.lidb")])
        #expect(r.status == 2 && (r.stderr.contains("match no layer") || r.stderr.contains("do not fit")))
    }
}

@Suite(.serialized) struct GenerateCLITests {
    func pixels(_ path: String) throws -> [UInt8] {
        // The PNG's IDAT is compressed; compare decoded pixels through the library's own reader test
        // instead — here the files are compared whole after checking they are valid PNGs.
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    @Test func generateMergedAndLiveGiveTheSameImage() throws {
        let s = Scratch()
        _ = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb")])
        _ = try CLI.run(["subject", "init", "--base", s.file("base.lidb"), "--seed", "5", "--std", "0.5", "-o", s.file("s.lidb")])
        var r = try CLI.run(["generate", "--model", s.file("base.lidb"), "--subject", s.file("s.lidb") + ":0.9", "--prompt", "a photo of sks cat",
                             "--steps", "3", "--width", "64", "--height", "64", "--apply", "merge", "-o", s.file("merged.png")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["generate", "--model", s.file("base.lidb"), "--subject", s.file("s.lidb") + ":0.9", "--prompt", "a photo of sks cat",
                         "--steps", "3", "--width", "64", "--height", "64", "--apply", "live", "-o", s.file("live.png"), "--timings"])
        #expect(r.status == 0 && r.stdout.contains("unet_steps_s"), "\(r.stderr)")
        let a = try pixels(s.file("merged.png")), b = try pixels(s.file("live.png"))
        #expect(a.starts(with: [0x89, 0x50, 0x4E, 0x47]))
        // Same pixels, different 'Subject mode' in the text chunk: compare the IDAT chunk.
        func idat(_ p: [UInt8]) -> [UInt8] {
            var i = 8
            while i + 12 <= p.count {
                let n = Int(p[i]) << 24 | Int(p[i + 1]) << 16 | Int(p[i + 2]) << 8 | Int(p[i + 3])
                if p[(i + 4)..<(i + 8)].elementsEqual("IDAT".utf8) { return Array(p[(i + 8)..<(i + 8 + n)]) }
                i += 12 + n
            }
            return []
        }
        #expect(!idat(a).isEmpty && idat(a) == idat(b))
        r = try CLI.run(["tokenize", "--model", s.file("base.lidb"), "--json", "a photo"])
        #expect(r.status == 0 && r.stdout.contains("\"ids\""))
        r = try CLI.run(["generate", "--model", s.file("base.lidb"), "--prompt", "x", "--width", "63", "-o", s.file("bad.png")])
        #expect(r.status == 2 && r.stderr.contains("multiples of 8"))
    }
}
