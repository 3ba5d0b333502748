/// An 8-bit RGB image after orientation and alpha handling.
public struct RGBImage: Sendable, Equatable {
    public let width: Int, height: Int
    /// Row-major, interleaved R, G, B; `width × height × 3` bytes.
    public let pixels: [UInt8]

    /// `pixels.count` must be `width × height × 3` (checked with a precondition).
    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && pixels.count == width * height * 3, "RGBImage: pixel buffer does not match \(width)×\(height)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// What the file held, before conversion to `RGBImage`.
public struct ImageSourceInfo: Sendable, Equatable {
    /// "png" or "jpeg".
    public var format: String
    /// Bits per sample in the file (PNG 1, 2, 4, 8, 16; JPEG 8).
    public var bitDepth: Int
    /// "grey", "grey+alpha", "rgb", "rgba", "palette" (PNG); "grey", "ycbcr", "rgb" (JPEG).
    public var colorType: String
    /// Samples per pixel in the file (a palette image has 1).
    public var channels: Int
    /// The image carried transparency (an alpha channel or a PNG tRNS chunk), composited over white.
    public var hadAlpha: Bool
    /// PNG Adam7 interlacing, or a progressive JPEG.
    public var interlaced: Bool
    /// EXIF orientation applied (1–8; 1 when the file has none or an invalid one).
    public var orientation: Int
    /// Dimensions as stored in the file, before orientation.
    public var width: Int, height: Int

    public init(format: String, bitDepth: Int, colorType: String, channels: Int, hadAlpha: Bool, interlaced: Bool, orientation: Int, width: Int, height: Int) {
        self.format = format
        self.bitDepth = bitDepth
        self.colorType = colorType
        self.channels = channels
        self.hadAlpha = hadAlpha
        self.interlaced = interlaced
        self.orientation = orientation
        self.width = width
        self.height = height
    }
}

/// Decompression-bomb limits. Dimensions are checked from the header, before pixel memory is
/// allocated; the file size before the file is read.
public struct ImageLimits: Sendable, Equatable {
    /// Largest `width × height` accepted.
    public var maxPixels: Int
    /// Largest width or height accepted.
    public var maxSide: Int
    /// Largest file accepted, in bytes.
    public var maxFileBytes: Int

    public init(maxPixels: Int, maxSide: Int, maxFileBytes: Int) {
        self.maxPixels = maxPixels
        self.maxSide = maxSide
        self.maxFileBytes = maxFileBytes
    }

    /// 40 megapixels, 16384 pixels a side, 100 MB files.
    public static let `default` = ImageLimits(maxPixels: 40_000_000, maxSide: 16384, maxFileBytes: 100_000_000)
}
