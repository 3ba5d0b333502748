import Checkpoint
import Foundation
import SubjectDelta
import TensorFile

/// What every execution starts from, made once per process: a scratch folder (in /dev/shm when
/// there is one), the tiny SD 1.x test base converted from its diffusers fixture, and the tiny
/// hypernetwork fixture's config and tensors.
final class FuzzFixtures: @unchecked Sendable {
    nonisolated(unsafe) static var shared: FuzzFixtures = FuzzFixtures()

    let root: String
    /// Per-process scratch folder; every execution leaves it empty.
    let scratch: String
    /// Holds the converted base for the life of the process (outside `scratch`).
    let home: String
    let basePath: String
    let base: BaseModel
    /// The base's tensors, for rewriting its metadata around the same data.
    let baseTensors: [TensorSource]
    /// Target layers of the base (the `paper` set) and every other 2-D weight.
    let targets: [TargetLayer]
    let otherMatrices: [TargetLayer]
    let hyperConfig: JSONValue
    let hyperTensors: [TensorSource]

    private init() {
        let env = ProcessInfo.processInfo.environment
        if let r = env["LIDB_FUZZ_ROOT"] {
            root = r
        } else if FileManager.default.fileExists(atPath: FileManager.default.currentDirectoryPath + "/Package.swift") {
            root = FileManager.default.currentDirectoryPath
        } else {
            root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        }
        let tmp = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/" : NSTemporaryDirectory()
        home = tmp + "lidb-fuzz-semantic-\(getpid())"
        // Folders of earlier processes that crashed (and so never ran their exit handler).
        for n in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] where n.hasPrefix("lidb-fuzz-semantic-") {
            if let pid = Int32(n.dropFirst("lidb-fuzz-semantic-".count)), kill(pid, 0) != 0, errno == ESRCH {
                try? FileManager.default.removeItem(atPath: tmp + n)
            }
        }
        scratch = home + "/run"
        try? FileManager.default.removeItem(atPath: home)
        do {
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            basePath = home + "/base.lidb"
            let folder = root + "/Tests/BaseTests/Fixtures/sd1/diffusers-safetensors"
            _ = try BaseConverter.write(BaseConverter.plan(input: folder), to: basePath, dtype: nil)
            base = try BaseModel(path: basePath)
            let file = base.file
            baseTensors = try file.tensors.map { t throws(TensorFileError) in .bytes(t, try file.tensorBytes(t.name)) }
            targets = TargetSet.paper.layers(in: file.tensors)
            let named = Set(targets.map(\.weightName))
            otherMatrices = file.tensors.compactMap { t in
                guard t.shape.count == 2, t.name.hasSuffix(".weight"), !named.contains(t.name), t.shape[0] > 0, t.shape[1] > 0 else { return nil }
                return TargetLayer(name: String(t.name.dropLast(".weight".count)), out: t.shape[0], in: t.shape[1])
            }
            let hyper = root + "/Tests/HypernetworkTests/Fixtures/vit"
            hyperConfig = try JSONValue.parse([UInt8](Data(contentsOf: URL(fileURLWithPath: hyper + "/hyper.json"))), file: "hyper.json")
            let weights = try SafetensorsFile(path: hyper + "/hyper.safetensors")
            hyperTensors = try weights.tensors.map { t throws(TensorFileError) in .bytes(t, try weights.tensorBytes(t.name)) }
        } catch {
            fatalError("fuzz fixtures could not be prepared (run from the repository root or set LIDB_FUZZ_ROOT): \(error)")
        }
        let home = self.home
        atexit_b { try? FileManager.default.removeItem(atPath: home) }
    }

    func path(_ name: String) -> String { scratch + "/" + name }

    /// Empties the scratch folder, first checking that no operation left a temp file behind.
    func endRun() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: scratch)) ?? []
        for n in names {
            // Writers stage into `.NAME.tmp-XXXXXX` next to the output; a failed or finished write removes it.
            oracle("temp-file", !(n.hasPrefix(".") && n.contains(".tmp")), "temp file left behind: \(n)")
            try? FileManager.default.removeItem(atPath: scratch + "/" + n)
        }
    }
}

/// `atexit` with a Swift closure (one per process is enough here).
private nonisolated(unsafe) var exitBlock: (() -> Void)?
private func atexit_b(_ body: @escaping () -> Void) {
    exitBlock = body
    atexit { exitBlock?() }
}
