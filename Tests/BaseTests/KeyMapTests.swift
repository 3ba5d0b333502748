import Testing
@testable import Checkpoint
import TensorFile

@Suite struct KeyMapTests {
    @Test func embeddedMapsEqualTheFilesUnderConverters() throws {
        let dir = Fixtures.repo + "/converters/maps"
        for (name, text) in EmbeddedMaps.files {
            let file = try readFile(dir + "/" + name)
            #expect(Array(text.utf8) + [0x0A] == file || Array(text.utf8) == file, "\(name) is out of date: run converters/maps/embed.py")
        }
    }

    @Test func expressionsEvaluate() throws {
        let vars: [String: ExprValue] = ["L": .int(2), "b": .int(3), "a": .array([0, 1, 1])]
        #expect(try Expr.evaluate("1 + b*(L+1) + 1", vars) == .int(11))
        #expect(try Expr.substitute("x.{(b+1)*(L+1)}.{1 + a[2]}.y", vars) == "x.12.2.y")
        #expect(throws: KeyMapError.self) { _ = try Expr.evaluate("a[5]", vars) }
        #expect(throws: KeyMapError.self) { _ = try Expr.evaluate("nope + 1", vars) }
    }
}
