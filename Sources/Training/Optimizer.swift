import Foundation
import TensorFile

/// The optimisers of `lidb finetune` (spec/finetune.md §8), element for element as
/// `torch.optim.AdamW(..., foreach=False)` and `torch.optim.SGD(..., momentum=0, weight_decay=0,
/// foreach=False)` compute them on torch's AVX2 CPU kernels.
///
/// Parameters and gradients are lists of float32 tensors (flat, any shape), in the order of the
/// trained tensors (§6). Scalars are binary64, as the Python floats torch's optimisers compute
/// with, and are rounded to binary32 where they meet a tensor.
public protocol Optimizer: Sendable {
    /// Number of updates made so far.
    var steps: Int { get }
    /// One update of every tensor with its (already clipped) gradient. Mismatched sizes, or an
    /// update that makes a parameter (or AdamW's state) infinite or NaN, throw and leave the
    /// parameters and the state as they were.
    mutating func step(_ parameters: inout [[Float]], gradients: [[Float]]) throws(TrainingError)
}

func tensorName(_ i: Int) -> String { "trained tensor \(i)" }

/// AdamW's hyperparameters (validated by `TrainingOptions`).
public struct AdamWSettings: Sendable, Equatable, Hashable {
    public var lr: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double

    /// The specification's defaults besides the learning rate: β = (0.9, 0.999), ε = 1e-8,
    /// weight decay 1e-2 (torch's AdamW defaults).
    public init(lr: Double, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 1e-2) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }
}

/// Which optimiser, with its settings.
public enum OptimizerSettings: Sendable, Equatable, Hashable {
    case adamw(AdamWSettings)
    /// Plain SGD: no momentum, no weight decay.
    case sgd(lr: Double)

    public var name: String {
        switch self {
        case .adamw: return "adamw"
        case .sgd: return "sgd"
        }
    }

    public var lr: Double {
        switch self {
        case let .adamw(s): return s.lr
        case let .sgd(lr): return lr
        }
    }

    /// A fresh optimiser for tensors of these element counts.
    public func make(sizes: [Int]) -> any Optimizer {
        switch self {
        case let .adamw(s): return AdamW(settings: s, sizes: sizes)
        case let .sgd(lr): return SGD(lr: lr)
        }
    }
}

func checkSameShapes(_ parameters: [[Float]], _ gradients: [[Float]], _ what: String) throws(TrainingError) {
    guard parameters.count == gradients.count else {
        throw .shapeMismatch(what: "\(what): number of gradient tensors", expected: parameters.count, got: gradients.count)
    }
    for i in parameters.indices where parameters[i].count != gradients[i].count {
        throw .shapeMismatch(what: "\(what): gradient of trained tensor \(i)", expected: parameters[i].count, got: gradients[i].count)
    }
}

/// `torch.optim.SGD(params, lr, momentum=0, weight_decay=0, foreach=False)`:
/// `p = fma(f32(−lr), g, p)` (`param.add_(grad, alpha=-lr)`, fused on AVX2).
public struct SGD: Optimizer {
    public let lr: Double
    public private(set) var steps = 0

    public init(lr: Double) { self.lr = lr }

    public mutating func step(_ parameters: inout [[Float]], gradients: [[Float]]) throws(TrainingError) {
        try checkSameShapes(parameters, gradients, "SGD")
        let a = Float(-lr)
        var updated = parameters
        for i in updated.indices {
            let finite = gradients[i].withUnsafeBufferPointer { g in
                updated[i].withUnsafeMutableBufferPointer { p in
                    var ok = true
                    for j in 0..<p.count {
                        p[j] = p[j].addingProduct(a, g[j])
                        ok = ok && p[j].isFinite
                    }
                    return ok
                }
            }
            guard finite else { throw .nonFiniteParameter(step: steps + 1, tensor: tensorName(i)) }
        }
        parameters = updated
        steps += 1
    }
}

/// `torch.optim.AdamW(params, lr, betas, eps, weight_decay, foreach=False)` (single-tensor
/// implementation), per tensor and element in this order (spec/finetune.md §8):
///
///     p   = f32(p · f32(1 − lr·λ))                           param.mul_(1 - lr * weight_decay)
///     m   = fma(w, f32(g − m), m)         (|w| < 0.5)        exp_avg.lerp_(grad, w), w = f32(1 − β1)
///         = fma(f32(w − 1), f32(g − m), g)  (otherwise)
///     v   = fma(f32(f32(1 − β2) · g), g, f32(v · f32(β2)))   exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2)
///     bc1 = 1 − β1^k,  bc2 = 1 − β2^k                        binary64, C pow
///     d   = f32(f32(sqrt(v)) / f32(bc2^0.5)) + f32(ε)        (exp_avg_sq.sqrt() / bc2 ** 0.5).add_(eps)
///     p   = p + f32(f32(−lr / bc1) · m) / d                  param.addcdiv_(exp_avg, denom, value=-step_size)
///
/// `sqrt` is correctly rounded here; torch's (MKL's) float32 `sqrt` differs from it by 1 ulp in
/// some elements, so `p` can differ from torch's by about 1 ulp of the update.
public struct AdamW: Optimizer {
    public let settings: AdamWSettings
    public private(set) var steps = 0
    /// `exp_avg` of each tensor.
    public private(set) var firstMoment: [[Float]]
    /// `exp_avg_sq` of each tensor.
    public private(set) var secondMoment: [[Float]]

    public init(settings: AdamWSettings, sizes: [Int]) {
        self.settings = settings
        firstMoment = sizes.map { [Float](repeating: 0, count: max($0, 0)) }
        secondMoment = sizes.map { [Float](repeating: 0, count: max($0, 0)) }
    }

    /// Starts from a given state (the moments after `steps` updates), e.g. to continue a run.
    public init(settings: AdamWSettings, steps: Int, firstMoment: [[Float]], secondMoment: [[Float]]) {
        self.settings = settings
        self.steps = steps
        self.firstMoment = firstMoment
        self.secondMoment = secondMoment
    }

    public mutating func step(_ parameters: inout [[Float]], gradients: [[Float]]) throws(TrainingError) {
        try checkSameShapes(parameters, gradients, "AdamW")
        try checkSameShapes(parameters, firstMoment, "AdamW state exp_avg")
        try checkSameShapes(parameters, secondMoment, "AdamW state exp_avg_sq")
        let s = settings
        let k = Double(steps + 1)
        let decay = Float(1 - s.lr * s.weightDecay)
        let w = Float(1 - s.beta1)
        let smallWeight = abs(w) < 0.5
        let wMinusOne = w - 1
        let beta2 = Float(s.beta2)
        let oneMinusBeta2 = Float(1 - s.beta2)
        let bc1 = 1 - pow(s.beta1, k)
        let bc2 = 1 - pow(s.beta2, k)
        let stepValue = Float(-(s.lr / bc1))
        let bc2Sqrt = Float(pow(bc2, 0.5))
        let eps = Float(s.eps)
        let applyDecay = s.weightDecay != 0
        var newP = parameters, newM = firstMoment, newV = secondMoment
        for i in newP.indices {
            let finite = gradients[i].withUnsafeBufferPointer { g in
                newP[i].withUnsafeMutableBufferPointer { p in
                    newM[i].withUnsafeMutableBufferPointer { m in
                        newV[i].withUnsafeMutableBufferPointer { v in
                            var ok = true
                            for j in 0..<p.count {
                                var pj = p[j]
                                if applyDecay { pj = pj * decay }
                                let gj = g[j]
                                let diff = gj - m[j]
                                let mj = smallWeight ? m[j].addingProduct(w, diff) : gj.addingProduct(wMinusOne, diff)
                                let vj = (v[j] * beta2).addingProduct(oneMinusBeta2 * gj, gj)
                                let d = vj.squareRoot() / bc2Sqrt + eps
                                p[j] = pj + (stepValue * mj) / d
                                m[j] = mj
                                v[j] = vj
                                ok = ok && p[j].isFinite && mj.isFinite && vj.isFinite
                            }
                            return ok
                        }
                    }
                }
            }
            guard finite else { throw .nonFiniteParameter(step: steps + 1, tensor: tensorName(i)) }
        }
        parameters = newP
        firstMoment = newM
        secondMoment = newV
        steps += 1
    }
}

extension OptimizerSettings {
    /// The names `--optimizer` accepts.
    public static let names = ["adamw", "sgd"]

    /// The settings for an `--optimizer` name and the values given on the command line (nil: not
    /// given, AdamW's defaults). AdamW-only values given with `sgd` are refused rather than
    /// ignored (spec/finetune.md §1: SGD has no momentum and no weight decay). The values are
    /// checked by `TrainingOptions.validate`.
    public static func named(_ name: String, lr: Double, beta1: Double? = nil, beta2: Double? = nil,
                             eps: Double? = nil, weightDecay: Double? = nil) throws(TrainingError) -> OptimizerSettings {
        typealias O = TrainingOptions.Option
        switch name {
        case "adamw":
            let d = AdamWSettings(lr: lr)
            return .adamw(AdamWSettings(lr: lr, beta1: beta1 ?? d.beta1, beta2: beta2 ?? d.beta2, eps: eps ?? d.eps,
                                        weightDecay: weightDecay ?? d.weightDecay))
        case "sgd":
            for (option, value) in [(O.beta1, beta1), (O.beta2, beta2), (O.eps, eps), (O.weightDecay, weightDecay)] {
                if let value {
                    throw .invalidOption(option: option, value: "\(value)", problem: "applies to --optimizer adamw only (SGD has no momentum and no weight decay)")
                }
            }
            return .sgd(lr: lr)
        default:
            throw .invalidOption(option: O.optimizer, value: "'\(name)'", problem: "must be one of \(names.joined(separator: ", "))")
        }
    }

    /// The `optimizer` object of a subject's provenance (spec/finetune.md §9):
    /// `{"name": "adamw", "betas": [β1, β2], "eps": ε, "weight_decay": λ}` or `{"name": "sgd"}`.
    public var provenance: JSONValue {
        switch self {
        case let .adamw(s):
            return .object([("name", .string("adamw")), ("betas", .array([.double(s.beta1), .double(s.beta2)])),
                            ("eps", .double(s.eps)), ("weight_decay", .double(s.weightDecay))])
        case .sgd:
            return .object([("name", .string("sgd"))])
        }
    }
}
