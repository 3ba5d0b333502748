import Foundation
import Testing
@testable import TensorFile

#if canImport(Glibc)
import Glibc
#endif

/// Hostile files and paths around reading and writing (issue 12, items 7–12 and 20): damage carried
/// into copies, special files as outputs and inputs, permissions, files that shrink while open,
/// symbolic links out of a shard folder.
@Suite struct HardeningIOTests {
    // MARK: Helpers

    /// A `.lidb` of kind `tensors` with `count` F32 tensors of `bytesEach` bytes (a repeated byte
    /// pattern per tensor), so the file can be made bigger than the verify-on-open limit cheaply.
    static func bigLidb(_ path: String, count: Int = 3, bytesEach: Int = 6 << 20) throws {
        var sources: [TensorSource] = []
        for i in 0..<count {
            let info = TensorInfo(name: "t\(i)", dtype: .F32, shape: [bytesEach / 4])
            sources.append(.array(info, [UInt8](repeating: UInt8(0x30 + i), count: bytesEach)))
        }
        try LidbWriter.write(to: path, kind: "tensors", tensors: sources)
    }

    /// Flips one bit of the byte at `offset` bytes into the data of tensor `name`.
    static func flip(_ path: String, tensor name: String, at offset: Int = 12345) throws {
        let f = try LidbFile(path: path, checksums: .never)
        let e = try #require(f.entry(name))
        let position = Int(f.layout.dataOffset + e.offset) + offset
        let fd = open(path, O_RDWR)
        #expect(fd >= 0)
        defer { close(fd) }
        var b: UInt8 = 0
        #expect(pread(fd, &b, 1, off_t(position)) == 1)
        b ^= 0x04
        #expect(pwrite(fd, &b, 1, off_t(position)) == 1)
    }

    /// Names in `dir` that look like an atomic writer's temporary file.
    static func temporaryFiles(_ dir: TempDir) -> [String] { dir.contents.filter { $0.contains(".tmp-") } }

    static func mode(_ path: String) -> mode_t {
        var st = stat()
        return stat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    /// The process's umask, read without changing it.
    static func currentUmask() throws -> mode_t {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("Umask:") })
        return try #require(mode_t(line.dropFirst("Umask:".count).trimmingCharacters(in: .whitespaces), radix: 8))
    }

    // MARK: 7. Damage is not carried into a copy

    @Test func damagedBigFileIsRefusedWhileCopyingAndConverting() throws {
        let tmp = TempDir()
        let src = tmp.file("big.lidb")
        try Self.bigLidb(src)
        #expect(try MappedFile(path: src).bytes.count > LidbFile.verifyOnOpenLimit)
        try Self.flip(src, tensor: "t1")

        // Opening a big file stays cheap (no check yet); verify finds the damage.
        let f = try LidbFile(path: src)
        #expect(f.verify().map(\.tensor) == ["t1"])

        // Every way of reading the tensor's bytes for use refuses it, naming the tensor.
        let direct = caught { _ = try f.tensorBytes("t1") }
        #expect(direct?.tensor == "t1" && direct?.file == src)
        if case .tensorChecksumMismatch = direct?.problem {} else { Issue.record("expected a checksum mismatch, got \(String(describing: direct))") }
        #expect(caught { _ = try f.tensorBytes("t0") } == nil, "intact tensors are still readable")

        // Copies and casts to either format: typed error naming the tensor, no output, no temp file.
        for (out, dtype) in [("copy.lidb", nil), ("half.lidb", DType.F16), ("copy.safetensors", nil), ("half.safetensors", DType.F16)] as [(String, DType?)] {
            let fresh = try LidbFile(path: src)  // no tensor checked yet
            let e = caught { _ = try convertCollection(fresh, to: tmp.file(out), dtype: dtype) }
            #expect(e?.tensor == "t1" && e?.file == src, "\(out): \(String(describing: e))")
            if case .tensorChecksumMismatch = e?.problem {} else { Issue.record("\(out): expected a checksum mismatch, got \(String(describing: e))") }
            #expect(e?.description.contains("tensor 't1'") == true && e?.description.contains("big.lidb") == true)
            #expect(!FileManager.default.fileExists(atPath: tmp.file(out)))
        }
        #expect(Self.temporaryFiles(tmp).isEmpty)
        #expect(tmp.contents == ["big.lidb"])
    }

    @Test func streamingChecksumCoversEveryChunk() throws {
        // The damaged byte lies in the last chunk of a multi-chunk tensor: the check must still fire.
        let tmp = TempDir()
        let src = tmp.file("big.lidb")
        try Self.bigLidb(src, count: 2, bytesEach: MappedFile.chunkBytes * 2 + 4096)
        try Self.flip(src, tensor: "t0", at: MappedFile.chunkBytes * 2 + 100)
        let f = try LidbFile(path: src)
        var chunks = 0
        let e = caught { try f.streamTensor("t0") { _ in chunks += 1 } }
        #expect(chunks == 3)
        #expect(e?.tensor == "t0")
        // Intact: streamed bytes are the tensor's bytes.
        var streamed: [UInt8] = []
        try f.streamTensor("t1") { streamed.append(contentsOf: $0) }
        #expect(streamed == [UInt8](repeating: 0x31, count: MappedFile.chunkBytes * 2 + 4096))
    }

    // MARK: 8. Special files are never replaced

    @Test func specialFilesAreRefusedAsOutputs() throws {
        let tmp = TempDir()
        let fifo = tmp.file("out.lidb")
        #expect(mkfifo(fifo, 0o644) == 0)
        for path in ["/dev/null", fifo] {
            let e = caught { _ = try AtomicFileWriter(path: path) }
            if case .outputNotRegularFile = e?.problem {} else { Issue.record("\(path): \(String(describing: e))") }
            #expect(e?.file == path)
            let p = caught { try AtomicFileWriter.preflight(output: path) }
            if case .outputNotRegularFile = p?.problem {} else { Issue.record("\(path): \(String(describing: p))") }
        }
        let e = caught { try LidbWriter.write(to: fifo, kind: "tensors", tensors: []) }
        #expect(e?.description.contains("FIFO") == true)
        var st = stat()
        #expect(stat(fifo, &st) == 0 && (st.st_mode & S_IFMT) == S_IFIFO, "the FIFO is still a FIFO")
        #expect(stat("/dev/null", &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR)
        #expect(Self.temporaryFiles(tmp).isEmpty)
    }

    @Test func specialFileAppearingDuringAWriteIsNotReplaced() throws {
        let tmp = TempDir()
        let path = tmp.file("out.safetensors")
        let w = try AtomicFileWriter(path: path)
        try w.write([1, 2, 3])
        #expect(mkfifo(path, 0o600) == 0)
        let e = caught { try w.commit() }
        if case .outputNotRegularFile = e?.problem {} else { Issue.record("\(String(describing: e))") }
        var st = stat()
        #expect(stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFIFO)
        #expect(tmp.contents == ["out.safetensors"], "temporary file removed")
    }

    // MARK: 9. Permissions

    @Test func newOutputsHonourTheUmaskAndReplacedOnesKeepTheirMode() throws {
        let tmp = TempDir()
        let fresh = tmp.file("fresh.lidb")
        try LidbWriter.write(to: fresh, kind: "tensors", tensors: [])
        #expect(Self.mode(fresh) == 0o666 & ~(try Self.currentUmask()))

        let kept = tmp.file("kept.lidb")
        try LidbWriter.write(to: kept, kind: "tensors", tensors: [])
        for m: mode_t in [0o600, 0o640, 0o604] {
            #expect(chmod(kept, m) == 0)
            try LidbWriter.write(to: kept, kind: "tensors", tensors: [])
            #expect(Self.mode(kept) == m)
        }
        #expect(Self.temporaryFiles(tmp).isEmpty)
    }

    // MARK: Preflight of outputs (items 8 and 20)

    @Test func outputPreflightRefusesFoldersMissingFoldersAndInputs() throws {
        let tmp = TempDir()
        let input = tmp.file("photo.png")
        try writeBytes([0x89, 0x50, 0x4E, 0x47], to: input)
        func problem(_ out: String, _ inputs: [String] = []) -> TensorFileError? {
            caught { try AtomicFileWriter.preflight(output: out, inputs: inputs) }
        }
        #expect(problem(tmp.path)?.problem == .outputIsFolder)
        #expect(problem(tmp.path + "/")?.problem == .outputIsFolder)
        #expect(problem(tmp.file("x.lidb/"))?.problem == .outputIsFolder)
        if case .outputFolderUnusable(let folder, _) = problem(tmp.file("missing/x.lidb"))?.problem {
            #expect(folder == tmp.file("missing"))
        } else { Issue.record("missing folder not reported") }
        if case .outputFolderUnusable = problem(input + "/x.lidb")?.problem {} else { Issue.record("a file as the folder") }
        if getuid() != 0 {  // root may write anywhere
            try FileManager.default.createDirectory(atPath: tmp.file("locked"), withIntermediateDirectories: true)
            #expect(chmod(tmp.file("locked"), 0o555) == 0)
            defer { chmod(tmp.file("locked"), 0o755) }
            if case .outputFolderUnusable = problem(tmp.file("locked/x.lidb"))?.problem {} else { Issue.record("read-only folder") }
        }
        // The same file: by path, through `..`, through a symbolic link, through a hard link.
        #expect(symlink(input, tmp.file("link.png")) == 0)
        #expect(link(input, tmp.file("hard.png")) == 0)
        for out in [input, tmp.path + "/./sub/../photo.png", tmp.file("link.png"), tmp.file("hard.png")] {
            if out.contains("/sub/") { try FileManager.default.createDirectory(atPath: tmp.file("sub"), withIntermediateDirectories: true) }
            #expect(problem(out, ["unrelated.lidb", input])?.problem == .outputIsInput(input: input), "\(out)")
        }
        // Not yet existing outputs that resolve to a (not yet existing) input's path.
        #expect(problem(tmp.file("new.lidb"), [tmp.path + "/sub/../new.lidb"])?.problem == .outputIsInput(input: tmp.path + "/sub/../new.lidb"))
        #expect(problem(tmp.file("ok.lidb"), [input]) == nil)
        #expect(try readBytes(input) == [0x89, 0x50, 0x4E, 0x47])

        // Folder outputs: absent or empty is fine; a file or a non-empty folder is not.
        #expect(caught { try AtomicFileWriter.preflight(outputFolder: tmp.file("export")) } == nil)
        #expect(caught { try AtomicFileWriter.preflight(outputFolder: tmp.file("sub")) } == nil)
        #expect(caught { try AtomicFileWriter.preflight(outputFolder: tmp.path) }?.description.contains("not empty") == true)
        #expect(caught { try AtomicFileWriter.preflight(outputFolder: input) }?.description.contains("not a folder") == true)
    }

    // MARK: 10. FIFOs and devices as inputs do not block

    @Test(.timeLimit(.minutes(1))) func specialFilesAreRefusedAsInputsWithoutBlocking() throws {
        let tmp = TempDir()
        let fifo = tmp.file("in.safetensors")
        #expect(mkfifo(fifo, 0o644) == 0)
        for path in [fifo, "/dev/zero", tmp.path] {
            let e = caught { _ = try openTensorCollection(path) }
            guard case let .notARegularFile(kind) = e?.problem else { Issue.record("\(path): \(String(describing: e))"); continue }
            #expect(e?.file == path)
            #expect(e?.description.contains(kind) == true)
        }
        #expect(caught { _ = try MappedFile(path: fifo) }?.description.contains("FIFO") == true)
        #expect(caught { _ = try LidbFile(path: fifo) }?.description.contains("FIFO") == true)
        // A shard named in an index that is a FIFO.
        let dir = tmp.file("sharded")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(mkfifo(dir + "/model-1.safetensors", 0o644) == 0)
        try writeBytes(Array(#"{"metadata":{},"weight_map":{"a":"model-1.safetensors"}}"#.utf8), to: dir + "/model.safetensors.index.json")
        let s = caught { _ = try ShardedSafetensors(indexPath: dir + "/model.safetensors.index.json") }
        #expect(s?.file == dir + "/model-1.safetensors")
        if case .notARegularFile = s?.problem {} else { Issue.record("\(String(describing: s))") }
    }

    // MARK: 12. A file that shrinks while open gives an error, not a bus error

    @Test func truncatedWhileOpenIsATypedError() throws {
        let tmp = TempDir()
        // A small file, opened without checks, then cut short: verify reads with bounded I/O.
        let small = tmp.file("small.lidb")
        try Self.bigLidb(small, count: 2, bytesEach: 64 << 10)
        let f = try LidbFile(path: small, checksums: .never)
        let size = f.map.bytes.count
        #expect(truncate(small, off_t(size / 2)) == 0)
        let problems = f.verify()
        #expect(problems.count == 1)
        #expect(problems.first?.problem == .fileChanged(openedSize: UInt64(size), currentSize: UInt64(size / 2)))
        #expect(problems.first?.description.contains("changed while it was being read") == true)

        // A big file: the first read of a tensor checks it with bounded reads.
        let big = tmp.file("big.lidb")
        try Self.bigLidb(big)
        let g = try LidbFile(path: big)
        #expect(truncate(big, 4096) == 0)
        let e = caught { _ = try g.tensorBytes("t2") }
        if case .fileChanged = e?.problem {} else { Issue.record("\(String(describing: e))") }
        #expect(e?.file == big)
        let c = caught { _ = try convertCollection(g, to: tmp.file("out.lidb"), dtype: .F16) }
        if case .fileChanged = c?.problem {} else { Issue.record("\(String(describing: c))") }

        // Safetensors inputs stream with bounded reads too.
        let st = tmp.file("in.safetensors")
        let info = TensorInfo(name: "w", dtype: .F32, shape: [1 << 16])
        try SafetensorsWriter.write(to: st, tensors: [.array(info, [UInt8](repeating: 0x3F, count: 1 << 18))], metadata: nil)
        let h = try SafetensorsFile(path: st)
        #expect(truncate(st, 1000) == 0)
        let d = caught { _ = try convertCollection(h, to: tmp.file("out.safetensors"), dtype: .F16) }
        if case .fileChanged = d?.problem {} else { Issue.record("\(String(describing: d))") }
        #expect(d?.file == st)
        #expect(!FileManager.default.fileExists(atPath: tmp.file("out.lidb")) && !FileManager.default.fileExists(atPath: tmp.file("out.safetensors")))
        #expect(Self.temporaryFiles(tmp).isEmpty)
    }

    /// Unchanged tensors are copied by the kernel (or, where it cannot, through bounded reads): a
    /// source cut short meanwhile gives `fileChanged` naming it, and no output, on both paths.
    @Test(arguments: [false, true]) func truncatedWhileCopiedVerbatimIsATypedError(userSpaceCopy: Bool) throws {
        let tmp = TempDir()
        let st = tmp.file("in.safetensors")
        let info = TensorInfo(name: "w", dtype: .F32, shape: [1 << 18])
        try SafetensorsWriter.write(to: st, tensors: [.array(info, [UInt8](repeating: 0x3F, count: 1 << 20))], metadata: nil)
        let big = tmp.file("big.lidb")
        try Self.bigLidb(big)
        let h = try SafetensorsFile(path: st)
        let g = try LidbFile(path: big)
        #expect(h.verbatimRange("w") != nil && g.verbatimRange("t2")?.crc32c != nil)
        #expect(truncate(st, 4096) == 0 && truncate(big, 4096) == 0)
        AtomicFileWriter.userSpaceCopyOnly.store(userSpaceCopy, ordering: .relaxed)
        defer { AtomicFileWriter.userSpaceCopyOnly.store(false, ordering: .relaxed) }
        for (source, file) in [(h, st), (g, big)] as [(TensorCollection, String)] {
            for out in ["copy.safetensors", "copy.lidb"] {
                let e = caught { _ = try convertCollection(source, to: tmp.file(out), dtype: nil) }
                if case .fileChanged = e?.problem {} else { Issue.record("\(file) → \(out): \(String(describing: e))") }
                #expect(e?.file == file)
                #expect(!FileManager.default.fileExists(atPath: tmp.file(out)))
            }
        }
        #expect(Self.temporaryFiles(tmp).isEmpty)
    }

    // MARK: 20. Shards cannot leave their folder through symbolic links

    @Test func symlinkedShardOutsideTheFolderIsRefused() throws {
        let tmp = TempDir()
        let outside = tmp.file("secret.txt")
        try writeBytes(Array("password=hunter2 and more text".utf8), to: outside)
        let dir = tmp.file("model")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(symlink(outside, dir + "/model-1.safetensors") == 0)
        // A folder link pointing outside is the same escape one level down.
        #expect(symlink(tmp.path, dir + "/up") == 0)
        for shard in ["model-1.safetensors", "up/secret.txt"] {
            try writeBytes(Array("{\"weight_map\":{\"a\":\"\(shard)\"}}".utf8), to: dir + "/model.safetensors.index.json")
            let e = caught { _ = try ShardedSafetensors(indexPath: dir + "/model.safetensors.index.json") }
            guard case let .invalidShardIndex(m) = e?.problem else { Issue.record("\(shard): \(String(describing: e))"); continue }
            #expect(m.contains("leaves the index's folder") && m.contains("symbolic link"))
            #expect(e?.tensor == "a")
            // Nothing of the target's content is echoed, as text or as a number.
            let n = "password=".utf8.reduce(into: [UInt8]()) { $0.append($1) }.prefix(8)
            let asNumber = n.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            #expect(e?.description.contains("password") == false && e?.description.contains(String(asNumber)) == false)
        }
        // A link that stays inside the folder is fine.
        let info = TensorInfo(name: "a", dtype: .F32, shape: [1])
        try SafetensorsWriter.write(to: dir + "/real.safetensors", tensors: [.array(info, [0, 0, 128, 63])], metadata: nil)
        #expect(unlink(dir + "/model-1.safetensors") == 0)
        #expect(symlink("real.safetensors", dir + "/model-1.safetensors") == 0)
        try writeBytes(Array("{\"weight_map\":{\"a\":\"model-1.safetensors\"}}".utf8), to: dir + "/model.safetensors.index.json")
        #expect(try ShardedSafetensors(indexPath: dir + "/model.safetensors.index.json").tensors.map(\.name) == ["a"])
    }

    @Test func implausibleHeaderLengthIsNotEchoed() throws {
        // The first 8 bytes of a text file read as a safetensors header length.
        let text = Array("password=hunter2, and then a lot more text".utf8)
        let e = caught { _ = try text.withUnsafeBytes { try SafetensorsLayout.parse($0, file: "x.safetensors") } }
        if case .headerTooLarge = e?.problem {} else { Issue.record("\(String(describing: e))") }
        let n = text.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        #expect(e?.description.contains(String(n)) == false)
    }
}
