/// Why an image could not be read or a preprocessing description was refused. Every case names
/// the file it concerns.
public enum ImageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No file at that path.
    case notFound(file: String)
    /// The path is a directory or another non-regular file.
    case notARegularFile(file: String)
    /// The file could not be opened or read.
    case unreadable(file: String, message: String)
    /// The file has no bytes.
    case empty(file: String)
    /// The file is larger than `ImageLimits.maxFileBytes`.
    case fileTooLarge(file: String, bytes: UInt64, limit: UInt64)
    /// The bytes start with neither the PNG nor the JPEG signature.
    case notAnImage(file: String)
    /// The data ends before the image does.
    case truncated(file: String, format: String, detail: String)
    /// The decoder rejected the data.
    case corrupt(file: String, format: String, message: String)
    /// The header's dimensions exceed the limits; refused before any pixel memory is allocated.
    case tooLarge(file: String, format: String, width: Int, height: Int, limit: String)
    /// A valid image of a kind that is not supported (CMYK/YCCK or 12-bit JPEG).
    case unsupported(file: String, format: String, what: String)
    /// Pixel memory could not be allocated.
    case outOfMemory(file: String)
    /// A preprocessing description has a missing, unknown or invalid key.
    case invalidPreprocessing(file: String, key: String, problem: String)
    /// Resizing `image` (`width × height`) as the preprocessing description in `file` says (its
    /// `key`) would make more than `limit` pixels before the crop; refused before allocating.
    /// A resized side that overflows is `Int.max`.
    case resizeTooLarge(file: String, key: String, image: String, width: Int, height: Int, resizedWidth: Int, resizedHeight: Int, limit: Int)

    public var file: String {
        switch self {
        case let .notFound(f), let .notARegularFile(f), let .empty(f), let .notAnImage(f), let .outOfMemory(f): return f
        case let .unreadable(f, _), let .fileTooLarge(f, _, _), let .truncated(f, _, _), let .corrupt(f, _, _),
             let .tooLarge(f, _, _, _, _), let .unsupported(f, _, _), let .invalidPreprocessing(f, _, _),
             let .resizeTooLarge(f, _, _, _, _, _, _, _):
            return f
        }
    }

    public var description: String {
        switch self {
        case let .notFound(f): return "\(f): no such file"
        case let .notARegularFile(f): return "\(f): not a regular file"
        case let .unreadable(f, m): return "\(f): cannot be read: \(m)"
        case let .empty(f): return "\(f): empty file, not an image"
        case let .fileTooLarge(f, b, l): return "\(f): file is \(b) bytes, more than the limit of \(l) bytes for an image"
        case let .notAnImage(f): return "\(f): not a PNG or JPEG image (unknown signature)"
        case let .truncated(f, fmt, d): return "\(f): truncated \(fmt.uppercased()) (\(d))"
        case let .corrupt(f, fmt, m): return "\(f): corrupt \(fmt.uppercased()) data: \(m)"
        case let .tooLarge(f, fmt, w, h, l): return "\(f): \(fmt.uppercased()) image of \(w)×\(h) pixels exceeds the limit (\(l))"
        case let .unsupported(f, fmt, what): return "\(f): unsupported \(fmt.uppercased()) image: \(what)"
        case let .outOfMemory(f): return "\(f): not enough memory for the decoded pixels"
        case let .invalidPreprocessing(f, k, p): return "\(f): image preprocessing key \"\(k)\": \(p)"
        case let .resizeTooLarge(f, k, image, w, h, rw, rh, limit):
            let (pixels, overflow) = rw.multipliedReportingOverflow(by: rh)
            let size = rw == Int.max || rh == Int.max || overflow ? "a size beyond 64-bit arithmetic" : "\(rw)×\(rh) = \(pixels) pixels"
            return "\(f): image preprocessing key \"\(k)\": resizing the \(w)×\(h) image '\(image)' gives \(size) before the crop, "
                + "more than the limit of \(limit) pixels; use a less elongated image or a smaller \(k)"
        }
    }
}
