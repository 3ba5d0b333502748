import Foundation
import Testing
@testable import Diffusion
@testable import TensorFile

/// Scheduler configs whose schedules repeat timesteps, run short or leave no noise to remove
/// (found by the semantic fuzz target: DPM-Solver trapped "step past the end of the schedule").
/// Every scheduler either refuses such a schedule in `setTimesteps`, naming the steps and the
/// config fields, or steps it to the end with finite latents.
@Suite struct ScheduleShapeTests {
    /// Stable Diffusion's training schedule.
    static let sd: [(String, JSONValue)] = [
        ("beta_start", .double(0.00085)), ("beta_end", .double(0.012)), ("beta_schedule", .string("scaled_linear")),
        ("num_train_timesteps", .int(1000)),
    ]

    static func config(_ kind: SchedulerKind, _ edits: [(String, JSONValue)]) throws -> SchedulerConfig {
        var c = try SchedulerConfig(json: .object(sd))
        if kind == .pndm { c = c.setting("skip_prk_steps", .bool(true)) }
        for (k, v) in edits { c = c.setting(k, v) }
        return c
    }

    /// Steps a whole schedule as the pipeline does, on a small latent with a model output
    /// derived from the input; returns the final latent.
    static func runToTheEnd(_ s: inout any Scheduler) -> [Float] {
        var sample = (0..<16).map { Float($0 % 5) - 2 }
        var noise = TorchGenerator(seed: 7)
        for t in s.timesteps {
            let input = s.scaleModelInput(sample, timestep: t)
            sample = s.step(modelOutput: input.map { 0.3 * $0 + 0.1 }, timestep: t, sample: sample, noise: &noise)
        }
        return sample
    }

    static func refusal(_ s: inout any Scheduler, _ steps: Int) -> SchedulerError? {
        do { try s.setTimesteps(steps); return nil } catch let e as SchedulerError { return e } catch {
            Issue.record("not a SchedulerError: \(error)")
            return nil
        }
    }

    /// The two configs of the finding. lambda_min_clipped 16 clips every training timestep
    /// (diffusers' schedule is twenty timesteps −1 and 0 and fails with an IndexError at the
    /// end); with 2 training timesteps 3 steps repeat the first one.
    @Test func dpmSolverRefusesRepeatedFirstTimesteps() throws {
        var s: any Scheduler = try DPMSolverMultistepScheduler(config: Self.config(.dpmSolverMultistep, [("lambda_min_clipped", .int(16))]))
        let e = try #require(Self.refusal(&s, 20))
        print("lambda_min_clipped 16: \(e)")
        for w in ["20 steps of DPMSolverMultistepScheduler", "lambda_min_clipped 16", "leaves 0 of the 1000 training timesteps", "repeats its first timestep"] {
            #expect(e.description.contains(w), "'\(w)' not in \(e)")
        }
        #expect(s.numInferenceSteps == nil, "a refused schedule is not installed")

        var two: any Scheduler = try DPMSolverMultistepScheduler(config: Self.config(.dpmSolverMultistep, [("num_train_timesteps", .int(2))]))
        let e2 = try #require(Self.refusal(&two, 3))
        #expect(e2.description.contains("num_train_timesteps (2)"), "\(e2)")
        // Two steps of two training timesteps are an ordinary schedule.
        try two.setTimesteps(2)
        #expect(two.timesteps == [1, 0])
        let twoOut = Self.runToTheEnd(&two)
        #expect(twoOut.allSatisfy { $0.isFinite })

        // A clip that leaves 10 timesteps: 12 linspace steps repeat timesteps in the middle
        // (diffusers' DPM-Solver++ then divides by a zero step in log-SNR and returns NaN).
        let keep10 = try DPMSolverMultistepScheduler(config: Self.config(.dpmSolverMultistep, []))
        let lambda10 = Self.lambda(keep10.schedule.alphasCumprod[10])
        var mid: any Scheduler = try DPMSolverMultistepScheduler(config: Self.config(.dpmSolverMultistep, [("lambda_min_clipped", .double(Double(lambda10) + 1e-4))]))
        let e3 = try #require(Self.refusal(&mid, 12))
        #expect(e3.description.contains("does not decrease") && e3.description.contains("leaves 10 of the 1000"), "\(e3)")
    }

    /// `lambda_t` of diffusers' DPM-Solver at a training alpha product, float32.
    static func lambda(_ a: Float) -> Float { SchedulerMath.logf32(a.squareRoot()) - SchedulerMath.logf32((1 - a).squareRoot()) }

    /// diffusers' trailing spacing with lambda_min_clipped gives fewer timesteps than asked for;
    /// that schedule is valid (every step lowers the noise) and is kept, as diffusers keeps it.
    @Test func shorterSchedulesOfTrailingSpacingAreKept() throws {
        let keep = try DPMSolverMultistepScheduler(config: Self.config(.dpmSolverMultistep, []))
        let clip = Double(Self.lambda(keep.schedule.alphasCumprod[300])) + 1e-4
        var s: any Scheduler = try DPMSolverMultistepScheduler(config: Self.config(.dpmSolverMultistep, [("lambda_min_clipped", .double(clip)), ("timestep_spacing", .string("trailing"))]))
        try s.setTimesteps(5)
        let ts = s.timesteps
        #expect(ts.count < 5 && ts.count >= 1 && s.numInferenceSteps == ts.count, "\(ts)")
        #expect(ts.allSatisfy { $0 < 300 } && zip(ts, ts.dropFirst()).allSatisfy { $0 > $1 }, "\(ts)")
        let out = Self.runToTheEnd(&s)
        #expect(out.allSatisfy { $0.isFinite })
    }

    /// Every scheduler, over small training schedules, every spacing and step count up to one
    /// more than the training timesteps, and the options that bend a schedule (lambda clipping,
    /// Karras sigmas, sigma bounds that clamp the timesteps, steps_offset): a schedule is
    /// refused with a SchedulerError or stepped to its end with finite latents. (Before, several
    /// of these trapped in `step` or in the Karras timestep lookup.)
    @Test func everyScheduleIsRefusedOrStepsToTheEnd() throws {
        let extras: [[(String, JSONValue)]] = [
            [],
            [("lambda_min_clipped", .int(16))],
            [("lambda_min_clipped", .double(2.3))],
            [("use_karras_sigmas", .bool(true))],
            [("use_karras_sigmas", .bool(true)), ("sigma_max", .int(100))],
            [("use_karras_sigmas", .bool(true)), ("sigma_max", .int(1)), ("sigma_min", .int(1))],
            [("steps_offset", .int(1))],
            [("beta_start", .double(1e-10)), ("beta_end", .double(1e-10)), ("beta_schedule", .string("linear"))],
            [("beta_start", .double(0.5)), ("beta_end", .double(0.999)), ("beta_schedule", .string("linear"))],
        ]
        var accepted = 0, refused = 0
        for kind in SchedulerKind.allCases {
            for train in [1, 2, 3, 5, 10] {
                for spacing in ["linspace", "leading", "trailing"] {
                    for extra in extras {
                        var edits = extra + [("num_train_timesteps", JSONValue.int(train)), ("timestep_spacing", .string(spacing))]
                        if let i = edits.firstIndex(where: { $0.0 == "steps_offset" }), train < 2 { edits.remove(at: i) }
                        let config = try Self.config(kind, edits)
                        // A degenerate training schedule (a beta that rounds away) is refused when
                        // the scheduler is made, naming the betas.
                        do { _ = try makeScheduler(kind, config: config) } catch let e as SchedulerError {
                            #expect(e.description.contains("beta"), "\(e)")
                            refused += 1
                            continue
                        }
                        for steps in 1...(train + 1) {
                            let what = "\(kind.rawValue) \(edits.map { "\($0.0)=\($0.1.serializedString)" }.joined(separator: " ")) steps=\(steps)"
                            var s = try makeScheduler(kind, config: config)
                            do {
                                try s.setTimesteps(steps)
                            } catch let e as SchedulerError {
                                refused += 1
                                #expect(e.description.contains("\(steps)"), "\(what): \(e)")
                                continue
                            }
                            accepted += 1
                            #expect(!s.timesteps.isEmpty, "\(what)")
                            let out = Self.runToTheEnd(&s)
                            #expect(out.allSatisfy { $0.isFinite }, "\(what): \(s.timesteps) → \(out.prefix(4))")
                        }
                    }
                }
            }
        }
        print("schedules: \(accepted) stepped to the end, \(refused) refused")
        #expect(accepted > 100 && refused > 100)
    }

    /// Karras sigmas with a single training timestep: the timestep lookup needs two neighbours
    /// (it indexed −1 and trapped); the only timestep is 0.
    @Test func karrasWithOneTrainingTimestep() throws {
        for kind in [SchedulerKind.euler, .dpmSolverMultistep] {
            var s = try makeScheduler(kind, config: Self.config(kind, [("num_train_timesteps", .int(1)), ("use_karras_sigmas", .bool(true))]))
            try s.setTimesteps(1)
            #expect(s.timesteps == [0], "\(kind)")
            let out = Self.runToTheEnd(&s)
            #expect(out.allSatisfy { $0.isFinite }, "\(kind)")
        }
    }
}
