import Foundation
import Testing
@testable import Training

/// spec/finetune.md §11: training lowers the denoising loss on the training photo, measured on
/// fixed (timestep, noise) pairs that no step drew. On `sd1-cond` (the tiny SD 1 rescaled to unit
/// gain, so gradients reach every layer); `converters/checks/check_finetune.py` shows the same on
/// the sample pipeline in release, and that diffusers computes the same loss for the exported LoRA.
@Suite(.serialized) struct LearningTests {
    @Test func trainingLowersTheLossOnThePhoto() throws {
        let (base, dir) = try TrajectoryTests.base("sd1-cond")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let options = TrainingOptions(steps: 30, optimizer: .adamw(AdamWSettings(lr: 1e-2)), seed: 3, resolution: 64)
        let run = try Finetuner(base: base, request: FinetuneRequest(
            images: [TrainingFixtures.repo + "/samples/face.jpg"], start: .scratch(targets: .paper), options: options))
        let before = try run.evaluationLoss(count: 8, seed: 11)
        #expect(try run.evaluationLoss(count: 8, seed: 11) == before, "the evaluation draws nothing from the run")
        let subject = try run.run()
        let after = try run.evaluationLoss(count: 8, seed: 11)
        print("sd1-cond, 30 AdamW steps at lr 1e-2: evaluation loss \(before) → \(after) (\(Int(((1 - Double(after) / Double(before)) * 100).rounded())) % lower)")
        #expect(after < before * 0.95, "measured 11 % lower when written")
        #expect(subject.layers.count == run.layers.count && subject.trainedParameters > 0)
    }
}
