import Checkpoint
import Crypto
import Imaging
import SubjectDelta

/// What `personalize(photo:…)` read and made.
public struct Personalization: Sendable {
    /// The subject, factors in float32 (round them when writing: `Subject.write(to:dtype:)`).
    public var subject: Subject
    /// The decoded photo's facts (format, size, bit depth, EXIF orientation).
    public var image: ImageSourceInfo
    public var decodedWidth: Int, decodedHeight: Int
    /// The size the hypernetwork's preprocessing produced.
    public var preprocessedWidth: Int, preprocessedHeight: Int
}

extension Hypernetwork {
    /// A photo file → a subject for `base`, in one call: decode (spec/image.md), preprocess as the
    /// hypernetwork's file says, predict, bind (what `lidb personalize` and `lidb finetune
    /// --hypernet` do). The subject records the photo file's SHA-256 and this hypernetwork's
    /// fingerprint; `name`, `trigger` and `className` go into its info.
    public func personalize(photo file: String, for base: BaseModel, name: String? = nil, trigger: String? = nil,
                            className: String? = nil, strict: Bool = false, limits: ImageLimits = .default) throws -> Personalization {
        try checkTargets(against: base)
        let bytes = try ImageDecoder.fileBytes(file, limits: limits)
        let digest = SHA256.hash(data: bytes).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let (image, info) = try ImageDecoder.decode(bytes: bytes, name: file, limits: limits)
        let pre = try ImagePreprocessing(json: config.preprocessing, file: path)
        let predictions = try predict(pixels: try pre.apply(image))
        let subject = try self.subject(from: predictions, for: base, provenance: SubjectProvenance(
            name: name, trigger: trigger, className: className, imageSHA256: digest), strict: strict)
        return Personalization(subject: subject, image: info, decodedWidth: image.width, decodedHeight: image.height,
                               preprocessedWidth: pre.outputWidth, preprocessedHeight: pre.outputHeight)
    }
}
