import Foundation
import Testing
@testable import TensorFile

/// PyTorch zip checkpoints: files written by torch.save are read bit-exactly, hostile files are
/// refused with specific errors and nothing in them runs. Fixtures: converters/fixtures/make_pickle_fixtures.py.
@Suite struct TorchCheckpointTests {
    static let legit = [
        "all_dtypes.pt", "extra_dtypes.pt", "lightning.ckpt", "shared_storage.pt", "transposed.pt",
        "scalar_empty.pt", "parameters.pt", "nested.pt", "pytorch_model.bin", "zip64.pt",
    ]

    static func expected(_ name: String) throws -> (file: [String: Any], tensors: [[String: Any]]) {
        let e = try Fixtures.json("torch/\(name).expected.json")
        return (e, e["tensors"] as! [[String: Any]])
    }

    /// Every tensor's name, dtype, shape and bytes against the expectations written with torch.
    func checkTensors(_ c: TensorCollection, _ tensors: [[String: Any]], _ label: String,
                      sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(c.tensors.map(\.name) == tensors.map { $0["name"] as! String }, "\(label)", sourceLocation: sourceLocation)
        for (info, t) in zip(c.tensors, tensors) {
            #expect(info.dtype.name == t["dtype"] as? String, "\(label): \(info.name)", sourceLocation: sourceLocation)
            #expect(info.shape == t["shape"] as? [Int], "\(label): \(info.name)", sourceLocation: sourceLocation)
            let b = try c.tensorBytes(info.name)
            #expect(b.count == info.byteCount, sourceLocation: sourceLocation)
            #expect(b.withUnsafeBytes { sha256Hex($0) } == t["sha256"] as? String, "\(label): \(info.name)", sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: legit) func readsTorchSaveOutputBitExactly(_ name: String) throws {
        let path = Fixtures.path("torch/" + name)
        let (e, tensors) = try Self.expected(name)
        #expect(sha256Hex(try readBytes(path)) == e["file_sha256"] as? String, "fixture changed; re-run the generator")
        let c = try openTensorCollection(path)
        #expect(c is TorchCheckpoint)
        #expect(c.formatName == "torch-zip")
        try checkTensors(c, tensors, name)
        #expect(c.metadataJSON.serializedString == e["metadata_json"] as? String)
    }

    @Test func contiguousTensorsAreViewsIntoTheMap() throws {
        let c = try TorchCheckpoint(path: Fixtures.path("torch/shared_storage.pt"))
        let whole = try c.tensorBytes("whole"), slice = try c.tensorBytes("slice")
        let view2d = try c.tensorBytes("view2d"), element = try c.tensorBytes("element")
        for b in [whole, slice, view2d, element] { #expect(b.owner === c.map) }
        // Views of one storage point into the same entry at their storage offsets.
        let base = whole.bytes.baseAddress!
        #expect(slice.bytes.baseAddress! - base == 5 * 4)
        #expect(view2d.bytes.baseAddress! - base == 4 * 4)
        #expect(element.bytes.baseAddress! - base == 7 * 4)
        // Strided views are gathered into owned memory.
        #expect(try c.tensorBytes("column").owner is OwnedBytes)
        let t = try TorchCheckpoint(path: Fixtures.path("torch/transposed.pt"))
        for info in t.tensors { #expect(try t.tensorBytes(info.name).owner is OwnedBytes, "\(info.name)") }
    }

    @Test func convertsToSafetensorsAndLidb() throws {
        let dir = TempDir()
        let (_, tensors) = try Self.expected("lightning.ckpt")
        let ckpt = try openTensorCollection(Fixtures.path("torch/lightning.ckpt"))
        let st = dir.file("model.safetensors")
        let summary = try convertCollection(ckpt, to: st, dtype: nil)
        #expect(summary.tensorCount == tensors.count)
        let back = try SafetensorsFile(path: st)
        // The writer orders tensors its own way; compare by name.
        let byName = Dictionary(uniqueKeysWithValues: tensors.map { ($0["name"] as! String, $0) })
        #expect(Set(back.tensors.map(\.name)) == Set(byName.keys))
        for info in back.tensors {
            let t = byName[info.name]!
            #expect(info.dtype.name == t["dtype"] as? String && info.shape == t["shape"] as? [Int])
            #expect(try back.tensorBytes(info.name).withUnsafeBytes { sha256Hex($0) } == t["sha256"] as? String)
        }
        let md = Dictionary(uniqueKeysWithValues: back.metadata ?? [])
        #expect(md["global_step"] == ckpt.metadataJSON["global_step"]?.serializedString)
        #expect(md["epoch"] != nil)

        let lidb = dir.file("model.lidb")
        _ = try convertCollection(ckpt, to: lidb, dtype: nil)
        let l = try openTensorCollection(lidb)
        try checkTensors(l, tensors, "lidb")
        #expect(l.metadataJSON == ckpt.metadataJSON)
    }

    // MARK: hostile files

    struct HostileCase: CustomStringConvertible {
        var file: String, problem: String, detail: String?, tensor: String?, marker: String?
        var description: String { file }
    }

    static func hostileCases() throws -> [HostileCase] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("torch/hostile/hostile.json")))
        let items = try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
        return items.map {
            HostileCase(file: $0["file"] as! String, problem: $0["problem"] as! String, detail: $0["detail"] as? String,
                        tensor: $0["tensor"] as? String, marker: $0["marker"] as? String)
        }
    }

    func matches(_ p: TensorFileError.Problem, _ c: HostileCase) -> Bool {
        switch (c.problem, p) {
        case let ("pickleGlobalRefused", .pickleGlobalRefused(g)): return g == c.detail
        case let ("pickleCallRefused", .pickleCallRefused(m)): return c.detail.map { m.contains($0) } ?? false
        case let ("storageOutOfRange", .storageOutOfRange(s, needed, available)): return s == c.detail && needed > available
        case let ("zipEntryCompressed", .zipEntryCompressed(entry, method)): return entry == c.detail && method == 8
        case ("zipMalformed", .zipMalformed), ("legacyTorchFormat", .legacyTorchFormat): return true
        default: return false
        }
    }

    @Test func hostileFilesAreRefusedAndNothingRuns() throws {
        let cases = try Self.hostileCases()
        #expect(cases.count >= 10)
        let cwd = FileManager.default.currentDirectoryPath
        for c in cases {
            let path = Fixtures.path("torch/hostile/" + c.file)
            for open in [{ _ = try TorchCheckpoint(path: path) }, { _ = try openTensorCollection(path) }] as [() throws -> Void] {
                let e = caught(open)
                #expect(e.map { matches($0.problem, c) } == true, "\(c.file): got \(String(describing: e))")
                #expect(e?.tensor == c.tensor, "\(c.file)")
                if let e, let d = c.detail { #expect(e.description.contains(d), "\(e.description)") }
            }
            if let m = c.marker {
                #expect(!FileManager.default.fileExists(atPath: cwd + "/" + m), "\(c.file) created its marker")
                #expect(!FileManager.default.fileExists(atPath: Fixtures.path("torch/hostile/" + m)))
            }
        }
        let e = caught { _ = try TorchCheckpoint(path: Fixtures.path("torch/hostile/os_system.pt")) }
        #expect(e?.description.hasSuffix("refusing pickle global 'os.system'") == true)
        let legacy = caught { _ = try TorchCheckpoint(path: Fixtures.path("torch/hostile/legacy.pt")) }
        #expect(legacy?.description.hasSuffix("legacy (non-zip) PyTorch format is not supported; re-save with torch.save") == true)
    }

    @Test func truncationNeverCrashes() throws {
        let dir = TempDir()
        for name in ["lightning.ckpt", "zip64.pt", "shared_storage.pt"] {
            let bytes = try readBytes(Fixtures.path("torch/" + name))
            // Every cut in the last 600 bytes (central directory and end records), every 7th elsewhere.
            var cuts = Array(stride(from: 0, to: bytes.count, by: 7))
            cuts += Array(max(0, bytes.count - 600)..<bytes.count)
            let path = dir.file("cut-" + name)
            for cut in Set(cuts).sorted() {
                try writeBytes(Array(bytes[0..<cut]), to: path)
                let e = caught {
                    let c = try TorchCheckpoint(path: path)
                    for t in c.tensors { _ = try c.tensorBytes(t.name) }
                }
                #expect(e != nil, "\(name) cut at \(cut) was accepted")
            }
        }
    }

    // MARK: the pickle interpreter on its own

    /// data.pkl of a real checkpoint, and a persistent-load function resolving its storages.
    func realPickle() throws -> ([UInt8], (PickleValue) throws(TensorFileError) -> PickleValue) {
        let map = try MappedFile(path: Fixtures.path("torch/lightning.ckpt"))
        let zip = try ZipArchive(bytes: map.bytes, file: map.path)
        let e = zip.entries.first { $0.name.hasSuffix("/data.pkl") }!
        let pkl = Array(zip.data(e, in: map.bytes))
        let load: (PickleValue) throws(TensorFileError) -> PickleValue = { _ in
            .storage(PickleStorage(key: "0", dtype: .F32, byteOffset: 0, byteCount: 1 << 20))
        }
        return (pkl, load)
    }

    func run(_ bytes: [UInt8], limits: PickleLimits = .init()) -> TensorFileError.Problem? {
        problem {
            try bytes.withBytes { (b) throws(TensorFileError) in
                _ = try unpickle(b, file: "t.pkl", limits: limits) { (_) throws(TensorFileError) -> PickleValue in .none }
            }
        }
    }

    @Test func corruptedPicklesNeverCrash() throws {
        let (pkl, load) = try realPickle()
        let ok = try pkl.withBytes { (b) throws(TensorFileError) in try unpickle(b, file: "t.pkl", persistentLoad: load) }
        guard case .dict = ok else { Issue.record("root is not a dict"); return }
        var refused = 0
        for i in pkl.indices {
            for v: UInt8 in [pkl[i] ^ 0xFF, pkl[i] &+ 1, 0x28, 0x2E, 0x52, 0x62, 0x68, 0x71, 0x8A, 0x95] where v != pkl[i] {
                var m = pkl
                m[i] = v
                let r = Result { () throws(TensorFileError) in try m.withBytes { (b) throws(TensorFileError) in try unpickle(b, file: "t.pkl", persistentLoad: load) } }
                if case .failure = r { refused += 1 }
            }
            let cut = Array(pkl[0..<i])
            #expect(throws: TensorFileError.self) { try cut.withBytes { (b) throws(TensorFileError) in _ = try unpickle(b, file: "t.pkl", persistentLoad: load) } }
        }
        #expect(refused > pkl.count)
    }

    @Test func interpreterLimitsAndStructure() {
        // A million nested lists: refused by the nesting limit, without deep recursion.
        let deep = [0x80, 0x02] + [UInt8](repeating: 0x5D, count: 1_000_000) + [UInt8](repeating: 0x61, count: 999_999) + [0x2E]
        #expect(run(deep) == .nestingTooDeep(limit: 64))
        var small = PickleLimits()
        small.maxStack = 1000
        #expect(run([0x80, 0x02] + [UInt8](repeating: 0x4E, count: 2000) + [0x2E], limits: small)
                == .limitExceeded(what: "pickle stack depth", limit: 1000))
        small = PickleLimits()
        small.maxOps = 100
        #expect(run([0x80, 0x02] + [UInt8](repeating: 0x4E, count: 200) + [0x2E], limits: small)
                == .limitExceeded(what: "pickle operations", limit: 100))
        // A list appended to itself, a container changed after insertion (no cycles).
        #expect({ if case .pickleMalformed = run([0x80, 0x02, 0x5D, 0x32, 0x61, 0x2E]) { true } else { false } }())
        let mutateLater: [UInt8] = [0x80, 0x02, 0x5D, 0x71, 0x00, 0x85, 0x68, 0x00, 0x4E, 0x61, 0x30, 0x2E]
        #expect({ if case .pickleMalformed = run(mutateLater) { true } else { false } }())
        // Undefined memo entry, trailing bytes, missing STOP, unknown opcode, old protocol text opcodes.
        #expect({ if case .pickleMalformed = run([0x80, 0x02, 0x68, 0x05, 0x2E]) { true } else { false } }())
        #expect({ if case .pickleMalformed = run([0x80, 0x02, 0x4E, 0x2E, 0x4E]) { true } else { false } }())
        #expect({ if case .pickleMalformed = run([0x80, 0x02, 0x4E]) { true } else { false } }())
        #expect(run([0x80, 0x02, 0x69, 0x2E]) == .pickleOpcodeUnsupported(offset: 2, opcode: 0x69))  // INST
        #expect(run([0x80, 0x02, 0x92, 0x2E]) == .pickleOpcodeUnsupported(offset: 2, opcode: 0x92))  // NEWOBJ_EX
        // LONG4 beyond the integer limit.
        #expect({ if case .pickleMalformed = run([0x80, 0x02, 0x8B, 0x00, 0x10, 0x00, 0x00] + [UInt8](repeating: 1, count: 4096) + [0x2E]) { true } else { false } }())
        // A global refused by STACK_GLOBAL too, and REDUCE of a refused module path.
        #expect(run([0x80, 0x04, 0x8C, 0x05] + Array("posix".utf8) + [0x8C, 0x06] + Array("system".utf8) + [0x93, 0x2E])
                == .pickleGlobalRefused("posix.system"))
        #expect(run([0x80, 0x02, 0x63] + Array("torch\nload\n".utf8) + [0x2E]) == .pickleGlobalRefused("torch.load"))
    }

    @Test func notACheckpoint() throws {
        let dir = TempDir()
        let p = dir.file("x.pt")
        try writeBytes(Array("hello".utf8), to: p)
        #expect({ if case .unsupportedFormat = problem({ _ = try openTensorCollection(p) }) { true } else { false } }())
        try writeBytes([], to: p)
        #expect({ if case .unsupportedFormat = problem({ _ = try openTensorCollection(p) }) { true } else { false } }())
    }
}
