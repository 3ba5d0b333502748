import Foundation
import Testing
@testable import TensorFile

#if canImport(Glibc)
import Glibc
#endif

/// The command line against hostile files, paths, signals and arguments (issue 12, items 7–12, 20).
@Suite(.serialized) struct HardeningIOCLITests {
    // MARK: Helpers

    /// Starts `lidb` with stderr going to a file (read while the process runs).
    static func start(_ args: [String], stderr: String, environment: [String: String] = [:]) throws -> Process {
        FileManager.default.createFile(atPath: stderr, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: stderr)
        try p.run()
        return p
    }

    /// Waits until `file` holds a line starting with `prefix` and returns the rest of that line.
    static func waitForLine(_ prefix: String, in file: String, seconds: Double = 120) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) { return String(line.dropFirst(prefix.count)) }
            usleep(10_000)
        }
        return nil
    }

    /// `CLI.run` with a watchdog: a command that blocks is killed and reported instead of hanging.
    static func runBounded(_ args: [String], seconds: Double = 60) throws -> CLI.Result {
        let s = Scratch()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = args
        FileManager.default.createFile(atPath: s.file("out"), contents: nil)
        FileManager.default.createFile(atPath: s.file("err"), contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: s.file("out"))
        p.standardError = FileHandle(forWritingAtPath: s.file("err"))
        try p.run()
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            return CLI.Result(status: -1, stdout: "", stderr: "blocked for \(seconds) s")
        }
        return CLI.Result(status: p.terminationStatus, stdout: (try? String(contentsOfFile: s.file("out"), encoding: .utf8)) ?? "",
                          stderr: (try? String(contentsOfFile: s.file("err"), encoding: .utf8)) ?? "")
    }

    static func lines(_ s: String) -> [Substring] { s.split(separator: "\n") }
    static func temporaryFiles(_ s: Scratch) -> [String] { s.contents.filter { $0.contains(".tmp-") } }
    static func exists(_ p: String) -> Bool { FileManager.default.fileExists(atPath: p) }

    static func fileType(_ p: String) -> mode_t {
        var st = stat()
        return stat(p, &st) == 0 ? st.st_mode & S_IFMT : 0
    }

    /// Flips one bit in the data of tensor `name` of a `.lidb` file.
    static func flip(_ path: String, tensor name: String, at offset: Int = 0) throws {
        let f = try LidbFile(path: path, checksums: .never)
        let e = try #require(f.entry(name))
        let fd = open(path, O_RDWR)
        defer { close(fd) }
        let position = off_t(Int(f.layout.dataOffset + e.offset) + offset)
        var b: UInt8 = 0
        #expect(pread(fd, &b, 1, position) == 1)
        b ^= 0x10
        #expect(pwrite(fd, &b, 1, position) == 1)
    }

    /// The fixture base with an extra 17 MiB tensor, so it is over the verify-on-open limit.
    static func bigBase(_ s: Scratch) throws -> String {
        let r = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("small.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        let small = try LidbFile(path: s.file("small.lidb"))
        var sources: [TensorSource] = try small.tensors.map { .bytes($0, try small.tensorBytes($0.name)) }
        let pad = TensorInfo(name: "extra.padding", dtype: .F32, shape: [17 << 18])
        sources.append(.array(pad, [UInt8](repeating: 0x3C, count: pad.byteCount)))
        try LidbWriter.write(to: s.file("big.lidb"), kind: "base", metadata: small.metadata, tensors: sources)
        #expect(try MappedFile(path: s.file("big.lidb")).bytes.count > LidbFile.verifyOnOpenLimit)
        return s.file("big.lidb")
    }

    // MARK: 7. merge and convert do not launder damage

    @Test func damagedBigBaseIsRefusedByMergeAndConvert() throws {
        let s = Scratch()
        let big = try Self.bigBase(s)
        var r = try CLI.run(["subject", "init", "--base", big, "--seed", "3", "--targets", "unet-attn", "--std", "0.1", "-o", s.file("s.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        let touched = try #require(try LidbFile(path: big).tensors.map(\.name).first { $0.hasPrefix("unet.") && $0.hasSuffix("attn1.to_q.weight") })
        // Damage in a layer the subject changes (read, then transformed) and in one copied as is.
        for tensor in [touched, "extra.padding"] {
            let damaged = s.file("damaged.lidb")
            try? FileManager.default.removeItem(atPath: damaged)
            try FileManager.default.copyItem(atPath: big, toPath: damaged)
            try Self.flip(damaged, tensor: tensor, at: 2)
            r = try CLI.run(["verify", damaged])
            #expect(r.status == 1 && r.stderr.contains(tensor))
            for (name, args) in [("merged.lidb", ["merge", damaged, s.file("s.lidb")]),
                                 ("half.lidb", ["convert", damaged, "--dtype", "f16"]),
                                 ("copy.lidb", ["convert", damaged]),
                                 ("single.safetensors", ["export", damaged, "--format", "single-file"])] {
                r = try CLI.run(args + ["-o", s.file(name)])
                #expect(r.status == 2, "\(args[0]) \(tensor): \(r.stderr)")
                #expect(Self.lines(r.stderr).count == 1, "\(r.stderr)")
                #expect(r.stderr.contains("damaged.lidb") && r.stderr.contains("tensor '\(tensor)'") && r.stderr.contains("checksum mismatch"), "\(r.stderr)")
                #expect(!Self.exists(s.file(name)), "\(name) must not be written")
                #expect(Self.temporaryFiles(s).isEmpty)
            }
        }
        // The intact base still merges.
        r = try CLI.run(["merge", big, s.file("s.lidb"), "-o", s.file("ok.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
    }

    // MARK: 8 and 20. Outputs are checked before any work

    @Test func specialFilesFoldersAndInputsAreRefusedAsOutputs() throws {
        let s = Scratch()
        let src = fixtures + "/safetensors/all_dtypes.safetensors"
        #expect(mkfifo(s.file("fifo.lidb"), 0o644) == 0)
        try FileManager.default.createDirectory(atPath: s.file("folder.lidb"), withIntermediateDirectories: true)
        let cases: [(String, String)] = [
            ("/dev/null", "character device"), (s.file("fifo.lidb"), "FIFO"), (s.file("folder.lidb"), "is a folder"),
            (s.file("missing/out.lidb"), "cannot write into the folder"),
        ]
        for (out, words) in cases {
            // The input does not even exist: the output is refused first, before any work.
            let r = try Self.runBounded(["convert", s.file("no-such-input.safetensors"), "-o", out])
            #expect(r.status == 2, "\(out): \(r.stderr)")
            #expect(Self.lines(r.stderr).count == 1 && r.stderr.contains(out) && r.stderr.contains(words), "\(r.stderr)")
            #expect(!r.stderr.contains("no-such-input"))
        }
        #expect(Self.fileType("/dev/null") == S_IFCHR && Self.fileType(s.file("fifo.lidb")) == S_IFIFO)
        #expect(Self.fileType(s.file("folder.lidb")) == S_IFDIR)
        // With a real input the refusal is the same.
        let r = try Self.runBounded(["convert", src, "-o", s.file("fifo.lidb")])
        #expect(r.status == 2 && r.stderr.contains("FIFO"))
        #expect(Self.fileType(s.file("fifo.lidb")) == S_IFIFO)
        #expect(Self.temporaryFiles(s).isEmpty)
    }

    @Test func everyWritingCommandChecksItsOutputFirst() throws {
        let s = Scratch()
        try FileManager.default.createDirectory(atPath: s.file("dir"), withIntermediateDirectories: true)
        let missing = s.file("missing.lidb")  // every input is missing: only the output check can speak
        let commands: [[String]] = [
            ["convert", missing],
            ["export", missing, "--format", "single-file"],
            ["subject", "import", missing, "--base", missing],
            ["subject", "export", missing, "--format", "kohya"],
            ["subject", "init", "--base", missing, "--seed", "1"],
            ["personalize", "--hypernet", missing, "--base", missing, "--image", missing],
            ["merge", missing, missing],
            ["unmerge", missing, missing],
            ["generate", "--model", missing, "--prompt", "a face"],
        ]
        for c in commands {
            let r = try CLI.run(c + ["-o", s.file("dir")])
            #expect(r.status == 2 && Self.lines(r.stderr).count == 1, "\(c[0]): \(r.stderr)")
            #expect(r.stderr.contains("the output is a folder") && !r.stderr.contains("No such file"), "\(c): \(r.stderr)")
        }
        // A diffusers export goes to a folder: it must be new or empty.
        try FileManager.default.createDirectory(atPath: s.file("dir/sub"), withIntermediateDirectories: true)
        let r = try CLI.run(["export", missing, "--format", "diffusers", "-o", s.file("dir")])
        #expect(r.status == 2 && r.stderr.contains("not empty") && !r.stderr.contains("missing.lidb"), "\(r.stderr)")
    }

    @Test func anOutputEqualToAnInputIsRefused() throws {
        let s = Scratch()
        let photo = s.file("photo.png")
        let original = Array("not really a png, but precious".utf8)
        try Data(original).write(to: URL(fileURLWithPath: photo))
        #expect(symlink(photo, s.file("alias.png")) == 0)
        try FileManager.default.createDirectory(atPath: s.file("sub"), withIntermediateDirectories: true)
        for out in [photo, s.file("alias.png"), s.file("sub/../photo.png")] {
            let r = try CLI.run(["personalize", "--hypernet", s.file("h.lidb"), "--base", s.file("b.lidb"), "--image", photo, "-o", out])
            #expect(r.status == 2 && Self.lines(r.stderr).count == 1, "\(r.stderr)")
            #expect(r.stderr.contains("same file as the input") && r.stderr.contains("photo.png"), "\(r.stderr)")
        }
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: photo))) == original)
        // Converting or merging a file onto itself is refused as well.
        let src = s.file("a.safetensors")
        try FileManager.default.copyItem(atPath: fixtures + "/safetensors/all_dtypes.safetensors", toPath: src)
        var r = try CLI.run(["convert", src, "-o", src])
        #expect(r.status == 2 && r.stderr.contains("same file as the input"))
        r = try CLI.run(["merge", s.file("base.lidb"), s.file("x.lidb"), "-o", s.file("x.lidb")])
        #expect(r.status == 2 && r.stderr.contains("same file as the input"), "\(r.stderr)")
        #expect(Self.temporaryFiles(s).isEmpty)
    }

    // MARK: 9. Permissions follow the umask, replaced files keep theirs

    @Test func outputModesFollowTheUmask() throws {
        let s = Scratch()
        let src = fixtures + "/safetensors/scalars_empty.safetensors"
        func convert(umask: String, to out: String) throws -> CLI.Result {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "umask \(umask) && exec \"$0\" \"$@\"", CLI.binary, "convert", src, "-o", out]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return CLI.Result(status: p.terminationStatus, stdout: "", stderr: String(decoding: e, as: UTF8.self))
        }
        func mode(_ p: String) -> mode_t {
            var st = stat()
            return stat(p, &st) == 0 ? st.st_mode & 0o7777 : 0
        }
        for (u, expected) in [("077", mode_t(0o600)), ("027", 0o640), ("022", 0o644), ("002", 0o664)] {
            let out = s.file("subject-\(u).lidb")
            let r = try convert(umask: u, to: out)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(mode(out) == expected, "umask \(u): \(String(mode(out), radix: 8))")
        }
        // Replacing a file keeps its mode, whatever the umask.
        let kept = s.file("kept.lidb")
        _ = try convert(umask: "022", to: kept)
        #expect(chmod(kept, 0o600) == 0)
        let r = try convert(umask: "000", to: kept)
        #expect(r.status == 0 && mode(kept) == 0o600)
    }

    // MARK: 10. FIFOs as inputs do not block

    @Test func fifoInputsAreRefusedWithoutBlocking() throws {
        let s = Scratch()
        #expect(mkfifo(s.file("in.safetensors"), 0o644) == 0)
        try FileManager.default.createDirectory(atPath: s.file("sharded"), withIntermediateDirectories: true)
        #expect(mkfifo(s.file("sharded/model-1.safetensors"), 0o644) == 0)
        try Data(#"{"weight_map":{"a":"model-1.safetensors"}}"#.utf8).write(to: URL(fileURLWithPath: s.file("sharded/model.safetensors.index.json")))
        let runs: [([String], String)] = [
            (["inspect", s.file("in.safetensors")], "in.safetensors"),
            (["verify", s.file("in.safetensors")], "in.safetensors"),
            (["convert", s.file("in.safetensors"), "-o", s.file("out.lidb")], "in.safetensors"),
            (["inspect", s.file("sharded/model.safetensors.index.json")], "model-1.safetensors"),
            (["convert", s.file("sharded/model.safetensors.index.json"), "-o", s.file("out.lidb")], "model-1.safetensors"),
            (["generate", "--model", s.file("in.safetensors"), "--prompt", "x", "-o", s.file("out.png")], "in.safetensors"),
        ]
        for (args, name) in runs {
            let r = try Self.runBounded(args, seconds: 60)
            #expect(r.status == 2, "\(args[0]): \(r.stderr)")
            #expect(Self.lines(r.stderr).count == 1 && r.stderr.contains(name) && r.stderr.contains("FIFO"), "\(r.stderr)")
        }
        #expect(!Self.exists(s.file("out.lidb")) && !Self.exists(s.file("out.png")))
    }

    // MARK: 11. Interrupted writes leave no temporary file

    @Test func signalsRemoveTheTemporaryFile() throws {
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let s = Scratch()
            let out = s.file("out.lidb")
            let p = try Self.start(["convert", fixtures + "/safetensors/all_dtypes.safetensors", "-o", out],
                                   stderr: s.file("stderr.txt"), environment: ["LIDB_TEST_PAUSE_AFTER_TEMP": "60"])
            let temporary = try #require(Self.waitForLine("lidb: test: temporary file ", in: s.file("stderr.txt")))
            #expect(temporary.hasPrefix(s.path + "/.out.lidb.tmp-") && temporary.count == (s.path + "/.out.lidb.tmp-").count + 6)
            #expect(Self.exists(temporary), "the write is in progress")
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == sig, "signal \(sig): \(p.terminationReason) \(p.terminationStatus)")
            #expect(!Self.exists(temporary), "signal \(sig) left \(temporary)")
            #expect(!Self.exists(out))
            #expect(s.contents == ["stderr.txt"], "\(s.contents)")
        }
    }

    /// An export that assembles a folder (`export --format diffusers`: `OUT.tmp-PID`, renamed into
    /// place when complete) removes the partial folder, with the files already in it, when a
    /// signal ends it (it was left behind: only its files' temporary files were registered).
    @Test func signalsRemoveTheTemporaryExportFolder() throws {
        let s = Scratch()
        let r = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let out = s.file("out-\(sig)")
            let p = try Self.start(["export", s.file("base.lidb"), "--format", "diffusers", "-o", out],
                                   stderr: s.file("stderr.txt"), environment: ["LIDB_TEST_PAUSE_AFTER_TEMP": "2"])
            let folder = out + ".tmp-\(p.processIdentifier)"
            // The UNet's weights are being written: model_index.json and unet/config.json are done.
            let temporary = try #require(Self.waitForLine("lidb: test: temporary file " + folder + "/unet/.diffusion_pytorch_model", in: s.file("stderr.txt")))
            #expect(Self.exists(folder + "/model_index.json") && Self.exists(folder + "/unet/config.json"), "the export is in progress")
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == sig, "signal \(sig): \(p.terminationReason) \(p.terminationStatus)")
            #expect(!Self.exists(folder), "signal \(sig) left \(folder) (\(temporary))")
            #expect(!Self.exists(out))
            #expect(s.contents == ["base.lidb", "stderr.txt"], "\(s.contents)")
        }
        // Uninterrupted, the same export completes and leaves only its folder.
        let done = try CLI.run(["export", s.file("base.lidb"), "--format", "diffusers", "-o", s.file("out")])
        #expect(done.status == 0 && Self.exists(s.file("out/unet/diffusion_pytorch_model.safetensors")), "\(done.stderr)")
        #expect(s.contents == ["base.lidb", "out", "stderr.txt"], "\(s.contents)")
    }

    // MARK: 12. A mapped input that shrinks gives one line, not a crash

    @Test func inputTruncatedDuringAWriteIsAnErrorNotABusError() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", baseFixtures + "/sd1/diffusers-safetensors", "-o", s.file("base.lidb")])
        #expect(r.status == 0)
        // The base is small, so it is verified when opened and then read through its mapping.
        let p = try Self.start(["convert", s.file("base.lidb"), "--dtype", "f16", "-o", s.file("out.lidb")],
                               stderr: s.file("stderr.txt"), environment: ["LIDB_TEST_PAUSE_AFTER_TEMP": "2"])
        let temporary = try #require(Self.waitForLine("lidb: test: temporary file ", in: s.file("stderr.txt")))
        #expect(truncate(s.file("base.lidb"), 4096) == 0)
        p.waitUntilExit()
        let err = (try? String(contentsOfFile: s.file("stderr.txt"), encoding: .utf8)) ?? ""
        #expect(p.terminationReason == .exit && p.terminationStatus == 2, "\(p.terminationReason) \(p.terminationStatus): \(err)")
        let errors = Self.lines(err).filter { !$0.hasPrefix("lidb: test:") }
        #expect(errors.count == 1 && errors[0].contains("base.lidb") && errors[0].contains("shrank"), "\(err)")
        #expect(!Self.exists(temporary) && !Self.exists(s.file("out.lidb")))
        // Reading it again now gives the typed error of the format layer.
        r = try CLI.run(["verify", s.file("base.lidb")])
        #expect(r.status == 1 && Self.lines(r.stderr).count >= 1)
    }

    // MARK: 20. Usage errors: one line, exit 2

    @Test func usageErrorsAreOneLineWithExitTwo() throws {
        let cases: [[String]] = [
            ["convert"], ["convert", "a.safetensors"], ["convert", "--bogus"], ["no-such-command"],
            ["generate", "--model", "m.lidb", "--prompt", "x", "-o", "x.png", "--steps", "many"],
            ["subject", "init", "--base", "b.lidb", "-o", "s.lidb"],  // --seed missing
        ]
        for c in cases {
            let r = try CLI.run(c)
            #expect(r.status == 2, "\(c): \(r.status) \(r.stderr)")
            #expect(Self.lines(r.stderr).count == 1 && r.stderr.hasPrefix("lidb: error: ") && r.stdout.isEmpty, "\(c): \(r.stderr)")
            #expect(r.stderr.contains("--help"))
        }
        #expect(try CLI.run(["convert"]).stderr.contains("'lidb convert --help'"))
        #expect(try CLI.run(["subject", "init"]).stderr.contains("'lidb subject init --help'"))
        for c in [["--help"], ["convert", "--help"], ["subject", "init", "--help"], ["--version"]] {
            let r = try CLI.run(c)
            #expect(r.status == 0 && !r.stdout.isEmpty && r.stderr.isEmpty, "\(c)")
        }
        #expect(try CLI.run(["--help"]).stdout.contains("2 bad input or usage"))
    }

    @Test func negativeSeedsAndNumbersAreExplained() throws {
        for c in [["generate", "--model", "m.lidb", "--prompt", "x", "-o", "x.png", "--seed", "-1"],
                  ["subject", "init", "--base", "b.lidb", "-o", "s.lidb", "--seed", "-1"],
                  ["subject", "init", "--base", "b.lidb", "-o", "s.lidb", "--seed=-5"],
                  ["subject", "init", "--base", "b.lidb", "-o", "s.lidb", "--seed", "1e3"],
                  ["subject", "init", "--base", "b.lidb", "-o", "s.lidb", "--seed", "18446744073709551616"]] {
            let r = try CLI.run(c)
            #expect(r.status == 2 && Self.lines(r.stderr).count == 1, "\(c): \(r.stderr)")
            #expect(r.stderr.contains("--seed must be a non-negative integer") && !r.stderr.contains("Missing value"), "\(r.stderr)")
        }
        // Another option given a negative number gets it as its value (and its own check), not "Missing value".
        let r = try CLI.run(["subject", "init", "--base", "b.lidb", "-o", "s.lidb", "--seed", "1", "--rank", "-2"])
        #expect(r.status == 2 && !r.stderr.contains("Missing value"), "\(r.stderr)")
        #expect(r.stderr.contains("--rank"), "\(r.stderr)")
    }

    @Test func symlinkedShardIsRefusedWithoutEchoingTheTarget() throws {
        let s = Scratch()
        try Data("password=hunter2 and the rest of a private file".utf8).write(to: URL(fileURLWithPath: s.file("secret.txt")))
        try FileManager.default.createDirectory(atPath: s.file("model"), withIntermediateDirectories: true)
        #expect(symlink(s.file("secret.txt"), s.file("model/model-1.safetensors")) == 0)
        try Data(#"{"weight_map":{"a":"model-1.safetensors"}}"#.utf8).write(to: URL(fileURLWithPath: s.file("model/model.safetensors.index.json")))
        let r = try CLI.run(["inspect", s.file("model/model.safetensors.index.json")])
        #expect(r.status == 2 && Self.lines(r.stderr).count == 1)
        #expect(r.stderr.contains("leaves the index's folder") && r.stderr.contains("symbolic link"), "\(r.stderr)")
        let n = Array("password".utf8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        #expect(!r.stderr.contains(String(n)) && !r.stderr.contains("password"))
    }
}
