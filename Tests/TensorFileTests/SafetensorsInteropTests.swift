import Foundation
import Testing
@testable import TensorFile

/// Files written by the Python `safetensors` library (see converters/fixtures/make_format_fixtures.py).
@Suite struct SafetensorsInteropTests {
    static let singleFiles = ["all_dtypes", "scalars_empty", "escaping", "extra_dtypes"]

    @Test(arguments: singleFiles)
    func readsReferenceFilesBitExactly(name: String) throws {
        let expected = try Fixtures.json("safetensors/\(name).expected.json")
        let file = try SafetensorsFile(path: Fixtures.path("safetensors/\(name).safetensors"))
        let rows = expected["tensors"] as! [[String: Any]]
        #expect(file.tensors.count == rows.count)
        for row in rows {
            let tname = row["name"] as! String
            let e = try #require(file.entry(tname), "missing \(tname)")
            #expect(e.info.dtype.name == row["dtype"] as! String)
            #expect(e.info.shape == (row["shape"] as! [Int]))
            let offs = row["data_offsets"] as! [Int]
            #expect([e.begin, e.end] == offs)
            let bytes = try file.tensorBytes(tname)
            #expect(sha256Hex(bytes.bytes) == row["sha256"] as! String, "\(tname)")
        }
        let md = expected["metadata"] as? [String: String]
        if let md {
            let got = Dictionary(uniqueKeysWithValues: try #require(file.metadata))
            #expect(got == md)
        } else {
            #expect(file.metadata == nil)
        }
    }

    @Test(arguments: singleFiles)
    func writerReproducesReferenceBytes(name: String) throws {
        let path = Fixtures.path("safetensors/\(name).safetensors")
        let original = try readBytes(path)
        let file = try SafetensorsFile(path: path)
        let tmp = TempDir()
        // Tensors handed over in a scrambled order: the writer must find the reference order itself.
        let sources = file.tensors.reversed().map { t in TensorSource.bytes(t, try! file.tensorBytes(t.name)) }
        try SafetensorsWriter.write(to: tmp.file("out.safetensors"), tensors: sources, metadata: file.metadata)
        let written = try readBytes(tmp.file("out.safetensors"))
        #expect(written == original)
        #expect(sha256Hex(written) == (try Fixtures.json("safetensors/\(name).expected.json"))["file_sha256"] as! String)
    }

    /// The same round trip with the user-space copy instead of the kernel's, and without the sync:
    /// the bytes do not depend on how they were moved.
    @Test(arguments: singleFiles)
    func roundTripIsBitIdenticalWhicheverWayBytesAreCopied(name: String) throws {
        let path = Fixtures.path("safetensors/\(name).safetensors")
        let tmp = TempDir()
        let src = try openTensorCollection(path)
        AtomicFileWriter.userSpaceCopyOnly.store(true, ordering: .relaxed)
        _ = try convertCollection(src, to: tmp.file("a.lidb"), dtype: nil)
        _ = try convertCollection(try openTensorCollection(tmp.file("a.lidb"), checksums: .always), to: tmp.file("b.safetensors"), dtype: nil)
        AtomicFileWriter.userSpaceCopyOnly.store(false, ordering: .relaxed)
        _ = try convertCollection(src, to: tmp.file("c.lidb"), dtype: nil, sync: false)
        _ = try convertCollection(try openTensorCollection(tmp.file("c.lidb"), checksums: .always), to: tmp.file("d.safetensors"), dtype: nil, sync: false)
        let original = try readBytes(path)
        #expect(try readBytes(tmp.file("b.safetensors")) == original)
        #expect(try readBytes(tmp.file("d.safetensors")) == original)
        #expect(try readBytes(tmp.file("a.lidb")) == (try readBytes(tmp.file("c.lidb"))))
        #expect(try LidbFile(path: tmp.file("c.lidb"), checksums: .never).verify().isEmpty)
    }

    @Test(arguments: singleFiles)
    func roundTripThroughLidbIsBitIdentical(name: String) throws {
        let path = Fixtures.path("safetensors/\(name).safetensors")
        let tmp = TempDir()
        let src = try openTensorCollection(path)
        _ = try convertCollection(src, to: tmp.file("a.lidb"), dtype: nil)
        let mid = try openTensorCollection(tmp.file("a.lidb"), checksums: .always)
        #expect(mid.formatName == "lidb")
        _ = try convertCollection(mid, to: tmp.file("b.safetensors"), dtype: nil)
        #expect(try readBytes(tmp.file("b.safetensors")) == (try readBytes(path)))
        // And compressed: the same tensors come back.
        _ = try convertCollection(src, to: tmp.file("c.lidb"), dtype: nil, zstd: true)
        _ = try convertCollection(try openTensorCollection(tmp.file("c.lidb")), to: tmp.file("d.safetensors"), dtype: nil)
        #expect(try readBytes(tmp.file("d.safetensors")) == (try readBytes(path)))
    }

    @Test func readsShardedCheckpoint() throws {
        let expected = try Fixtures.json("safetensors/sharded/expected.json")
        let c = try ShardedSafetensors(indexPath: Fixtures.path("safetensors/sharded/model.safetensors.index.json"))
        #expect(c.shards.count == 3)
        let rows = expected["tensors"] as! [[String: Any]]
        #expect(c.tensors.count == rows.count)
        for row in rows {
            let name = row["name"] as! String
            let bytes = try c.tensorBytes(name)
            #expect(sha256Hex(bytes.bytes) == row["sha256"] as! String, "\(name)")
        }
        // A sharded checkpoint converts into one file with the same tensors.
        let tmp = TempDir()
        _ = try convertCollection(c, to: tmp.file("m.lidb"), dtype: nil)
        let merged = try LidbFile(path: tmp.file("m.lidb"))
        for row in rows {
            #expect(sha256Hex(try merged.tensorBytes(row["name"] as! String).bytes) == row["sha256"] as! String)
        }
    }

    @Test func shardIndexCannotEscapeItsFolder() throws {
        let tmp = TempDir()
        try writeBytes(Array(#"{"metadata":{},"weight_map":{"a":"../x.safetensors"}}"#.utf8), to: tmp.file("m.safetensors.index.json"))
        guard case .invalidShardIndex = problem({ _ = try ShardedSafetensors(indexPath: tmp.file("m.safetensors.index.json")) }) else {
            Issue.record("expected invalidShardIndex"); return
        }
        try writeBytes(Array(#"{"weight_map":{"a":"/etc/passwd"}}"#.utf8), to: tmp.file("n.safetensors.index.json"))
        guard case .invalidShardIndex = problem({ _ = try ShardedSafetensors(indexPath: tmp.file("n.safetensors.index.json")) }) else {
            Issue.record("expected invalidShardIndex"); return
        }
    }

    @Test func shardIndexMustMatchShards() throws {
        let tmp = TempDir()
        let dir = Fixtures.path("safetensors/sharded")
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) where f.hasSuffix(".safetensors") {
            try FileManager.default.copyItem(atPath: dir + "/" + f, toPath: tmp.file(f))
        }
        // Point one tensor at the wrong shard.
        var index = String(decoding: try readBytes(dir + "/model.safetensors.index.json"), as: UTF8.self)
        let json = try JSONSerialization.jsonObject(with: Data(index.utf8)) as! [String: Any]
        let wm = json["weight_map"] as! [String: String]
        let (name, shard) = wm.first { $0.value == "model-00003-of-00003.safetensors" }!
        index = index.replacingOccurrences(of: "\"\(name)\": \"\(shard)\"", with: "\"\(name)\": \"model-00001-of-00003.safetensors\"")
        try writeBytes(Array(index.utf8), to: tmp.file("model.safetensors.index.json"))
        guard case .invalidShardIndex = problem({ _ = try ShardedSafetensors(indexPath: tmp.file("model.safetensors.index.json")) }) else {
            Issue.record("expected invalidShardIndex"); return
        }
        // A missing shard is an I/O error naming that shard.
        try FileManager.default.removeItem(atPath: tmp.file("model-00002-of-00003.safetensors"))
        try writeBytes(try readBytes(dir + "/model.safetensors.index.json"), to: tmp.file("model.safetensors.index.json"))
        let e = caught { _ = try ShardedSafetensors(indexPath: tmp.file("model.safetensors.index.json")) }
        #expect(e?.file.hasSuffix("model-00002-of-00003.safetensors") == true)
    }

    @Test func escapedNamesSurviveOurJSONWriter() throws {
        // The header our writer produces for the escaping fixture equals the reference header.
        let path = Fixtures.path("safetensors/escaping.safetensors")
        let bytes = try readBytes(path)
        let file = try SafetensorsFile(path: path)
        let (header, _) = SafetensorsWriter.plan(file.tensors, metadata: file.metadata)
        #expect(Array(bytes[8..<(8 + header.count)]) == header)
    }
}
