import CImagingSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads PNG and JPEG images into 8-bit RGB (see spec/image.md for the exact rules).
public enum ImageDecoder {
    static let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    static let jpegSignature: [UInt8] = [0xFF, 0xD8, 0xFF]

    /// Reads and decodes the image file at `file`.
    public static func decode(file: String, limits: ImageLimits = .default) throws(ImageError) -> (RGBImage, ImageSourceInfo) {
        let bytes = try readFile(file, maxBytes: limits.maxFileBytes)
        return try decode(bytes: bytes, name: file, limits: limits)
    }

    /// Decodes an image held in memory; `name` is used in errors.
    public static func decode(bytes: [UInt8], name: String, limits: ImageLimits = .default) throws(ImageError) -> (RGBImage, ImageSourceInfo) {
        if bytes.isEmpty { throw .empty(file: name) }
        if bytes.count > limits.maxFileBytes {
            throw .fileTooLarge(file: name, bytes: UInt64(bytes.count), limit: UInt64(max(limits.maxFileBytes, 0)))
        }
        let format: String
        if hasPrefix(bytes, pngSignature) {
            format = "png"
        } else if hasPrefix(bytes, jpegSignature) {
            format = "jpeg"
        } else if bytes.count < pngSignature.count && hasPrefix(pngSignature, bytes) {
            throw .truncated(file: name, format: "png", detail: "only \(bytes.count) bytes of the signature")
        } else if bytes.count < jpegSignature.count && hasPrefix(jpegSignature, bytes) {
            throw .truncated(file: name, format: "jpeg", detail: "only \(bytes.count) bytes of the signature")
        } else {
            throw .notAnImage(file: name)
        }
        let maxPixels = UInt64(max(limits.maxPixels, 0))
        let maxSide = UInt32(clamping: max(limits.maxSide, 0))
        var out = lidb_decoded_image()
        let code = bytes.withUnsafeBufferPointer { buf in
            format == "png"
                ? lidb_png_decode(buf.baseAddress, buf.count, maxPixels, maxSide, &out)
                : lidb_jpeg_decode(buf.baseAddress, buf.count, maxPixels, maxSide, &out)
        }
        defer { lidb_image_free(&out) }
        let message = withUnsafeBytes(of: out.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        let width = Int(out.width), height = Int(out.height)
        switch Int(code) {
        case Int(LIDB_IMG_OK): break
        case Int(LIDB_IMG_TRUNCATED):
            throw .truncated(file: name, format: format, detail: message.isEmpty ? "unexpected end of data" : message)
        case Int(LIDB_IMG_TOO_LARGE):
            throw .tooLarge(file: name, format: format, width: width, height: height,
                            limit: "at most \(limits.maxSide) pixels a side and \(limits.maxPixels) pixels")
        case Int(LIDB_IMG_UNSUPPORTED):
            throw .unsupported(file: name, format: format, what: message)
        case Int(LIDB_IMG_NO_MEMORY):
            throw .outOfMemory(file: name)
        default:
            throw .corrupt(file: name, format: format, message: message.isEmpty ? "rejected by the decoder" : message)
        }
        guard let pixels = out.pixels, width > 0, height > 0 else {
            throw .corrupt(file: name, format: format, message: "decoder returned no pixels")
        }
        let channels = Int(out.out_channels)
        let rgb = compositeOverWhite(UnsafeBufferPointer(start: pixels, count: width * height * channels), channels: channels)

        let orientation = format == "jpeg" ? (ExifOrientation.find(inJPEG: bytes) ?? 1) : 1
        let image = ExifOrientation.apply(orientation, to: RGBImage(width: width, height: height, pixels: rgb))
        let colorType: String
        let fileChannels = Int(out.channels)
        if format == "png" {
            switch Int(out.color_type) {
            case 0: colorType = "grey"
            case 2: colorType = "rgb"
            case 3: colorType = "palette"
            case 4: colorType = "grey+alpha"
            default: colorType = "rgba"
            }
        } else {
            colorType = fileChannels == 1 ? "grey" : (out.color_type == 2 ? "rgb" : "ycbcr")
        }
        let info = ImageSourceInfo(format: format, bitDepth: Int(out.bit_depth), colorType: colorType, channels: fileChannels,
                                   hadAlpha: channels == 4, interlaced: out.interlaced != 0, orientation: orientation,
                                   width: width, height: height)
        return (image, info)
    }

    /// 8-bit RGB or RGBA → RGB; alpha composited over white:
    /// `out = (c·a + 255·(255 − a) + 127) / 255` in integers (round half up of the exact value).
    static func compositeOverWhite(_ src: UnsafeBufferPointer<UInt8>, channels: Int) -> [UInt8] {
        if channels == 3 { return Array(src) }
        let n = src.count / 4
        return [UInt8](unsafeUninitializedCapacity: n * 3) { dst, count in
            for i in 0..<n {
                let a = Int(src[4 * i + 3])
                for c in 0..<3 {
                    dst[3 * i + c] = UInt8((Int(src[4 * i + c]) * a + 255 * (255 - a) + 127) / 255)
                }
            }
            count = n * 3
        }
    }

    static func hasPrefix(_ bytes: [UInt8], _ prefix: [UInt8]) -> Bool {
        bytes.count >= prefix.count && bytes[0..<prefix.count].elementsEqual(prefix)
    }

    /// The bytes of an image file (refusing non-regular files and files over `limits.maxFileBytes`),
    /// e.g. to hash exactly what `decode(bytes:name:)` is then given.
    public static func fileBytes(_ path: String, limits: ImageLimits = .default) throws(ImageError) -> [UInt8] {
        try readFile(path, maxBytes: limits.maxFileBytes)
    }

    static func readFile(_ path: String, maxBytes: Int) throws(ImageError) -> [UInt8] {
        var st = stat()
        if stat(path, &st) != 0 {
            let e = errno
            if e == ENOENT || e == ENOTDIR { throw .notFound(file: path) }
            throw .unreadable(file: path, message: String(cString: strerror(e)))
        }
        if (st.st_mode & S_IFMT) != S_IFREG { throw .notARegularFile(file: path) }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)  // never blocks, even if the path became a FIFO
        if fd < 0 { throw .unreadable(file: path, message: String(cString: strerror(errno))) }
        defer { close(fd) }
        // Re-check on the opened descriptor (the path may have changed in between).
        if fstat(fd, &st) != 0 { throw .unreadable(file: path, message: String(cString: strerror(errno))) }
        if (st.st_mode & S_IFMT) != S_IFREG { throw .notARegularFile(file: path) }
        let size = Int(st.st_size)
        if size == 0 { throw .empty(file: path) }
        if size > maxBytes { throw .fileTooLarge(file: path, bytes: UInt64(size), limit: UInt64(max(maxBytes, 0))) }
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        var failure: Int32 = 0
        bytes.withUnsafeMutableBytes { buf in
            while done < size {
                let n = read(fd, buf.baseAddress! + done, size - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                if n == 0 { break }
                done += n
            }
        }
        if failure != 0 { throw .unreadable(file: path, message: String(cString: strerror(failure))) }
        if done == 0 { throw .empty(file: path) }
        if done < size { bytes.removeSubrange(done...) }
        return bytes
    }
}
