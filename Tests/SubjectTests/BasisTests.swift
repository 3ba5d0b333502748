import Crypto
import Foundation
import Testing
@testable import SubjectDelta

func sha256Hex(_ floats: [Float]) -> String {
    let bytes = floats.flatMap { f -> [UInt8] in withUnsafeBytes(of: f.bitPattern.littleEndian) { Array($0) } }
    return SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

/// spec/basis.md §5, computed by the independent Python implementation (converters/python/lidb/basis.py).
let basisVectors: [(seed: UInt64, name: String, out: Int, inDim: Int, a: Int, b: Int, down: String, up: String)] = [
    (0, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 320, 320, 100, 50,
     "0d10eb96a0df0754c84b084591d754261a5ce12943a02eabdfb24f9c67624278", "355dc929d46e1fb8c43a0b44bcdebbc8da65d2928750038108bb0d736f96a82e"),
    (42, "text_encoder.text_model.encoder.layers.0.mlp.fc1", 3072, 768, 100, 50,
     "7b354bac263d337c6e02146e5d9a76bb5900bd79052196d0d5117c80d1d63383", "5480a8707e9c892056e0b3a523e621e3a54233d26cef69199ae94531e7c89013"),
    (1, "x", 8, 5, 100, 50,
     "d70ea327f30641e3a57b3cbe1f3b21794e5bdcceb6c32820c26dc29aed63a8d9", "281675f2be09edf031547e1ef3ef0520323fa351bc5a82bf4ca029ca2bfefcbd"),
    (UInt64.max, "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k", 1280, 768, 100, 50,
     "04ed17d12ca7fc9583fd4066b745c0c72286a56682aa248aaad1f38e2ad011cf", "b1e9af373ff365c5b47a1dfc2515a31d7b208b8923b5264341fc103030aadb64"),
    (7, "\u{FC}n\u{EF}", 37, 6, 4, 3,
     "b93ed9d59f323f7903a0b34428715d5885156fc93ebede3c778a4e6e4f7fd416", "dc9e1ff66448f1f371f094ab420547416164e9442fd792882e4a77ebc5c27ccf"),
]

@Suite struct BasisTests {
    @Test func specTestVectors() throws {
        #expect(!basisVectors.isEmpty)
        for v in basisVectors {
            let l = try Basis.layer(seed: v.seed, name: v.name, out: v.out, in: v.inDim, a: v.a, b: v.b)
            #expect(sha256Hex(l.down) == v.down, "down, seed \(v.seed) \(v.name)")
            #expect(sha256Hex(l.up) == v.up, "up, seed \(v.seed) \(v.name)")
        }
    }

    @Test func basesAreOrthonormalAndClamped() throws {
        let l = try Basis.layer(seed: 3, name: "layer", out: 40, in: 24, a: 100, b: 7)
        #expect(l.a == 24 && l.b == 7)
        #expect(l.down.count == 24 * 24 && l.up.count == 40 * 7)
        var worst: Float = 0
        for i in 0..<l.a { for j in 0..<l.a {
            var s: Float = 0
            for c in 0..<24 { s += l.down[i * 24 + c] * l.down[j * 24 + c] }
            worst = max(worst, abs(s - (i == j ? 1 : 0)))
        } }
        for i in 0..<l.b { for j in 0..<l.b {
            var s: Float = 0
            for c in 0..<40 { s += l.up[c * 7 + i] * l.up[c * 7 + j] }
            worst = max(worst, abs(s - (i == j ? 1 : 0)))
        } }
        #expect(worst < 1e-5)
        // Different layers, roles and seeds give different bases; the same inputs the same bits.
        let again = try Basis.layer(seed: 3, name: "layer", out: 40, in: 24, a: 100, b: 7)
        #expect(again.down == l.down && again.up == l.up)
        #expect(try Basis.layer(seed: 4, name: "layer", out: 40, in: 24, a: 100, b: 7).down != l.down)
        #expect(try Basis.layer(seed: 3, name: "layer2", out: 40, in: 24, a: 100, b: 7).down != l.down)
    }

    @Test func lowLevelStream() {
        let k = Basis.key(seed: 7, layer: "\u{FC}n\u{EF}", role: "down")
        #expect(k == 0x2a0e_8dd6_1a14_6a14)
        #expect((0..<4).map { Basis.value(k, UInt64($0)) } == [-0.8773842427964649, -0.10664634220186642, -0.8978448499179841, 0.34342544964783883])
    }
}
