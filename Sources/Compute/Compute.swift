/// Kernels and typed layers of the runtime and of training, forward and backward, on f32
/// row-major buffers with BLAS for the products (spec/compute.md).
///
/// Layers hold frozen base weights and compute input gradients; only delta terms (`DeltaTerm`,
/// the adapter slot of `Linear`) have parameter gradients. A backward takes the layer's input
/// and recomputes what it needs from it, so a caller keeps one activation per layer (or per
/// block, recomputing the block's forward before its backward: gradient checkpointing).

/// A shape or size a layer cannot work with: the message names the layer and the sizes.
public struct ComputeError: Error, Equatable, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Sizes derived from inputs, multiplied and added with overflow checks.
enum Size {
    static func product(_ factors: Int..., what: @autoclosure () -> String) throws(ComputeError) -> Int {
        var p = 1
        for f in factors {
            guard f >= 0 else { throw ComputeError("\(what()): negative size \(f)") }
            let (r, o) = p.multipliedReportingOverflow(by: f)
            guard !o else { throw ComputeError("\(what()): size overflows") }
            p = r
        }
        return p
    }

    static func sum(_ a: Int, _ b: Int, what: @autoclosure () -> String) throws(ComputeError) -> Int {
        let (r, o) = a.addingReportingOverflow(b)
        guard !o else { throw ComputeError("\(what()): size overflows") }
        return r
    }

    /// A dimension passed to BLAS (32-bit).
    static func blas(_ n: Int, what: @autoclosure () -> String) throws(ComputeError) -> Int32 {
        guard n >= 0, let v = Int32(exactly: n) else { throw ComputeError("\(what()): \(n) exceeds the 32-bit range of BLAS") }
        return v
    }
}
