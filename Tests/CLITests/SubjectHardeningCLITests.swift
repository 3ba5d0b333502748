import Crypto
import Foundation
import Testing
@testable import TensorFile

/// Hostile subjects built from a valid one made by `lidb subject init`, rewritten through the
/// container writer with altered metadata or tensors (targets fingerprint recomputed).
struct SubjectRewrite {
    var metadata: JSONValue
    var tensors: [TensorSource]

    init(_ path: String) throws {
        let f = try LidbFile(path: path)
        metadata = f.metadata
        tensors = try f.tensors.map { TensorSource.bytes($0, try f.tensorBytes($0.name)) }
    }

    static func fingerprint(_ rows: [JSONValue]) -> String {
        var text = ""
        for r in rows {
            let shape = r["shape"]?.arrayValue ?? []
            text += (r["name"]?.stringValue ?? "") + "\t" + shape.map { $0.serializedString }.joined(separator: ",") + "\n"
        }
        return SHA256.hash(data: Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    mutating func setRows(_ rows: [JSONValue]) {
        metadata = metadata.setting("layers", .array(rows))
        let binding = metadata["binding"] ?? .object([])
        metadata = metadata.setting("binding", binding.setting("targets_fingerprint", .string(Self.fingerprint(rows))))
    }

    var rows: [JSONValue] { metadata["layers"]?.arrayValue ?? [] }

    mutating func replace(_ name: String, dtype: DType, _ bytes: [UInt8]) {
        tensors = tensors.map { t in
            guard t.info.name == name else { return t }
            return .array(TensorInfo(name: name, dtype: dtype, shape: t.info.shape), bytes)
        }
    }

    func write(_ path: String) throws -> String {
        try LidbWriter.write(to: path, kind: "subject", metadata: metadata, tensors: tensors)
        return path
    }
}

/// Exactly one line on stderr, exit 2, the file named, and no output or temporary file.
func expectOneLineRefusal(_ r: CLI.Result, naming words: [String], output: String?, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status == 2, "exit \(r.status): \(r.stderr)", sourceLocation: sourceLocation)
    let lines = r.stderr.split(separator: "\n")
    #expect(lines.count == 1, "\(r.stderr)", sourceLocation: sourceLocation)
    for w in words { #expect(r.stderr.contains(w), "'\(w)' not in: \(r.stderr)", sourceLocation: sourceLocation) }
    if let output {
        let dir = (output as NSString).deletingLastPathComponent, name = (output as NSString).lastPathComponent
        #expect(!FileManager.default.fileExists(atPath: output), "output exists", sourceLocation: sourceLocation)
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("." + name + ".tmp-") }
        #expect(left.isEmpty, "temporary files: \(left)", sourceLocation: sourceLocation)
    }
}

func f32Data(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

/// Runs `lidb` under /usr/bin/time -v and returns the result and the peak RSS in KiB (nil without time).
func runMeasured(_ args: [String]) throws -> (CLI.Result, Int?) {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/time") else { return (try CLI.run(args), nil) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/time")
    p.arguments = ["-v", CLI.binary] + args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: e, as: UTF8.self)
    var own: [String] = [], rss: Int? = nil
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("\t") {
            if line.contains("Maximum resident set size (kbytes):") { rss = Int(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) }
        } else if !line.hasPrefix("Command exited with non-zero status") && !line.isEmpty {
            own.append(String(line))
        }
    }
    let status: Int32 = text.contains("Exit status: 2") ? 2 : text.contains("Exit status: 0") ? 0 : p.terminationStatus
    return (CLI.Result(status: status, stdout: String(decoding: o, as: UTF8.self), stderr: own.joined(separator: "\n") + (own.isEmpty ? "" : "\n")), rss)
}

@Suite(.serialized) struct SubjectHardeningCLITests {
    func base(_ s: Scratch, dtype: String = "f32") throws -> String {
        let r = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb"), "--dtype", dtype])
        #expect(r.status == 0, "\(r.stderr)")
        return s.file("base.lidb")
    }

    func initSubject(_ s: Scratch, base: String, name: String, targets: String = "paper", seed: Int, dtype: String = "f32") throws -> String {
        let r = try CLI.run(["subject", "init", "--base", base, "--targets", targets, "--seed", "\(seed)", "--std", "0.2", "--down-dim", "4", "--up-dim", "3",
                             "--dtype", dtype, "--name", name, "-o", s.file(name + ".lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        return s.file(name + ".lidb")
    }

    /// Item 1: a subject whose layer shape and basis size overflow 64-bit products (fingerprint
    /// recomputed) is refused in one line by merge, export, inspect and generate; nothing is written.
    @Test func overflowingLayerTablesAreRefusedEverywhere() throws {
        let s = Scratch()
        let base = try base(s)
        var h = try SubjectRewrite(try initSubject(s, base: base, name: "s", targets: "unet-attn", seed: 3))
        var rows = h.rows
        rows[0] = rows[0].setting("shape", .array([.int(UInt64(1) << 62), .int(UInt64(1) << 62)]))
            .setting("lidb", .object([("rank", .int(1024)), ("a", .int(UInt64(1) << 60)), ("b", .int(1)), ("alpha", .double(1))]))
        h.setRows(rows)
        let bad = try h.write(s.file("huge.lidb"))
        let layer = rows[0]["name"]!.stringValue!
        var r = try CLI.run(["merge", base, bad, "-o", s.file("m.lidb")])
        expectOneLineRefusal(r, naming: ["huge.lidb", layer, "each dimension must be 1 … 65536"], output: s.file("m.lidb"))
        r = try CLI.run(["subject", "export", bad, "--format", "kohya", "-o", s.file("k.safetensors")])
        expectOneLineRefusal(r, naming: ["huge.lidb", layer], output: s.file("k.safetensors"))
        r = try CLI.run(["inspect", bad])
        expectOneLineRefusal(r, naming: ["huge.lidb", layer], output: nil)
        r = try CLI.run(["generate", "--model", base, "--subject", bad, "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", "-o", s.file("g.png")])
        expectOneLineRefusal(r, naming: ["huge.lidb", layer], output: s.file("g.png"))
    }

    /// Item 4 (subject export): a few-KB subject whose layers would need terabytes when exported is
    /// refused with the estimate before allocating (peak RSS measured when /usr/bin/time exists).
    @Test func exportRefusesWhatWouldNotFitInMemory() throws {
        let s = Scratch()
        let n = 2048
        var rows: [JSONValue] = []
        for i in 0..<n {
            rows.append(.object([("name", .string("unet.l\(i).attn1.to_q")), ("shape", .array([.int(65536), .int(4096)])),
                                 ("lidb", .object([("rank", .int(1024)), ("a", .int(1)), ("b", .int(1)), ("alpha", .double(1))]))]))
        }
        let md = JSONValue.object([
            ("lidb_subject", .int(1)), ("targets", .string("custom")),
            ("binding", .object([("architecture", .string("sd1")), ("targets_fingerprint", .string(SubjectRewrite.fingerprint(rows)))])),
            ("basis", .object([("generator", .string("lidb-basis-1")), ("seed", .int(1))])), ("dtype", .string("q8")),
            ("trained_parameters", .int(n * 2048)), ("info", .object([])), ("layers", .array(rows)),
        ])
        let zeros = [UInt8](repeating: 0, count: n * 1024), ones = f32Data([Float](repeating: 1, count: n))
        try LidbWriter.write(to: s.file("wide.lidb"), kind: "subject", metadata: md, tensors: [
            .array(TensorInfo(name: "lidb.down_train", dtype: .I8, shape: [n * 1024]), zeros),
            .array(TensorInfo(name: "lidb.up_train", dtype: .I8, shape: [n * 1024]), zeros),
            .array(TensorInfo(name: "lidb.down_train.scale", dtype: .F32, shape: [n]), ones),
            .array(TensorInfo(name: "lidb.up_train.scale", dtype: .F32, shape: [n]), ones),
        ], options: .init(encoding: .zstdIfSmaller(level: 19), compressHeader: true))
        let size = try FileManager.default.attributesOfItem(atPath: s.file("wide.lidb"))[.size] as! Int
        let (r, rss) = try runMeasured(["subject", "export", s.file("wide.lidb"), "--format", "peft", "-o", s.file("wide.safetensors")])
        expectOneLineRefusal(r, naming: ["wide.lidb", "would need about", "TiB", "the limit is"], output: s.file("wide.safetensors"))
        print("subject export of a \(size)-byte subject refused; peak RSS \(rss.map { "\($0 / 1024) MiB" } ?? "not measured")")
        if let rss { #expect(rss < 200 * 1024) }
    }

    /// Item 6: non-finite weights, factors, alpha and q8 scales are refused by merge (one line,
    /// exit 2, no output); the damaged subjects fail `verify`.
    @Test func mergeRefusesNonFiniteInput() throws {
        let s = Scratch()
        let base = try base(s, dtype: "f16")
        let subject = try initSubject(s, base: base, name: "s", seed: 5)
        let out = s.file("m.lidb")
        for w in ["nan", "inf", "-inf", "1e30", "1e308", "101"] {
            let r = try CLI.run(["merge", base, subject + ":" + w, "-o", out])
            expectOneLineRefusal(r, naming: ["s.lidb", "weight \(w)"], output: out)
        }
        let valid = try SubjectRewrite(subject)
        var hostile: [(String, SubjectRewrite, [String])] = []
        var h = valid
        let nDown = h.tensors.first { $0.info.name == "lidb.down_train" }!.info.elementCount
        h.replace("lidb.down_train", dtype: .F32, f32Data([Float.nan] + [Float](repeating: 0.01, count: nDown - 1)))
        hostile.append(("nan-factor", h, ["lidb.down_train", "finite"]))
        h = valid
        h.setRows(h.rows.enumerated().map { i, r in i == 0 ? r.setting("lidb", r["lidb"]!.setting("alpha", .number("1e308"))) : r })
        hostile.append(("alpha", h, ["alpha", "not finite as a 32-bit float"]))
        var q = try SubjectRewrite(try initSubject(s, base: base, name: "q", seed: 6, dtype: "q8"))
        let layers = q.rows.count
        q.replace("lidb.up_train.scale", dtype: .F32, f32Data([3e38] + [Float](repeating: 0.01, count: layers - 1)))
        hostile.append(("scale", q, ["lidb.up_train.scale", "q8 scales"]))
        for (label, h, words) in hostile {
            let p = try h.write(s.file(label + ".lidb"))
            let r = try CLI.run(["merge", base, p, "-o", out])
            expectOneLineRefusal(r, naming: [label + ".lidb"] + words, output: out)
            let v = try CLI.run(["verify", p])
            #expect(v.status == 1 && v.stderr.contains("damaged") && v.stderr.contains(label + ".lidb"), "\(v.stderr)")
        }
    }

    /// Item 18: inspect and verify refuse a subject whose targets fingerprint is wrong.
    @Test func inspectAndVerifyRefuseAWrongFingerprint() throws {
        let s = Scratch()
        let base = try base(s)
        var h = try SubjectRewrite(try initSubject(s, base: base, name: "s", seed: 8))
        h.metadata = h.metadata.setting("binding", h.metadata["binding"]!.setting("targets_fingerprint", .string(String(repeating: "0", count: 64))))
        let p = try h.write(s.file("fp.lidb"))
        let i = try CLI.run(["inspect", p])
        expectOneLineRefusal(i, naming: ["fp.lidb", "fingerprint"], output: nil)
        let v = try CLI.run(["verify", p])
        #expect(v.status == 1 && v.stderr.contains("fp.lidb") && v.stderr.contains("fingerprint"), "\(v.stderr)")
        let ok = try CLI.run(["verify", s.file("s.lidb")])
        #expect(ok.status == 0 && ok.stdout.contains("valid subject"))
    }

    /// Item 5: unmerging H with --original keeps R (merged with it, sharing layers): without R's
    /// file it is refused naming R; with --reapply the result is byte-identical to merging only R.
    @Test func unmergeWithOriginalKeepsTheOtherSubjects() throws {
        let s = Scratch()
        let base = try base(s, dtype: "f16")
        let hp = try initSubject(s, base: base, name: "h", seed: 11)
        let rp = try initSubject(s, base: base, name: "r", targets: "unet-attn", seed: 12)
        var r = try CLI.run(["merge", base, hp + ":0.8", rp, "-o", s.file("hr.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["merge", base, rp, "-o", s.file("only-r.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        let out = s.file("u.lidb")
        r = try CLI.run(["unmerge", s.file("hr.lidb"), hp + ":0.8", "--original", base, "-o", out])
        expectOneLineRefusal(r, naming: ["hr.lidb", "r.lidb", "--reapply"], output: out)
        r = try CLI.run(["unmerge", s.file("hr.lidb"), hp + ":0.8", "--original", base, "--reapply", rp, "-o", out])
        #expect(r.status == 0 && r.stdout.contains("bit-exact") && r.stdout.contains("1 remaining subject(s) re-applied"), "\(r.stdout) \(r.stderr)")
        #expect(FileManager.default.contentsEqual(atPath: out, andPath: s.file("only-r.lidb")))
        // A wrong weight for the re-applied subject is refused.
        r = try CLI.run(["unmerge", s.file("hr.lidb"), hp + ":0.8", "--original", base, "--reapply", rp + ":0.5", "-o", s.file("w.lidb")])
        expectOneLineRefusal(r, naming: ["--reapply"], output: s.file("w.lidb"))
    }

    /// Item 16: `subject import` keeps the LoRA's precision by default and says when a chosen
    /// dtype rounds the factors.
    @Test func importKeepsThePrecisionByDefault() throws {
        let s = Scratch()
        let base = try base(s)
        let b = try LidbFile(path: base)
        let t = b.tensors.first { $0.name.hasSuffix("attn1.to_q.weight") && $0.name.hasPrefix("unet.") }!
        let layer = String(t.name.dropLast(".weight".count))
        let (out, inDim) = (t.shape[0], t.shape[1])
        // Values that F16 cannot hold exactly.
        let down = (0..<(2 * inDim)).map { Float($0 + 1) * 0.0123457 }, up = (0..<(out * 2)).map { Float($0 + 1) * -0.000987654 }
        try SafetensorsWriter.write(to: s.file("lora.safetensors"), tensors: [
            .array(TensorInfo(name: layer + ".lora_A.weight", dtype: .F32, shape: [2, inDim]), f32Data(down)),
            .array(TensorInfo(name: layer + ".lora_B.weight", dtype: .F32, shape: [out, 2]), f32Data(up)),
        ], metadata: nil)
        var r = try CLI.run(["subject", "import", s.file("lora.safetensors"), "--base", base, "-o", s.file("keep.lidb")])
        #expect(r.status == 0 && r.stdout.contains("f32") && !r.stderr.contains("note"), "\(r.stdout) \(r.stderr)")
        let keep = try LidbFile(path: s.file("keep.lidb"))
        #expect(keep.metadata["dtype"]?.stringValue == "f32")
        #expect(try keep.tensorBytes("lora.\(layer).down").array == f32Data(down))
        #expect(try keep.tensorBytes("lora.\(layer).up").array == f32Data(up))
        r = try CLI.run(["subject", "import", s.file("lora.safetensors"), "--base", base, "--dtype", "f16", "-o", s.file("f16.lidb")])
        #expect(r.status == 0 && r.stderr.contains("note:") && r.stderr.contains("F32 LoRA factors as f16 rounds them"), "\(r.stderr)")
        // An F16 LoRA is kept as f16, without a note.
        let h16 = { (v: [Float]) -> [UInt8] in v.flatMap { x -> [UInt8] in let h = Float16(x).bitPattern; return [UInt8(h & 0xFF), UInt8(h >> 8)] } }
        try SafetensorsWriter.write(to: s.file("lora16.safetensors"), tensors: [
            .array(TensorInfo(name: layer + ".lora_A.weight", dtype: .F16, shape: [2, inDim]), h16(down)),
            .array(TensorInfo(name: layer + ".lora_B.weight", dtype: .F16, shape: [out, 2]), h16(up)),
        ], metadata: nil)
        r = try CLI.run(["subject", "import", s.file("lora16.safetensors"), "--base", base, "-o", s.file("k16.lidb")])
        #expect(r.status == 0 && !r.stderr.contains("note"), "\(r.stderr)")
        let k16 = try LidbFile(path: s.file("k16.lidb"))
        #expect(k16.metadata["dtype"]?.stringValue == "f16")
        #expect(try k16.tensorBytes("lora.\(layer).down").array == h16(down))
    }
}
