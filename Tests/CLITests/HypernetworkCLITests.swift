import Foundation
import Testing
@testable import TensorFile

/// `lidb convert --kind hypernetwork --config` and `lidb bench hyper` on the PyTorch-reference
/// fixtures of Tests/HypernetworkTests (converters/fixtures/make_hyper_fixtures.py).
@Suite(.serialized) struct HypernetworkCLITests {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("HypernetworkTests/Fixtures/vit").path

    @Test func convertThenRunMatchesTheReference() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", Self.dir + "/hyper.safetensors", "--kind", "hypernetwork", "--config", Self.dir + "/hyper.json", "-o", s.file("h.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("hypernetwork") && r.stdout.contains("140 target layers"))
        r = try CLI.run(["bench", "hyper", "--model", s.file("h.lidb"), "--pixels", Self.dir + "/expected.safetensors",
                         "--check", Self.dir + "/expected.safetensors", "--repeat", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try JSONValue.parse(Array(r.stdout.utf8), file: "stdout")
        let err = try #require(json["max_rel_error_vs_reference"]?.doubleValue)
        #expect(err <= 1e-4)
        #expect(json["layers"]?.int64Value == 140)
    }

    @Test func badConfigGivesOneLineAndNoOutput() throws {
        let s = Scratch()
        var text = try String(contentsOfFile: Self.dir + "/hyper.json", encoding: .utf8)
        text = text.replacingOccurrences(of: "\"num_heads\": 3", with: "\"num_heads\": 5")
        try text.write(toFile: s.file("bad.json"), atomically: true, encoding: .utf8)
        let r = try CLI.run(["convert", Self.dir + "/hyper.safetensors", "--kind", "hypernetwork", "--config", s.file("bad.json"), "-o", s.file("h.lidb")])
        #expect(r.status == 2)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains("bad.json") && lines[0].contains("decoder.num_heads"), "\(r.stderr)")
        #expect(s.contents == ["bad.json"], "no output or temporary file")
        let noConfig = try CLI.run(["convert", Self.dir + "/hyper.safetensors", "--kind", "hypernetwork", "-o", s.file("h.lidb")])
        #expect(noConfig.status == 2 && noConfig.stderr.contains("--config"))
        #expect(s.contents == ["bad.json"])
    }
}
