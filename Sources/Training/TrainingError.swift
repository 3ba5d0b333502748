import Imaging

/// Why a training run was refused or stopped. Every case names what it concerns: the option (as
/// the CLI spells it), the image file or the step.
public enum TrainingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An option's value is out of range, not finite, or inconsistent with another option.
    case invalidOption(option: String, value: String, problem: String)
    /// An image could not be read or decoded.
    case image(ImageError)
    /// The image's resized size (shorter side = resolution) would exceed the pixel limit.
    case imageTooElongated(file: String, width: Int, height: Int, resolution: Int, limit: Int)
    /// The loss of a step is not a finite number.
    case nonFiniteLoss(step: Int, value: Float)
    /// A gradient of a step holds a value that is not finite, or its norm overflowed binary32.
    case nonFiniteGradient(step: Int, tensor: String)
    /// An optimiser update made a parameter infinite or NaN; the parameters are left as they
    /// were before the update.
    case nonFiniteParameter(step: Int, tensor: String)
    /// The run was interrupted before step `step` (Ctrl-C); nothing is written.
    case cancelled(step: Int)
    /// A size is zero, negative, or beyond a limit of `TrainingLimits`.
    case tooLarge(what: String, limit: Int)
    /// Inputs of a computation do not have matching sizes (a programming error of the caller,
    /// reported rather than trapped).
    case shapeMismatch(what: String, expected: Int, got: Int)

    public var description: String {
        switch self {
        case let .invalidOption(option, value, problem):
            return "\(option) \(value): \(problem)"
        case let .image(e):
            return e.description
        case let .imageTooElongated(file, w, h, r, limit):
            return "\(file): a \(w)×\(h) image resized to a shorter side of \(r) pixels would exceed \(limit) pixels (the aspect ratio is too extreme for this resolution)"
        case let .nonFiniteLoss(step, value):
            return "step \(step): the loss is not finite (\(value)); the run stops without output"
        case let .nonFiniteGradient(step, tensor):
            return "step \(step): the gradient of \(tensor) is not finite; the run stops without output"
        case let .nonFiniteParameter(step, tensor):
            return "step \(step): the update made \(tensor) not finite (learning rate too large?); the run stops without output"
        case let .cancelled(step):
            return "interrupted before step \(step); nothing was written"
        case let .tooLarge(what, limit):
            return "\(what): zero, negative or more than the limit of \(limit)"
        case let .shapeMismatch(what, expected, got):
            return "\(what): expected \(expected) values, got \(got)"
        }
    }
}
