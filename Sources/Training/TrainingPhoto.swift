import Crypto
import Imaging

/// Photo → training pixels (spec/finetune.md §2): decode (spec/image.md), resize the shorter
/// side to the resolution with Pillow's bilinear filter, centre crop, scale to [−1, 1], and the
/// mirror image for flipping. This is diffusers' DreamBooth-LoRA script's `Resize(R, BILINEAR)`,
/// `CenterCrop(R)`, `ToTensor()`, `Normalize([0.5], [0.5])` on a PIL image.
public enum TrainingPreprocessing {
    /// The size the image is resized to, `(width, height)`: the shorter side becomes
    /// `resolution`, the longer one `trunc(resolution · long / short)` (integer product, binary64
    /// division). Nil when a side is not positive or the product overflows.
    public static func resizedSize(width: Int, height: Int, resolution: Int) -> (width: Int, height: Int)? {
        guard width > 0, height > 0, resolution > 0 else { return nil }
        let short = min(width, height), long = max(width, height)
        let (product, overflow) = resolution.multipliedReportingOverflow(by: long)
        guard !overflow else { return nil }
        let q = Double(product) / Double(short)
        guard q < Double(Int.max) else { return nil }
        let newLong = Int(q)
        return width <= height ? (resolution, newLong) : (newLong, resolution)
    }

    /// torchvision's centre-crop offset `int(round((size − crop) / 2))`: round half to even.
    public static func cropOffset(size: Int, crop: Int) -> Int {
        Int((Double(size - crop) / 2).rounded(.toNearestOrEven))
    }

    /// The decoded image resized and centre-cropped to `resolution × resolution`, 8-bit RGB
    /// interleaved. `file` names the image in errors.
    public static func cropped(_ image: RGBImage, resolution: Int, file: String) throws(TrainingError) -> RGBImage {
        guard resolution > 0, resolution <= TrainingLimits.maxResolution else {
            throw .invalidOption(option: "--resolution", value: "\(resolution)",
                                 problem: "must be from 1 to \(TrainingLimits.maxResolution)")
        }
        let limit = TrainingLimits.maxResizedPixels
        guard let (rw, rh) = resizedSize(width: image.width, height: image.height, resolution: resolution),
              case let (pixels, o) = rw.multipliedReportingOverflow(by: rh), !o, pixels <= limit
        else {
            throw .imageTooElongated(file: file, width: image.width, height: image.height, resolution: resolution, limit: limit)
        }
        guard let resized = PillowResize.bilinear(image, width: rw, height: rh) else {
            throw .imageTooElongated(file: file, width: image.width, height: image.height, resolution: resolution, limit: limit)
        }
        let top = cropOffset(size: rh, crop: resolution), left = cropOffset(size: rw, crop: resolution)
        var out = [UInt8](repeating: 0, count: resolution * resolution * 3)
        resized.pixels.withUnsafeBufferPointer { src in
            for y in 0..<resolution {
                let s = ((y + top) * rw + left) * 3, d = y * resolution * 3
                for k in 0..<(resolution * 3) { out[d + k] = src[s + k] }
            }
        }
        return RGBImage(width: resolution, height: resolution, pixels: out)
    }

    /// The scaling of one 8-bit value: `f32(f32(f32(u) / 255) − 0.5) / 0.5`, each operation
    /// rounded to binary32.
    @inline(__always)
    public static func scale(_ u: UInt8) -> Float {
        ((Float(u) / 255) - 0.5) / 0.5
    }

    /// Channels-first pixels `[3, R, R]` in [−1, 1] of a square 8-bit image.
    public static func pixels(ofSquare image: RGBImage) -> [Float] {
        let r = image.width, plane = r * image.height
        var out = [Float](repeating: 0, count: 3 * plane)
        let table = (0...255).map { scale(UInt8($0)) }
        image.pixels.withUnsafeBufferPointer { px in
            for i in 0..<plane {
                out[i] = table[Int(px[i * 3])]
                out[plane + i] = table[Int(px[i * 3 + 1])]
                out[2 * plane + i] = table[Int(px[i * 3 + 2])]
            }
        }
        return out
    }

    /// Training pixels `[3, R, R]` of a decoded image (§2 steps 2–4).
    public static func pixels(_ image: RGBImage, resolution: Int, file: String) throws(TrainingError) -> [Float] {
        pixels(ofSquare: try cropped(image, resolution: resolution, file: file))
    }

    /// The horizontal mirror of channels-first pixels `[3, R, R]` (§2 step 5):
    /// `mirror[c, y, x] = pixels[c, y, R − 1 − x]`. Nil when the count is not `3 · R²`.
    public static func mirrored(_ pixels: [Float], resolution r: Int) -> [Float]? {
        guard r > 0, case let (rr, o1) = r.multipliedReportingOverflow(by: r), !o1,
              case let (n, o2) = rr.multipliedReportingOverflow(by: 3), !o2, pixels.count == n else { return nil }
        var out = [Float](repeating: 0, count: pixels.count)
        for row in 0..<(3 * r) {
            let base = row * r
            for x in 0..<r { out[base + x] = pixels[base + r - 1 - x] }
        }
        return out
    }
}

/// One training image, read and preprocessed once before training.
public struct TrainingPhoto: Sendable {
    /// The path it was read from.
    public let file: String
    /// SHA-256 of the file's bytes, lowercase hex (the provenance's `images_sha256`).
    public let sha256: String
    /// Channels-first pixels `[3, R, R]` in [−1, 1].
    public let pixels: [Float]
    /// The mirror image of `pixels`, when flipping is on.
    public let mirror: [Float]?
    public let resolution: Int

    /// Reads `file`, decodes it (spec/image.md, with `limits`) and preprocesses it.
    public init(file: String, resolution: Int, flip: Bool, limits: ImageLimits = .default) throws(TrainingError) {
        let bytes: [UInt8]
        let image: RGBImage
        do {
            bytes = try ImageDecoder.fileBytes(file, limits: limits)
            image = try ImageDecoder.decode(bytes: bytes, name: file, limits: limits).0
        } catch {
            throw .image(error)
        }
        self.file = file
        let digits = Array("0123456789abcdef")
        sha256 = String(SHA256.hash(data: bytes).flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
        pixels = try TrainingPreprocessing.pixels(image, resolution: resolution, file: file)
        mirror = flip ? TrainingPreprocessing.mirrored(pixels, resolution: resolution) : nil
        self.resolution = resolution
    }
}
