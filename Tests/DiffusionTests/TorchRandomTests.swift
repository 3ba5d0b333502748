import Foundation
import Testing
import Diffusion
import TensorFile

/// TorchGenerator against torch itself: every value in Fixtures/rng was produced by torch
/// (converters/fixtures/make_rng_fixtures.py, both CPU kernels), and every comparison is on the
/// bytes. Results longer than 1000 values are checked by their SHA-256 and their first and last
/// 64 values.
@Suite struct TorchRandomTests {
    struct Fixture {
        let manifest: [String: Any]
        let f32: SafetensorsFile
        let f64: SafetensorsFile
        init() throws {
            manifest = try DiffusionFixtures.json("rng/manifest.json") as! [String: Any]
            f32 = try SafetensorsFile(path: DiffusionFixtures.path("rng/f32.safetensors"))
            f64 = try SafetensorsFile(path: DiffusionFixtures.path("rng/f64.safetensors"))
        }
        func list(_ key: String) -> [[String: Any]] { manifest[key] as! [[String: Any]] }
        func stored(_ name: String, double: Bool) throws -> [UInt8] {
            Array(try (double ? f64 : f32).tensorBytes(name).bytes)
        }
    }

    static func seed(_ value: Any?) -> UInt64 { UInt64(value as! String)! }

    static func kernel(_ name: String) -> TorchGenerator.NormalFill {
        switch name {
        case "avx2": return .avx2
        case "generic": return .generic
        default: preconditionFailure("unknown kernel \(name)")
        }
    }

    static func bytes<T>(_ values: [T]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }

    /// Compares `values` with a manifest entry ({"sha256", "stored"} under `name`); returns what
    /// differs, or nil.
    static func mismatch(_ fixture: Fixture, _ name: String, _ entry: [String: Any], values: [UInt8], double: Bool) throws -> String? {
        let width = double ? 8 : 4
        var problems: [String] = []
        if sha256Hex(values) != entry["sha256"] as! String { problems.append("sha256") }
        func compare(_ expected: [UInt8], at offset: Int, _ part: String) {
            let got = Array(values[offset..<min(values.count, offset + expected.count)])
            guard got != expected else { return }
            let first = (0..<min(got.count, expected.count)).first { got[$0] != expected[$0] } ?? min(got.count, expected.count)
            problems.append("\(part) differs from element \((offset + first) / width)")
        }
        if entry["stored"] as! String == "full" {
            let expected = try fixture.stored(name, double: double)
            if expected.count != values.count { problems.append("count \(values.count / width) vs \(expected.count / width)") }
            compare(expected, at: 0, "values")
        } else {
            let head = try fixture.stored(name + ".head", double: double)
            let tail = try fixture.stored(name + ".tail", double: double)
            compare(head, at: 0, "head")
            compare(tail, at: values.count - tail.count, "tail")
        }
        return problems.isEmpty ? nil : "\(name): " + problems.joined(separator: ", ")
    }

    /// The draw of one manifest case or sequence step on `g`.
    static func draw(_ g: inout TorchGenerator, _ entry: [String: Any]) -> (bytes: [UInt8], double: Bool) {
        let count = entry["count"] as! Int
        let double = entry["dtype"] as! String == "float64"
        switch (entry["op"] as! String, double) {
        case ("randn", false): return (bytes(g.randn(count: count)), false)
        case ("randn", true): return (bytes(g.randnDouble(count: count)), true)
        case ("rand", false): return (bytes(g.rand(count: count)), false)
        case ("rand", true): return (bytes(g.randDouble(count: count)), true)
        default: preconditionFailure("unknown op")
        }
    }

    @Test func singleCallsMatchTorch() throws {
        let fixture = try Fixture()
        let cases = fixture.list("cases")
        #expect(cases.count > 100)
        var failures: [String] = []
        for entry in cases {
            let kernelName = entry["kernel"] as! String
            // "any": the same bytes whichever kernel is selected.
            let kernels = kernelName == "any" ? [TorchGenerator.NormalFill.avx2, .generic] : [Self.kernel(kernelName)]
            for kernel in kernels {
                var g = TorchGenerator(seed: Self.seed(entry["seed"]), normalFill: kernel)
                let (values, double) = Self.draw(&g, entry)
                if let m = try Self.mismatch(fixture, entry["name"] as! String, entry, values: values, double: double) {
                    failures.append("\(m) [\(kernel)]")
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.count) mismatches: \(failures.prefix(20).joined(separator: "; "))")
    }

    @Test func callSequencesContinueTheStream() throws {
        let fixture = try Fixture()
        let sequences = fixture.list("sequences")
        #expect(sequences.count >= 2)
        var failures: [String] = []
        for sequence in sequences {
            let name = sequence["name"] as! String
            var g = TorchGenerator(seed: Self.seed(sequence["seed"]), normalFill: Self.kernel(sequence["kernel"] as! String))
            for (i, step) in (sequence["steps"] as! [[String: Any]]).enumerated() {
                if step["op"] as! String == "manual_seed" {
                    g.manualSeed(Self.seed(step["seed"]))
                    continue
                }
                let (values, double) = Self.draw(&g, step)
                if let m = try Self.mismatch(fixture, "seq/\(name)/\(i)", step, values: values, double: double) {
                    failures.append(m)
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "; "))")
    }

    @Test func perSampleGeneratorsMatchDiffusers() throws {
        let fixture = try Fixture()
        let batches = fixture.list("batches")
        #expect(!batches.isEmpty)
        var failures: [String] = []
        for batch in batches {
            let name = batch["name"] as! String
            let kernel = Self.kernel(batch["kernel"] as! String)
            var generators = (batch["seeds"] as! [String]).map { TorchGenerator(seed: UInt64($0)!, normalFill: kernel) }
            let shape = batch["shape"] as! [Int]
            #expect(shape[0] == generators.count)
            let perSample = shape.dropFirst().reduce(1, *)
            for (i, draw) in (batch["draws"] as! [[String: Any]]).enumerated() {
                let values = TorchGenerator.randn(batch: &generators, countPerSample: perSample)
                if let m = try Self.mismatch(fixture, "batch/\(name)/\(i)", draw, values: Self.bytes(values), double: false) {
                    failures.append(m)
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "; "))")
    }

    /// The two float32 kernels differ exactly where torch's do.
    @Test func kernelsDifferWhereTorchsDo() throws {
        let fixture = try Fixture()
        for entry in fixture.list("kernel_differences") {
            let seed = Self.seed(entry["seed"]), count = entry["count"] as! Int
            var a = TorchGenerator(seed: seed, normalFill: .avx2)
            var b = TorchGenerator(seed: seed, normalFill: .generic)
            let x = a.randn(count: count), y = b.randn(count: count)
            let differing = zip(x, y).filter { $0.bitPattern != $1.bitPattern }.count
            #expect(differing == entry["differing"] as! Int, "seed \(seed), \(count) values")
        }
    }

    /// manual_seed keeps all 64 bits of the seed but the engine uses the low 32 (the fixtures
    /// include 2^32 + 7 and 2^63 − 1); a copy of a generator continues independently.
    @Test func seedingAndValueSemantics() {
        var high = TorchGenerator(seed: (1 << 32) + 7)
        var low = TorchGenerator(seed: 7)
        #expect(high.initialSeed == (1 << 32) + 7)
        #expect(Self.bytes(high.randn(count: 100)) == Self.bytes(low.randn(count: 100)))

        var g = TorchGenerator(seed: 42)
        _ = g.randn(count: 5)                 // leaves a cached normal value
        var copy = g
        #expect(Self.bytes(g.randn(count: 3)) == Self.bytes(copy.randn(count: 3)))
        #expect(Self.bytes(g.rand(count: 700)) == Self.bytes(copy.rand(count: 700)))   // crosses a state refill
        #expect(g.randn(count: 0).isEmpty)
        #expect(g.random64() == copy.random64())
    }

    @Test func sha256HelperAgreesWithFixtureDigests() throws {
        // The helper's digests of the stored full results must be hashlib's.
        let fixture = try Fixture()
        for entry in fixture.list("cases") where entry["stored"] as! String == "full" {
            let stored = try fixture.stored(entry["name"] as! String, double: entry["dtype"] as! String == "float64")
            #expect(sha256Hex(stored) == entry["sha256"] as! String)
        }
    }
}

/// SHA-256's initial hash values and round constants: the first 32 bits of the fractional parts
/// of the square roots (8) and cube roots (64) of the first primes, computed rather than typed.
private let sha256Constants: (h: [UInt32], k: [UInt32]) = {
    var primes: [Int] = []
    var candidate = 2
    while primes.count < 64 {
        if !primes.contains(where: { candidate % $0 == 0 }) { primes.append(candidate) }
        candidate += 1
    }
    /// floor(frac(p^(1/root)) · 2^32): the low 32 bits of the largest y with y^root ≤ p · 2^(32·root).
    func fractionBits(_ p: Int, root: Int) -> UInt32 {
        let target = bigShift(p, bits: 32 * root)
        func power(_ y: UInt64) -> [UInt32] { (0..<root).reduce([1]) { r, _ in bigMul(r, y) } }
        var lo: UInt64 = 0, hi: UInt64 = 1 << 40     // lo^root ≤ target < hi^root (p < 2^16)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if bigLess(target, power(mid)) { hi = mid } else { lo = mid }
        }
        return UInt32(truncatingIfNeeded: lo)
    }
    return (primes.prefix(8).map { fractionBits($0, root: 2) }, primes.map { fractionBits($0, root: 3) })
}()

/// SHA-256 (FIPS 180-4) of a byte array, lowercase hex. The test target has no crypto library.
private func sha256Hex(_ message: [UInt8]) -> String {
    var h = sha256Constants.h
    let k = sha256Constants.k
    var data = message
    let bitLength = UInt64(message.count) * 8
    data.append(0x80)
    while data.count % 64 != 56 { data.append(0) }
    for i in (0..<8).reversed() { data.append(UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(i)))) }

    func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
    var w = [UInt32](repeating: 0, count: 64)
    for chunk in stride(from: 0, to: data.count, by: 64) {
        for i in 0..<16 {
            w[i] = (0..<4).reduce(UInt32(0)) { ($0 << 8) | UInt32(data[chunk + 4 * i + $1]) }
        }
        for i in 16..<64 {
            let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
        for i in 0..<64 {
            let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
            let ch = (e & f) ^ (~e & g)
            let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
            let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
            let maj = (a & b) ^ (a & c) ^ (b & c)
            let t2 = s0 &+ maj
            (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
        }
        for (i, v) in [a, b, c, d, e, f, g, hh].enumerated() { h[i] = h[i] &+ v }
    }
    return h.map { String(format: "%08x", $0) }.joined()
}

// Little-endian big integers on UInt32 limbs, enough for the SHA-256 constants.
private func bigMul(_ a: [UInt32], _ v: UInt64) -> [UInt32] {
    let parts = [UInt32(truncatingIfNeeded: v), UInt32(truncatingIfNeeded: v >> 32)]
    var r = [UInt32](repeating: 0, count: a.count + 3)
    for (j, pj) in parts.enumerated() {
        var carry: UInt64 = 0
        for i in a.indices {
            let t = UInt64(a[i]) * UInt64(pj) + UInt64(r[i + j]) + carry
            r[i + j] = UInt32(truncatingIfNeeded: t)
            carry = t >> 32
        }
        var idx = a.count + j
        while carry > 0 {
            let t = UInt64(r[idx]) + carry
            r[idx] = UInt32(truncatingIfNeeded: t)
            carry = t >> 32
            idx += 1
        }
    }
    while r.count > 1 && r.last == 0 { r.removeLast() }
    return r
}

private func bigShift(_ p: Int, bits: Int) -> [UInt32] {
    var r = [UInt32](repeating: 0, count: bits / 32)
    r.append(UInt32(p) << UInt32(bits % 32))
    return r
}

private func bigLess(_ a: [UInt32], _ b: [UInt32]) -> Bool {
    var x = a, y = b
    while x.count > 1 && x.last == 0 { x.removeLast() }
    while y.count > 1 && y.last == 0 { y.removeLast() }
    if x.count != y.count { return x.count < y.count }
    for i in x.indices.reversed() where x[i] != y[i] { return x[i] < y[i] }
    return false
}
