import Foundation
import Testing
@testable import TensorFile

#if canImport(Glibc)
import Glibc
#endif

/// `lidb finetune` end to end on the tiny SD 1 fixture pipeline (64 px: 8×8 latents): the subject
/// and its provenance, the step log, the timings line, the fast finetune from an init, and the
/// refusals (options, images, inits, interruption, divergence) — each leaving no output behind.
@Suite(.serialized) struct FinetuneCLITests {
    static let sd1 = repoRoot + "/Tests/BaseTests/Fixtures/sd1/diffusers-safetensors"
    static let photo = samples + "/face.jpg"

    static func base(_ s: Scratch) throws -> String {
        let r = try CLI.run(["convert", sd1, "-o", s.file("base.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        return s.file("base.lidb")
    }

    @Test func trainsASubjectWithLogTimingsAndProvenance() throws {
        let s = Scratch()
        let base = try Self.base(s)
        let r = try CLI.run(["finetune", "--base", base, "--image", Self.photo, "--resolution", "64", "--steps", "3", "--seed", "5",
                             "--eval", "2", "--name", "me", "-o", s.file("me.lidb"), "--log", s.file("steps.jsonl"), "--timings"])
        #expect(r.status == 0, "\(r.stderr)")
        // The last stdout line is the timings object.
        let last = try #require(r.stdout.split(separator: "\n").last)
        let timings = try JSONValue.parse(Array(last.utf8), file: "stdout")
        for key in ["steps", "step_median_s", "load_s", "total_s", "peak_rss_mib", "final_loss", "eval_loss_before", "eval_loss_after"] {
            #expect(timings[key]?.doubleValue != nil, "timings lacks \(key): \(last)")
        }
        #expect(timings["steps"]?.int64Value == 3)
        // One JSON line per step.
        let log = try String(contentsOfFile: s.file("steps.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(log.count == 3)
        for (i, line) in log.enumerated() {
            let o = try JSONValue.parse(Array(line.utf8), file: "log")
            #expect(o["step"]?.int64Value == Int64(i + 1))
            let t = try #require(o["timestep"]?.int64Value)
            #expect(t >= 0 && t < 1000)
            #expect(o["loss"]?.doubleValue?.isFinite == true && o["seconds"]?.doubleValue != nil)
        }
        // The subject: the paper layers with LiDB terms, and the provenance of spec/finetune.md §9.
        let f = try LidbFile(path: s.file("me.lidb"))
        #expect(f.kind == "subject")
        let info = try #require(f.metadata["info"])
        #expect(info["name"]?.stringValue == "me" && info["trigger"]?.stringValue == "sks" && info["class"]?.stringValue == "face")
        let p = try #require(info["provenance"])
        #expect(p["made_by"]?.stringValue == "lidb finetune" && p["procedure"]?.stringValue == "lidb-finetune-1")
        #expect(p["steps"]?.int64Value == 3 && p["seed"]?.stringValue == "5" && p["resolution"]?.int64Value == 64)
        #expect(p["init"]?["kind"]?.stringValue == "scratch" && p["train"]?.stringValue == "lidb")
        #expect(p["prompt"]?.stringValue == "a photo of sks face")
        #expect(p["optimizer"]?["name"]?.stringValue == "adamw")
        let finalLoss = try #require(p["final_loss"]?.doubleValue)
        let lastLogged = try JSONValue.parse(Array(log[2].utf8), file: "log")["loss"]?.doubleValue
        #expect(finalLoss == lastLogged)
        let images = try #require(p["images_sha256"]?.arrayValue)
        #expect(images.count == 1 && images[0].stringValue?.count == 64)
        // The same run again gives the same bytes (every draw comes from the seed).
        let r2 = try CLI.run(["finetune", "--base", base, "--image", Self.photo, "--resolution", "64", "--steps", "3", "--seed", "5",
                              "--eval", "2", "--name", "me", "-o", s.file("again.lidb")])
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(FileManager.default.contents(atPath: s.file("me.lidb")) == FileManager.default.contents(atPath: s.file("again.lidb")))

        // The fast finetune from that subject: its LiDB terms frozen, a LoRA term trained.
        let r3 = try CLI.run(["finetune", "--base", base, "--image", Self.photo, "--resolution", "64", "--steps", "2",
                              "--init", s.file("me.lidb"), "--relax-rank", "2", "--dtype", "f32", "-o", s.file("fast.lidb")])
        #expect(r3.status == 0, "\(r3.stderr)")
        let fast = try LidbFile(path: s.file("fast.lidb"))
        #expect(fast.tensors.contains { $0.name.hasPrefix("lora.") } && fast.entry("lidb.down_train") != nil, "\(fast.tensors.map(\.name))")
        let fp = try #require(fast.metadata["info"]?["provenance"])
        #expect(fp["init"]?["kind"]?.stringValue == "subject" && fp["train"]?.stringValue == "lora" && fp["relax_rank"]?.int64Value == 2)
        #expect(fp["init"]?["provenance"]?["made_by"]?.stringValue == "lidb finetune")
        #expect(fast.metadata["info"]?["name"]?.stringValue == "me", "the init's name is kept")
    }

    /// `--weights f16-per-layer` on an F16 base keeps the UNet's large weights (≥ 4,096 values) as
    /// F16 and converts them per use; the conversion is exact, so the subject is byte-identical to
    /// the f32 run's. The sample world's UNet (F16, 32–64 channels) has such weights; the tiny
    /// fixture pipelines' are all smaller.
    @Test func halfResidentWeightsTrainTheSameSubject() throws {
        let s = Scratch()
        let r0 = try CLI.run(["convert", samples + "/world/pipeline", "--dtype", "f16", "-o", s.file("base16.lidb")])
        #expect(r0.status == 0, "\(r0.stderr)")
        var counts: [String: Int64] = [:]
        for w in ["f32", "f16-per-layer"] {
            let r = try CLI.run(["finetune", "--base", s.file("base16.lidb"), "--image", samples + "/world/heldout/0000.png",
                                 "--resolution", "64", "--steps", "2",
                                 "--seed", "3", "--weights", w, "--timings", "-o", s.file("\(w).lidb")])
            #expect(r.status == 0, "\(r.stderr)")
            let last = try #require(r.stdout.split(separator: "\n").last)
            counts[w] = try JSONValue.parse(Array(last.utf8), file: "stdout")["unet_f16_weights"]?.int64Value
        }
        #expect(counts["f32"] == 0)
        #expect((counts["f16-per-layer"] ?? 0) > 10_000, "\(counts)")
        let a = FileManager.default.contents(atPath: s.file("f32.lidb")), b = FileManager.default.contents(atPath: s.file("f16-per-layer.lidb"))
        #expect(a != nil && a == b)
        let bad = try CLI.run(["finetune", "--base", s.file("base16.lidb"), "--image", Self.photo, "--weights", "f8", "-o", s.file("x.lidb")])
        #expect(bad.status != 0 && bad.stderr.contains("weights"), "\(bad.stderr)")
    }

    /// HyperDreamBooth's order: the hypernetwork's prediction for the photo, then the fast
    /// finetune. The predicted LiDB factors stay exactly as `lidb personalize` predicts them (in
    /// float32) and a LoRA term trains beside them.
    @Test func fastFinetuneFromAHypernetworkPrediction() throws {
        let s = Scratch()
        var r = try CLI.run(["convert", samples + "/tiny-sd", "-o", s.file("base.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["convert", samples + "/tiny-hyper.safetensors", "--kind", "hypernetwork", "--config", samples + "/tiny-hyper.json",
                         "-o", s.file("hyper.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["personalize", "--hypernet", s.file("hyper.lidb"), "--base", s.file("base.lidb"), "--image", Self.photo,
                         "--dtype", "f32", "-o", s.file("predicted.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try CLI.run(["finetune", "--base", s.file("base.lidb"), "--hypernet", s.file("hyper.lidb"), "--image", Self.photo,
                         "--resolution", "64", "--steps", "2", "--relax-rank", "2", "--dtype", "f32", "-o", s.file("fast.lidb")])
        #expect(r.status == 0, "\(r.stderr)")
        let predicted = try LidbFile(path: s.file("predicted.lidb")), fast = try LidbFile(path: s.file("fast.lidb"))
        for name in ["lidb.down_train", "lidb.up_train"] {
            let a = try predicted.tensorBytes(name), b = try fast.tensorBytes(name)
            #expect(Array(a.bytes) == Array(b.bytes), "\(name): the prediction is kept frozen")
        }
        #expect(fast.tensors.contains { $0.name.hasPrefix("lora.") })
        let p = try #require(fast.metadata["info"]?["provenance"])
        #expect(p["init"]?["kind"]?.stringValue == "hypernetwork" && p["train"]?.stringValue == "lora" && p["steps"]?.int64Value == 2)
        #expect(p["init"]?["hypernetwork"]?.stringValue == predicted.metadata["info"]?["provenance"]?["hypernetwork"]?.stringValue)
    }

    @Test func badRequestsAreRefusedByNameAndWriteNothing() throws {
        let s = Scratch()
        let base = try Self.base(s)
        let out = s.file("out.lidb")
        let common = ["finetune", "--base", base, "-o", out]
        let cases: [([String], String)] = [
            (["--image", Self.photo, "--steps", "0"], "--steps"),
            (["--image", Self.photo, "--lr", "nan"], "--lr"),
            (["--image", Self.photo, "--lr", "-1"], "--lr"),
            (["--image", Self.photo, "--resolution", "60"], "--resolution"),
            (["--image", Self.photo, "--resolution", "8192"], "--resolution"),
            (["--image", Self.photo, "--max-grad-norm", "inf"], "--max-grad-norm"),
            (["--image", Self.photo, "--rank", "0"], "--rank"),
            (["--image", Self.photo, "--down-dim", "5000"], "--down-dim"),
            (["--image", Self.photo, "--optimizer", "lion"], "--optimizer"),
            (["--image", Self.photo, "--optimizer", "sgd", "--adam-beta1", "0.5"], "--adam-beta1"),
            (["--image", Self.photo, "--adam-beta2", "1"], "--adam-beta2"),
            (["--image", Self.photo, "--train", "lora", "--relax-rank", "64", "--resolution", "64"], "--relax-rank"),
            (["--image", Self.photo, "--eval", "0", "--resolution", "64", "--steps", "1"], "--eval"),
            (["--image", s.file("missing.jpg")], "missing.jpg"),
            (["--image", Self.photo, "--init", s.file("missing.lidb")], "missing.lidb"),
            (["--image", Self.photo, "--init", base], "subject"),
            (["--image", Self.photo, "--init", base, "--hypernet", base], "--hypernet"),
            (["--image", Self.photo, "--prompt", "x", "--trigger", "y"], "--prompt"),
            (["--image", Self.photo, "--memory-limit", "1M"], "memory"),
            ([], "--image"),
        ]
        for (extra, mention) in cases {
            let r = try CLI.run(common + extra)
            #expect(r.status == 2, "\(extra): status \(r.status) \(r.stderr)")
            let lines = r.stderr.split(separator: "\n").filter { !$0.isEmpty }
            #expect(lines.count == 1 && r.stderr.contains(mention), "\(extra): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out), "\(extra) wrote the output")
            #expect(!s.contents.contains { $0.contains(".tmp-") }, "\(extra) left \(s.contents)")
        }
    }

    @Test func divergenceStopsNamingTheStepAndWritesNothing() throws {
        let s = Scratch()
        let base = try Self.base(s)
        // SGD with an absurd learning rate: the factors or the loss overflow within a few steps.
        let r = try CLI.run(["finetune", "--base", base, "--image", Self.photo, "--resolution", "64", "--steps", "3",
                             "--optimizer", "sgd", "--lr", "1e38", "--max-grad-norm", "1e30", "-o", s.file("out.lidb")])
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("lidb: error: step ") && r.stderr.contains("not finite") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: s.file("out.lidb")))
    }

    @Test func interruptedRunWritesNothing() throws {
        let s = Scratch()
        let base = try Self.base(s)
        let out = s.file("out.lidb")
        let p = try HardeningIOCLITests.start(["finetune", "--base", base, "--image", Self.photo, "--resolution", "64", "--steps", "100000",
                                               "-o", out, "--log", s.file("steps.jsonl")], stderr: s.file("stderr.txt"))
        #expect(HardeningIOCLITests.waitForLine("{\"step\":1,", in: s.file("steps.jsonl")) != nil, "no step was logged")
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGINT)
        #expect(!FileManager.default.fileExists(atPath: out))
        #expect(!s.contents.contains { $0.contains(".tmp-") }, "\(s.contents)")
    }
}
