import TensorFile

/// Every failure of the hypernetwork layer: which file, and what is wrong with it.
public struct HypernetworkError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    public var problem: Problem

    public init(file: String, _ problem: Problem) {
        self.file = file
        self.problem = problem
    }

    public enum Problem: Equatable, Sendable, CustomStringConvertible {
        /// The container itself (framing, checksums, I/O).
        case file(TensorFileError)
        case wrongKind(String)
        case unsupportedSchema(String)
        /// A configuration field that is missing, of the wrong type or impossible.
        case invalidConfig(field: String, reason: String)
        /// The image preprocessing object does not follow its schema.
        case invalidPreprocessing(String)
        case missingTensor(String)
        case unexpectedTensor(String)
        case wrongShape(tensor: String, expected: [Int], actual: [Int])
        case unsupportedDType(tensor: String, dtype: String)
        /// The hypernetwork's target layer table differs from the base's, first at `layer`.
        case targetsMismatch(layer: String, reason: String)
        case architectureMismatch(hypernetwork: String, base: String)
        /// The caller's input (pixel values, provenance) is unusable.
        case invalidInput(String)
        /// A compute layer refused the sizes it was given (`ComputeError`'s message).
        case compute(String)

        public var description: String {
            switch self {
            case let .file(e): return e.description
            case let .wrongKind(k): return "expected a hypernetwork file, found kind '\(k)'"
            case let .unsupportedSchema(v): return "hypernetwork schema version \(v) (this lidb reads version 1)"
            case let .invalidConfig(f, r): return "config '\(f)': \(r)"
            case let .invalidPreprocessing(r): return "preprocessing: \(r)"
            case let .missingTensor(t): return "tensor '\(t)': missing (the config needs it)"
            case let .unexpectedTensor(t): return "tensor '\(t)': not part of the configured model"
            case let .wrongShape(t, e, a): return "tensor '\(t)': shape \(a), the config needs \(e)"
            case let .unsupportedDType(t, d): return "tensor '\(t)': element type \(d) is not a float type"
            case let .targetsMismatch(l, r): return "target layer table differs from the base's at '\(l)': \(r)"
            case let .architectureMismatch(h, b): return "made for \(h) bases, the base is \(b)"
            case let .invalidInput(r): return r
            case let .compute(m): return "compute: \(m)"
            }
        }
    }

    public var description: String {
        if case let .file(e) = problem { return e.description }
        return file + ": " + problem.description
    }
}
