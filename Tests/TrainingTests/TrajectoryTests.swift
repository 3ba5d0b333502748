import Checkpoint
import Foundation
import SubjectDelta
import TensorFile
import Testing
@testable import Training

/// spec/finetune.md §10 "Trajectories": whole runs of `Finetuner` (5 steps, SGD and AdamW, from
/// scratch, the fast finetune and `both`, flip on, clipping engaged or not) against the runs the
/// specification's PyTorch reference made (converters/fixtures/make_finetune_fixtures.py):
/// timesteps and flips exactly, losses ≤ 1e-5 relative, every trained and frozen factor tensor
/// (concatenated in layer-table order) ≤ 1e-4 relative after every step.
@Suite(.serialized) struct TrajectoryTests {
    struct Run {
        var name: String, base: String, initSubject: String?, steps: Int
        var settings: [String: Any]
        var tensors: [String: String]
    }

    static func runs() throws -> [Run] {
        let m = try TrainingFixtures.manifest()
        return (m["trajectories"] as! [[String: Any]]).map { t in
            Run(name: t["name"] as! String, base: t["base"] as! String, initSubject: t["init_subject"] as? String,
                steps: t["steps"] as! Int, settings: t["settings"] as! [String: Any], tensors: t["tensors"] as! [String: String])
        }
    }

    static let names = ["sgd_lidb", "adamw_lidb", "adamw_relaxed", "adamw_both", "sgd_clip", "cond_sgd", "cond_adamw_relaxed"]

    /// The base of a fixture model, converted once per test into a temporary folder.
    static func base(_ model: String) throws -> (BaseModel, String) {
        let dir = NSTemporaryDirectory() + "lidb-traj-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let source = model == "sd1-cond" ? TrainingFixtures.path("sd1-cond")
            : TrainingFixtures.repo + "/Tests/BaseTests/Fixtures/\(model)/diffusers-safetensors"
        let path = dir + "/base.lidb"
        _ = try BaseConverter.write(BaseConverter.plan(input: source), to: path, dtype: nil)
        return (try BaseModel(path: path), dir)
    }

    static func options(_ r: Run) throws -> TrainingOptions {
        let s = r.settings
        func num(_ k: String) -> Double? { (s[k] as? NSNumber)?.doubleValue }
        let lr = num("lr")!
        let opt: OptimizerSettings
        if (s["optimizer"] as! String) == "adamw" {
            let betas = (s["betas"] as! [NSNumber]).map(\.doubleValue)
            opt = .adamw(AdamWSettings(lr: lr, beta1: betas[0], beta2: betas[1], eps: num("eps")!, weightDecay: num("weight_decay")!))
        } else {
            opt = .sgd(lr: lr)
        }
        var shape = LiDBShape()
        if let l = s["lidb"] as? [String: Any] {
            shape = LiDBShape(rank: (l["rank"] as! NSNumber).intValue, a: (l["a"] as! NSNumber).intValue, b: (l["b"] as! NSNumber).intValue,
                              alpha: (l["alpha"] as! NSNumber).doubleValue)
        }
        let seed = UInt64(s["seed"] as! String)!
        let basisSeed = (s["basis_seed"] as? String).flatMap { UInt64($0) }
        return TrainingOptions(steps: r.steps, optimizer: opt, maxGradNorm: num("max_grad_norm")!, seed: seed, basisSeed: basisSeed,
                               resolution: (s["resolution"] as! NSNumber).intValue, flip: s["flip"] as! Bool,
                               train: TrainMode(rawValue: s["train"] as! String), lidb: shape,
                               relaxRank: (s["relax_rank"] as? NSNumber)?.intValue ?? 4, relaxAlpha: num("lora_alpha"))
    }

    /// The concatenation of one role's factors over the layers, in table order.
    static func concatenated(_ run: Finetuner, _ role: String) -> [Float] {
        var out: [Float] = []
        for i in run.layers.indices {
            switch role {
            case "lidb.down_train": out += run.lidbTerms[i]?.down ?? []
            case "lidb.up_train": out += run.lidbTerms[i]?.up ?? []
            case "lora.down": out += run.loraTerms[i]?.down ?? []
            default: out += run.loraTerms[i]?.up ?? []
            }
        }
        return out
    }

    @Test(arguments: names)
    func trajectoryMatchesTheReference(_ name: String) throws {
        let r = try #require(try Self.runs().first { $0.name == name })
        let (base, dir) = try Self.base(r.base)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let photo = TrainingFixtures.repo + "/samples/face.jpg"
        let start: FinetuneStart
        if let s = r.initSubject {
            let subject = try Subject(path: TrainingFixtures.path(s))
            start = .subject(subject, sha256: String(repeating: "0", count: 64))
        } else {
            start = .scratch(targets: .paper)
        }
        let prompt = r.settings["prompt"] as! String
        let run = try Finetuner(base: base, request: FinetuneRequest(images: [photo], start: start, options: try Self.options(r), prompt: prompt))
        let f = try FixtureFile("trajectories.safetensors")
        let roles = ["lidb.down_train", "lidb.up_train", "lora.down", "lora.up"].filter { r.tensors[$0] != nil }
        var reference: [String: [[Float]]] = [:]
        for role in roles { reference[role] = try f.rows(r.tensors[role]!) }
        // Before step 1: the initial factors (drawn, zero, or the init's).
        for role in roles { #expect(relativeError(Self.concatenated(run, role), reference[role]![0]) <= 1e-6, "\(name) \(role) initial") }
        let refLoss = try f.floats(r.tensors["loss"]!)
        let refT = try f.int64s(r.tensors["timestep"]!)
        let refFlip = try f.bytes(r.tensors["flip"]!)
        var step = 0
        var worstLoss = 0.0, worstFactor: [String: Double] = [:]
        _ = try run.run(onStep: { s in
            step = s.step
            #expect(Int64(s.timestep) == refT[s.step - 1], "\(name) step \(s.step) timestep")
            #expect(s.flipped == (refFlip[s.step - 1] != 0), "\(name) step \(s.step) flip")
            let le = relativeError([s.loss], [refLoss[s.step - 1]])
            worstLoss = max(worstLoss, le)
            #expect(le <= 1e-5, "\(name) step \(s.step) loss \(s.loss) vs \(refLoss[s.step - 1])")
            for role in roles {
                let rows = reference[role]!
                let want = rows.count == 1 ? rows[0] : rows[s.step]   // frozen tensors are stored once
                let e = relativeError(Self.concatenated(run, role), want)
                worstFactor[role] = max(worstFactor[role] ?? 0, e)
                #expect(e <= 1e-4, "\(name) step \(s.step) \(role): relative error \(e)")
            }
        })
        #expect(step == r.steps)
        print("\(name): \(r.steps) steps, loss ≤ \(worstLoss) relative, factors \(worstFactor.sorted { $0.key < $1.key }.map { "\($0.key) ≤ \($0.value)" }.joined(separator: ", "))")
    }
}
