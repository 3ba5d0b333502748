import Foundation
import Testing
import Diffusion
@testable import Training

/// spec/finetune.md §3, §5, §7: every random draw of a run, rebuilt from the seed alone and
/// compared bit for bit with what the PyTorch reference run (make_finetune_fixtures.py) drew.
@Suite struct DrawTests {
    static let latentCount = 4 * 8 * 8   // resolution 64, VAE factor 8
    static let timesteps = 1000

    struct Trajectory {
        let name: String, base: String, seed: UInt64, steps: Int
        let newLiDB: (rank: Int, a: Int)?, newLoRA: Int?
        let tensors: [String: String]
        let timesteps: [Int], flips: [Bool]
    }

    static func trajectories() throws -> ([Trajectory], [String: [(name: String, out: Int, in: Int)]]) {
        let m = try TrainingFixtures.manifest()
        // Tables by model name (a model names its table: sd1-cond uses sd1's).
        let raw = m["layer_tables"] as! [String: [[Any]]]
        var tables: [String: [(name: String, out: Int, in: Int)]] = [:]
        for (model, entry) in m["models"] as! [String: [String: Any]] {
            tables[model] = raw[entry["layer_table"] as! String]!.map { ($0[0] as! String, $0[1] as! Int, $0[2] as! Int) }
        }
        let list = (m["trajectories"] as! [[String: Any]]).map { t -> Trajectory in
            let s = t["settings"] as! [String: Any]
            let initSubject = t["init_subject"] as? String
            let lidb = s["lidb"] as? [String: Any]
            let train = s["train"] as! String
            return Trajectory(
                name: t["name"] as! String, base: t["base"] as! String, seed: UInt64(s["seed"] as! String)!,
                steps: t["steps"] as! Int,
                newLiDB: (lidb != nil && initSubject == nil) ? (lidb!["rank"] as! Int, lidb!["a"] as! Int) : nil,
                // The fixtures' init subjects hold no LoRA terms: a trained LoRA term is always new.
                newLoRA: (train == "lora" || train == "both") ? (s["relax_rank"] as! Int) : nil,
                tensors: t["tensors"] as! [String: String],
                timesteps: t["timesteps"] as! [Int], flips: t["flips"] as! [Bool])
        }
        return (list, tables)
    }

    @Test func kaimingBoundIsTorchs() {
        // torch: gain = sqrt(2 / (1 + sqrt(5) ** 2)); bound = sqrt(3) * gain / sqrt(fan_in).
        // sqrt(5)² rounds to 5.000000000000001, so the bound is not exactly 1/sqrt(fan_in).
        let five = (5.0).squareRoot() * (5.0).squareRoot()
        #expect(five == 5.000000000000001)
        for fan in [1, 4, 6, 32, 100, 768, 1024] {
            let b = TrainingRandom.kaimingUniformBound(fanIn: fan)
            #expect(abs(b - 1 / Double(fan).squareRoot()) <= 2e-16)
        }
    }

    @Test func initialFactorsAndStepDrawsOfEveryTrajectory() throws {
        let (list, tables) = try Self.trajectories()
        let file = try FixtureFile("trajectories.safetensors")
        #expect(list.count == 7)
        for tr in list {
            let table = try #require(tables[tr.base])
            var random = TrainingRandom(seed: tr.seed)
            let requests = table.map { row in
                NewFactorRequest(lidbDownTrain: tr.newLiDB.map { ($0.rank, min($0.a, row.in)) },
                                 loraDown: tr.newLoRA.map { ($0, row.in) })
            }
            let drawn = try random.initialFactors(requests)
            if tr.newLiDB != nil {
                let expected = try file.rows(try #require(tr.tensors["lidb.down_train"]))[0]
                let got = drawn.flatMap { $0.lidbDownTrain ?? [] }
                #expect(bitsEqual(got, expected), "\(tr.name): lidb.down_train initial values")
            }
            if tr.newLoRA != nil {
                let expected = try file.rows(try #require(tr.tensors["lora.down"]))[0]
                let got = drawn.flatMap { $0.loraDown ?? [] }
                #expect(bitsEqual(got, expected), "\(tr.name): lora.down initial values")
                // up factors start at zero (row 0 of the stored up tensors).
                let up = try file.rows(try #require(tr.tensors["lora.up"]))[0]
                #expect(up.allSatisfy { $0 == 0 })
            }
            let z = try file.floats(try #require(tr.tensors["z"]))
            let noise = try file.floats(try #require(tr.tensors["noise"]))
            let ts = try file.int64s(try #require(tr.tensors["timestep"]))
            let flips = try file.bytes(try #require(tr.tensors["flip"]))
            for k in 0..<tr.steps {
                let d = try random.step(latentCount: Self.latentCount, timesteps: Self.timesteps)
                let range = (k * Self.latentCount)..<((k + 1) * Self.latentCount)
                #expect(bitsEqual(d.z, Array(z[range])), "\(tr.name) step \(k + 1): z")
                #expect(bitsEqual(d.noise, Array(noise[range])), "\(tr.name) step \(k + 1): noise")
                #expect(d.timestep == Int(ts[k]) && d.timestep == tr.timesteps[k], "\(tr.name) step \(k + 1): timestep")
                #expect(d.flip == (flips[k] != 0) && d.flip == tr.flips[k], "\(tr.name) step \(k + 1): flip")
            }
        }
    }

    /// The model-gradient fixtures: the first step's draws from a fresh generator.
    @Test(arguments: ["sd1", "sd2", "sd1-cond"])
    func firstStepDrawsOfTheGradientFixtures(_ model: String) throws {
        let m = try TrainingFixtures.manifest()
        let entry = (m["models"] as! [String: [String: Any]])[model]!
        let file = try FixtureFile("\(model).safetensors")
        var random = TrainingRandom(seed: UInt64(entry["draw_seed"] as! Int))
        let d = try random.step(latentCount: Self.latentCount, timesteps: Self.timesteps)
        #expect(bitsEqual(d.z, try file.floats("z")))
        #expect(bitsEqual(d.noise, try file.floats("noise")))
        let stored = try file.int64s("timestep")
        #expect(d.timestep == entry["timestep"] as! Int)
        #expect(Int64(d.timestep) == stored[0])
    }

    @Test func singleDrawsConsumeOneWordEach() {
        // rand(1), randint and uniform_ each take one engine output per value; randn of a
        // multiple of 16 takes exactly n (spec §3).
        var a = TorchGenerator(seed: 99)
        var b = TorchGenerator(seed: 99)
        let u = a.nextUniform()
        let w = b.random()
        #expect(u == Float(w & 0xFF_FFFF) * 0x1p-24)
        let t = a.randint(upperBound: 1000)
        #expect(t == b.random() % 1000)
        let f = a.uniform(count: 3, low: -0.5, high: 0.5)
        for x in f {
            let v = Float(b.random() & 0xFF_FFFF) * 0x1p-24
            #expect(x == Float(-0.5).addingProduct(v, 1))
        }
        _ = a.randn(count: 32)
        b.skip(words: 32)
        #expect(a.random() == b.random())
        // A zero bound draws nothing.
        #expect(a.randint(upperBound: 0) == 0)
        #expect(a.random() == b.random())
    }

    @Test func factorSizesAreCheckedBeforeDrawing() throws {
        var random = TrainingRandom(seed: 1)
        let before = random.generator
        for (rows, fan) in [(0, 4), (4, 0), (-1, 4), (Int.max, 2), (1 << 20, 1 << 20)] {
            #expect(throws: TrainingError.self) { _ = try random.kaimingUniform(rows: rows, fanIn: fan) }
        }
        var copy = before
        var now = random.generator
        #expect(copy.random() == now.random(), "a refused shape draws nothing")
        let e = #expect(throws: TrainingError.self) { _ = try random.kaimingUniform(rows: 1 << 20, fanIn: 1 << 20) }
        #expect(e?.description.contains("1048576 × 1048576") == true)
        // Step draws: a bad latent size or timestep count is refused before drawing.
        for (n, t) in [(0, 1000), (-4, 1000), (TrainingRandom.maxLatentCount + 1, 1000), (256, 0), (256, -1), (256, 1 << 32)] {
            #expect(throws: TrainingError.self) { _ = try random.step(latentCount: n, timesteps: t) }
        }
        var after = random.generator
        var fresh = TrainingRandom(seed: 1).generator
        #expect(after.random() == fresh.random(), "nothing was drawn")
    }
}
