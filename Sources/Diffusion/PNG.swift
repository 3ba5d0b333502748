import CPNG
import Compute
import TensorFile

/// PNG output through libpng's simplified API (no setjmp), with `tEXt` chunks added after the
/// header chunk — e.g. the A1111-style `parameters` text that image viewers and UIs read back.
public enum PNGWriter {
    /// Encodes 8-bit RGB pixels (`width × height × 3`, row-major) as PNG bytes.
    public static func encode(rgb: [UInt8], width: Int, height: Int, text: [(String, String)] = []) throws(TensorFileError) -> [UInt8] {
        let (pixels, o1) = width.multipliedReportingOverflow(by: height)
        let (bytes, o2) = pixels.multipliedReportingOverflow(by: 3)
        guard width > 0, height > 0, !o1, !o2, width <= Int(Int32.max) / 3, height <= Int(UInt32.max), rgb.count == bytes else {
            throw TensorFileError(file: "png", .invalidArgument("pixel buffer does not match \(width)×\(height) RGB"))
        }
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = UInt32(PNG_FORMAT_RGB)
        var size: png_alloc_size_t = 0
        let rowStride = Int32(width * 3)
        // First call sizes the output, second writes it.
        let ok1 = rgb.withUnsafeBytes { png_image_write_to_memory(&image, nil, &size, 0, $0.baseAddress, rowStride, nil) }
        guard ok1 != 0, size > 0 else { throw TensorFileError(file: "png", .compressionFailed("libpng could not size the image")) }
        var out = [UInt8](repeating: 0, count: Int(size))
        let ok2 = out.withUnsafeMutableBytes { o in rgb.withUnsafeBytes { png_image_write_to_memory(&image, o.baseAddress, &size, 0, $0.baseAddress, rowStride, nil) } }
        guard ok2 != 0 else { throw TensorFileError(file: "png", .compressionFailed("libpng failed to encode the image")) }
        out.removeSubrange(Int(size)...)
        png_image_free(&image)
        // Insert tEXt chunks after IHDR (8-byte signature + 25-byte IHDR chunk).
        var chunks: [UInt8] = []
        for (k, v) in text {
            let keyword = Array(k.utf8.filter { $0 >= 32 && $0 <= 126 }.prefix(79))
            // tEXt is Latin-1; non-Latin-1 text is written as UTF-8 in an iTXt chunk instead.
            let latin1 = v.unicodeScalars.allSatisfy { $0.value < 256 && $0.value != 0 }
            var body = keyword + [0]
            let type: [UInt8]
            if latin1 {
                type = Array("tEXt".utf8)
                body += v.unicodeScalars.map { UInt8($0.value) }
            } else {
                type = Array("iTXt".utf8)
                body += [0, 0, 0, 0] + Array(v.utf8)  // no compression, empty language and translated keyword
            }
            chunks += be32(UInt32(body.count)) + type + body + be32(crc32(type + body))
        }
        out.insert(contentsOf: chunks, at: 33)
        return out
    }

    /// Writes the PNG atomically.
    public static func write(rgb: [UInt8], width: Int, height: Int, text: [(String, String)] = [], to path: String) throws(TensorFileError) {
        let bytes = try encode(rgb: rgb, width: width, height: height, text: text)
        let w = try AtomicFileWriter(path: path)
        try w.write(bytes)
        try w.commit()
    }

    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 255), UInt8((v >> 8) & 255), UInt8(v & 255)] }

    /// CRC-32 (IEEE 802.3, as PNG chunks use).
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
        }
        return ~c
    }

    /// Decoded image `[3, h, w]` in [-1, 1] → 8-bit RGB, as diffusers' image processor does
    /// (`(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`). Never traps: a NaN value becomes 0
    /// (the pipeline refuses non-finite images before they get here), infinities clamp, and
    /// channels the map lacks are 0.
    public static func rgb8(_ image: FeatureMap) -> [UInt8] {
        let hw = image.h * image.w
        var out = [UInt8](repeating: 0, count: hw * 3)
        for c in 0..<min(3, image.c) where image.data.count >= (c + 1) * hw {
            for i in 0..<hw {
                let x = image.data[c * hw + i] / 2 + 0.5
                let v: Float = x.isNaN ? 0 : min(max(x, 0), 1)
                out[i * 3 + c] = UInt8((v * 255).rounded(.toNearestOrEven))
            }
        }
        return out
    }
}
