import Compute
import Foundation
import Testing
@testable import Hypernetwork

/// The activations the hypernetwork runs (Compute's kernels) over the whole float range that
/// matters, and the mapping from every `hidden_act` the config accepts to a kernel.
@Suite struct KernelTests {
    /// The vectorised erf GELU against libm's (double precision).
    @Test func erfApproximationIsWithinItsBound() {
        var worst: Double = 0
        var xs = (0..<20001).map { Float(-6 + 12 * Double($0) / 20000) }
        xs += [0, -0, 1e-30, -1e-30, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]
        let y = Activation.gelu.forward(xs)
        for (x, g) in zip(xs, y) {
            let want = 0.5 * Double(x) * (1 + Foundation.erf(Double(x) / 2.0.squareRoot()))
            let err = abs(Double(g) - want) / max(1, abs(want))
            worst = max(worst, err)
        }
        print("GELU: max |error| / max(1, |GELU|) = \(worst)")
        #expect(worst <= 1e-6)
    }

    @Test func quickGELUIsWithinItsBound() {
        var xs = (0..<20001).map { Float(-60 + 120 * Double($0) / 20000) }
        xs += [0, 1e-30, -1e-30, 200, -200, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]
        let y = Activation.quickGELU.forward(xs)
        var worst: Double = 0
        for (x, g) in zip(xs, y) {
            let want = Double(x) / (1 + Foundation.exp(-1.702 * Double(x)))
            worst = max(worst, abs(Double(g) - want) / max(1, abs(want)))
        }
        print("quick GELU: max |error| / max(1, |y|) = \(worst)")
        #expect(worst <= 1e-6)
    }

    /// Every `encoder.hidden_act` the config accepts names the kernel spec/hypernetwork.md gives it.
    @Test func everyAcceptedActivationHasItsKernel() {
        let expected: [(String, Activation)] = [("gelu", .gelu), ("quick_gelu", .quickGELU), ("gelu_new", .geluTanh), ("gelu_pytorch_tanh", .geluTanh)]
        for (name, act) in expected { #expect(Activation(configName: name) == act, "\(name)") }
    }
}
