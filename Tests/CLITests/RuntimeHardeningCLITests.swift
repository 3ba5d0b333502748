import Foundation
import Testing
@testable import TensorFile

/// `lidb generate` and `lidb bench unet` with hostile requests and bases (each made here from the
/// tiny SD 1.x fixture): one line on stderr naming the option or field, exit 2, no output and no
/// temp file, and — for requests refused as too large — a small process.
@Suite(.serialized) struct RuntimeHardeningCLITests {
    static let vaeDepthFixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("DiffusionTests/Fixtures/vae_depth/vae").path

    /// Runs `lidb` with extra environment variables; `wrapper` (e.g. `/usr/bin/time -v`) runs it.
    static func run(_ args: [String], environment: [String: String] = [:], wrapper: [String] = []) throws -> CLI.Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: wrapper.first ?? CLI.binary)
        p.arguments = wrapper.isEmpty ? args : Array(wrapper.dropFirst()) + [CLI.binary] + args
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "LIDB_MEMORY_LIMIT")
        for (k, v) in environment { env[k] = v }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLI.Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    /// A converted tiny SD 1.x base and an f32 subject for it.
    static func setUp(_ s: Scratch) throws {
        var r = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["subject", "init", "--base", s.file("base.lidb"), "--seed", "5", "--std", "0.5", "--dtype", "f32", "-o", s.file("s.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
    }

    /// Rewrites a lidb file with metadata and tensor values edited (f32 tensors).
    static func rewrite(_ from: String, to: String, metadata edit: (JSONValue) -> JSONValue = { $0 },
                        tensors: [String: (inout [Float]) -> Void] = [:]) throws {
        let f = try LidbFile(path: from)
        let sources = try f.tensors.map { (t) throws -> TensorSource in
            guard let change = tensors[t.name] else { return TensorSource.bytes(t, try f.tensorBytes(t.name)) }
            #expect(t.dtype == .F32)
            var v = try f.tensorBytes(t.name).bytes.withMemoryRebound(to: Float.self) { Array($0) }
            change(&v)
            return TensorSource.array(t, v.withUnsafeBytes { Array($0) })
        }
        try LidbWriter.write(to: to, kind: f.kind, metadata: edit(f.metadata), tensors: sources)
    }

    static func config(_ component: String, _ key: String, _ value: JSONValue) -> (JSONValue) -> JSONValue {
        { md in
            let comps = md["components"]!, comp = comps[component]!
            return md.setting("components", comps.setting(component, comp.setting("config", comp["config"]!.setting(key, value))))
        }
    }

    /// Exit 2, a single `lidb: error:` line containing `words`, and the folder unchanged.
    static func expectRefused(_ r: CLI.Result, _ words: [String], in s: Scratch, before: [String], _ what: String) {
        #expect(r.status == 2, "\(what): exit \(r.status), \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1 && r.stderr.hasPrefix("lidb: error: "), "\(what): \(r.stderr)")
        for w in words { #expect(r.stderr.contains(w), "\(what): '\(w)' not in \(r.stderr)") }
        #expect(s.contents == before, "\(what): left \(Set(s.contents).subtracting(before))")
    }

    func generate(_ s: Scratch, model: String = "base.lidb", _ extra: [String], environment: [String: String] = [:]) throws -> CLI.Result {
        try Self.run(["generate", "--model", s.file(model), "--prompt", "a photo of sks cat", "--steps", "2", "--width", "64", "--height", "64",
                      "-o", s.file("out.png")] + extra, environment: environment)
    }

    @Test func outOfRangeOptionsAreRefusedByName() throws {
        let s = Scratch()
        try Self.setUp(s)
        let before = s.contents
        let cases: [([String], [String: String], [String])] = [
            (["--cfg", "inf"], [:], ["--cfg", "inf"]),
            (["--cfg", "nan"], [:], ["--cfg", "nan"]),
            (["--cfg", "1e30"], [:], ["--cfg"]),
            (["--subject", s.file("s.lidb") + ":nan"], [:], ["s.lidb", "weight"]),
            (["--subject", s.file("s.lidb") + ":inf"], [:], ["s.lidb", "weight"]),
            (["--subject", s.file("s.lidb") + ":1e30"], [:], ["s.lidb", "weight"]),
            (["--subject", s.file("s.lidb") + ":-1e5"], [:], ["s.lidb", "weight"]),
            (["--width", "100000"], [:], ["--width", "100000"]),
            (["--height", "0"], [:], ["--height"]),
            (["--width", "60"], [:], ["--width", "multiples of 8"]),
            (["--steps", "5000"], [:], ["--steps", "num_train_timesteps"]),
            (["--batch", "100000000"], [:], ["would need about", "TiB", "limit"]),
            (["--memory-limit", "1M"], [:], ["would need about", "the limit is 1.0 MiB"]),
            (["--memory-limit", "lots"], [:], ["--memory-limit", "lots"]),
            ([], ["LIDB_MEMORY_LIMIT": "2M"], ["would need about", "the limit is 2.0 MiB"]),
            ([], ["LIDB_MEMORY_LIMIT": "-3"], ["LIDB_MEMORY_LIMIT"]),
        ]
        for (args, env, words) in cases {
            Self.expectRefused(try generate(s, args, environment: env), words, in: s, before: before, args.joined(separator: " ") + "\(env)")
        }
    }

    @Test func hostileBaseConfigsAreRefusedByField() throws {
        let s = Scratch()
        try Self.setUp(s)
        let cases: [(String, String, JSONValue, String)] = [
            ("unet", "norm_eps", .int(-1), "components.unet.config.norm_eps"),
            ("unet", "block_out_channels", .array([4, 6, 8, 1_000_000].map { .int($0) }), "components.unet.config.block_out_channels[3]"),
            ("vae", "scaling_factor", .int(0), "components.vae.config.scaling_factor"),
            ("vae", "block_out_channels", .array([2, 4, 6, 100_000].map { .int($0) }), "components.vae.config.block_out_channels[3]"),
            ("text_encoder", "layer_norm_eps", .number("-1e-5"), "components.text_encoder.config.layer_norm_eps"),
            ("scheduler", "num_train_timesteps", .number("1e12"), "components.scheduler.config.num_train_timesteps"),
            ("scheduler", "trained_betas", .array((0..<10).map { _ in .number("0.01") }), "components.scheduler.config.trained_betas"),
            ("unet", "layers_per_block", .int(1 << 40), "components.unet.config.layers_per_block"),
        ]
        for (component, key, value, field) in cases {
            try Self.rewrite(s.file("base.lidb"), to: s.file("bad.lidb"), metadata: Self.config(component, key, value))
            let before = s.contents
            Self.expectRefused(try generate(s, model: "bad.lidb", []), [field, "bad.lidb"], in: s, before: before, "\(component).\(key)")
            let r = try Self.run(["bench", "unet", "--model", s.file("bad.lidb"), "--latent", "8", "--batch", "1", "--repeat", "1"])
            Self.expectRefused(r, [field], in: s, before: before, "bench \(component).\(key)")
        }
    }

    /// A scheduler config whose DPM-Solver schedule repeats its first timestep (found by the
    /// semantic fuzz target: lambda_min_clipped 16 clips every training timestep, and
    /// `--sampler dpmpp_2m` trapped "step past the end of the schedule"): refused before the
    /// model is loaded, one line naming the config field and the steps, no output. Other
    /// samplers, which do not clip, still generate from the same base.
    @Test func schedulesThatRepeatTheirFirstTimestepAreRefused() throws {
        let s = Scratch()
        try Self.setUp(s)
        try Self.rewrite(s.file("base.lidb"), to: s.file("clipped.lidb"), metadata: Self.config("scheduler", "lambda_min_clipped", .int(16)))
        let before = s.contents
        for steps in ["3", "2"] {
            let r = try Self.run(["generate", "--model", s.file("clipped.lidb"), "--prompt", "x", "--steps", steps, "--width", "64", "--height", "64",
                                  "--sampler", "dpmpp_2m", "-o", s.file("out.png")])
            print("lambda_min_clipped 16, \(steps) steps: \(r.stderr)", terminator: "")
            Self.expectRefused(r, ["clipped.lidb", "components.scheduler.config", "dpmpp_2m", "\(steps) steps of DPMSolverMultistepScheduler",
                                   "lambda_min_clipped 16"], in: s, before: before, "lambda_min_clipped 16, \(steps) steps")
        }
        let ok = try generate(s, model: "clipped.lidb", ["--sampler", "euler", "--cfg", "1"])
        #expect(ok.status == 0 && FileManager.default.fileExists(atPath: s.file("out.png")), "\(ok.stderr)")
    }

    /// `--batch N` writes OUT-1.png … OUT-N.png: every one is checked before the model is loaded
    /// (only `-o` was: a folder named like the second image was found after generating the batch
    /// and writing the first image).
    @Test func everyBatchOutputIsCheckedBeforeWork() throws {
        let s = Scratch()
        try Self.setUp(s)
        try FileManager.default.createDirectory(atPath: s.file("out-2.png"), withIntermediateDirectories: false)
        var before = s.contents
        var r = try generate(s, ["--batch", "3", "--cfg", "1"])
        Self.expectRefused(r, ["out-2.png", "folder"], in: s, before: before, "out-2.png is a folder")
        try FileManager.default.removeItem(atPath: s.file("out-2.png"))
        #expect(mkfifo(s.file("out-3.png"), 0o644) == 0)
        before = s.contents
        r = try generate(s, ["--batch", "3", "--cfg", "1"])
        Self.expectRefused(r, ["out-3.png", "FIFO"], in: s, before: before, "out-3.png is a FIFO")
        try FileManager.default.removeItem(atPath: s.file("out-3.png"))
        // A subject named like an image of the batch is an input, not an output.
        try FileManager.default.copyItem(atPath: s.file("s.lidb"), toPath: s.file("out-2.png"))
        before = s.contents
        r = try generate(s, ["--batch", "2", "--cfg", "1", "--subject", s.file("out-2.png")])
        Self.expectRefused(r, ["out-2.png", "input"], in: s, before: before, "out-2.png is an input")
        try FileManager.default.removeItem(atPath: s.file("out-2.png"))
        // With nothing in the way, the batch is written under those names; `.png` inside a
        // folder's name is kept (it was replaced everywhere in the path).
        try FileManager.default.createDirectory(atPath: s.file("a.png.d"), withIntermediateDirectories: false)
        r = try Self.run(["generate", "--model", s.file("base.lidb"), "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64",
                          "--cfg", "1", "--batch", "2", "-o", s.file("a.png.d/out.png")])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: s.file("a.png.d"))) ?? []).sorted() == ["out-1.png", "out-2.png"])
    }

    @Test func nonFiniteGenerationsWriteNothing() throws {
        let s = Scratch()
        try Self.setUp(s)
        // NaN in a UNet weight: caught after the first sampler step.
        try Self.rewrite(s.file("base.lidb"), to: s.file("nan.lidb"), tensors: ["unet.conv_out.bias": { $0[2] = .nan }])
        var before = s.contents
        let nan = try generate(s, model: "nan.lidb", [])
        print("NaN weight: \(nan.stderr)", terminator: "")
        Self.expectRefused(nan, ["sampler step 1 of 2", "non-finite"], in: s, before: before, "NaN weight")
        // A subject whose factors are NaN, merged or live.
        try Self.rewrite(s.file("s.lidb"), to: s.file("s-nan.lidb"), tensors: ["lidb.down_train": { $0[0] = .nan; $0[7] = .nan }])
        before = s.contents
        for mode in ["merge", "live"] {
            let r = try generate(s, ["--subject", s.file("s-nan.lidb"), "--apply", mode])
            print("NaN subject, \(mode): \(r.stderr)", terminator: "")
            #expect(r.stderr.contains("s-nan.lidb") || r.stderr.contains("non-finite"), "\(mode): \(r.stderr)")
            Self.expectRefused(r, [], in: s, before: before, "NaN subject, \(mode)")
        }
        // Good input still runs: a finite weight, no guidance.
        let ok = try generate(s, ["--cfg", "1", "--subject", s.file("s.lidb") + ":2.5"])
        #expect(ok.status == 0 && FileManager.default.fileExists(atPath: s.file("out.png")), "\(ok.stderr)")
    }

    /// Refused oversized requests never grow: peak RSS (GNU time's "Maximum resident set size")
    /// stays under 200 MB.
    @Test func refusedRequestsStaySmall() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/time") else { return }
        let s = Scratch()
        try Self.setUp(s)
        try Self.rewrite(s.file("base.lidb"), to: s.file("huge-schedule.lidb"), metadata: Self.config("scheduler", "num_train_timesteps", .number("1e12")))
        let base = ["--model", s.file("base.lidb"), "--prompt", "x", "-o", s.file("out.png")]
        let requests: [(String, [String])] = [
            ("16384×16384 within 8 GiB", ["generate"] + base + ["--width", "16384", "--height", "16384", "--memory-limit", "8G"]),
            ("batch of 10^8", ["generate"] + base + ["--batch", "100000000"]),
            ("width 100000", ["generate"] + base + ["--width", "100000"]),
            ("10^12 training timesteps", ["generate", "--model", s.file("huge-schedule.lidb"), "--prompt", "x", "-o", s.file("out.png")]),
            ("bench unet 2048² × 64 within 1 GiB", ["bench", "unet", "--model", s.file("base.lidb"), "--latent", "2048", "--batch", "64", "--memory-limit", "1G"]),
        ]
        for (what, args) in requests {
            let r = try Self.run(args, wrapper: ["/usr/bin/time", "-v"])
            #expect(r.status == 2, "\(what): \(r.stderr)")
            let line = r.stderr.split(separator: "\n").first { $0.contains("Maximum resident set size") }
            let kb = line.flatMap { Int($0.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) }
            print("refused \(what): peak RSS \(kb.map { "\($0 / 1024) MiB" } ?? "?")")
            #expect(kb != nil && kb! < 200 * 1000, "\(what): \(String(describing: kb)) KB")
            #expect(!FileManager.default.fileExists(atPath: s.file("out.png")))
        }
    }

    static func pngSize(_ path: String) throws -> (Int, Int) {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func be(_ i: Int) -> Int { Int(b[i]) << 24 | Int(b[i + 1]) << 16 | Int(b[i + 2]) << 8 | Int(b[i + 3]) }
        return (be(16), be(20))
    }

    /// A base whose VAE has 2 blocks (2 pixels per latent): images have the requested size.
    @Test func imageSizeFollowsTheVAEDepth() throws {
        let s = Scratch()
        let fm = FileManager.default
        try fm.copyItem(atPath: baseFixtures + "/sd1/diffusers-safetensors", toPath: s.file("pipeline"))
        try fm.removeItem(atPath: s.file("pipeline/vae"))
        try fm.copyItem(atPath: Self.vaeDepthFixture, toPath: s.file("pipeline/vae"))
        var r = try CLI.run(["convert", s.file("pipeline"), "-o", s.file("vae2.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        for (w, h) in [(32, 32), (34, 24)] {
            r = try Self.run(["generate", "--model", s.file("vae2.lidb"), "--prompt", "x", "--steps", "1", "--width", "\(w)", "--height", "\(h)",
                              "-o", s.file("v.png")])
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try Self.pngSize(s.file("v.png")) == (w, h))
        }
        let before = s.contents
        Self.expectRefused(try Self.run(["generate", "--model", s.file("vae2.lidb"), "--prompt", "x", "--width", "33", "-o", s.file("odd.png")]),
                           ["--width", "multiples of 2"], in: s, before: before, "odd width")
        r = try Self.run(["bench", "unet", "--model", s.file("vae2.lidb"), "--latent", "8", "--batch", "1", "--repeat", "1"])
        #expect(r.status == 0 && r.stdout.contains("\"image_size\":16"), "\(r.stdout) \(r.stderr)")
        // bf16 products: the run says which precision it used; where the CPU lacks AVX-512 BF16
        // it notices that on stderr and runs in f32.
        r = try Self.run(["bench", "unet", "--model", s.file("vae2.lidb"), "--latent", "8", "--batch", "1", "--repeat", "1", "--precision", "bf16"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\"precision\":\"bf16\"") != r.stderr.contains("notice: bf16 compute needs"), "\(r.stdout) \(r.stderr)")
        // A CPU without AVX-512 BF16, as oneDNN's dispatcher sees it when capped below that ISA:
        // the notice, and f32 (no illegal instruction).
        r = try Self.run(["bench", "unet", "--model", s.file("vae2.lidb"), "--latent", "8", "--batch", "1", "--repeat", "1", "--precision", "bf16"],
                         environment: ["ONEDNN_MAX_CPU_ISA": "AVX512_CORE"])
        #expect(r.status == 0 && r.stdout.contains("\"precision\":\"f32\""), "\(r.stdout) \(r.stderr)")
        #expect(r.stderr == "lidb: notice: bf16 compute needs a CPU with AVX-512 BF16 and oneDNN; computing in f32\n", "\(r.stderr)")
        r = try Self.run(["generate", "--model", s.file("vae2.lidb"), "--prompt", "x", "--steps", "1", "--width", "32", "--height", "32",
                          "--precision", "bf16", "-o", s.file("b.png")])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Self.pngSize(s.file("b.png")) == (32, 32))
        Self.expectRefused(try Self.run(["generate", "--model", s.file("vae2.lidb"), "--prompt", "x", "--precision", "f8", "-o", s.file("f8.png")]),
                           ["--precision"], in: s, before: s.contents, "unknown precision")
        r = try Self.run(["generate", "--help"])
        #expect(r.stdout.contains("VAE scale factor"))
    }

    @Test func benchUnetChecksItsRequest() throws {
        let s = Scratch()
        try Self.setUp(s)
        let before = s.contents
        for (args, words) in [(["--latent", "0"], ["--latent"]), (["--latent", "5000"], ["--latent"]), (["--batch", "0"], ["--batch"]),
                              (["--timestep", "nan"], ["--timestep"]), (["--batch", "100000000"], ["would need about"])] {
            let r = try Self.run(["bench", "unet", "--model", s.file("base.lidb"), "--repeat", "1"] + args)
            Self.expectRefused(r, words, in: s, before: before, args.joined(separator: " "))
        }
    }
}
