import Foundation
import Testing
@testable import Hypernetwork
import CLidbSupport

@Suite struct KernelTests {
    /// The vectorised erf against libm's (double precision) over the whole float range that matters.
    @Test func erfApproximationIsWithinItsBound() {
        var worst: Double = 0
        var xs = (0..<20001).map { Float(-6 + 12 * Double($0) / 20000) }
        xs += [0, -0, 1e-30, -1e-30, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]
        var y = xs
        y.withUnsafeMutableBufferPointer { Kernels.geluErf($0.baseAddress!, count: $0.count) }
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
        var y = xs
        y.withUnsafeMutableBufferPointer { lidb_quick_gelu($0.baseAddress!, $0.count) }
        var worst: Double = 0
        for (x, g) in zip(xs, y) {
            let want = Double(x) / (1 + Foundation.exp(-1.702 * Double(x)))
            worst = max(worst, abs(Double(g) - want) / max(1, abs(want)))
        }
        print("quick GELU: max |error| / max(1, |y|) = \(worst)")
        #expect(worst <= 1e-6)
    }
}
