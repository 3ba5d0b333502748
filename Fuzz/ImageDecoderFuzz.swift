// libFuzzer entry point: the PNG/JPEG decoder (libpng, libjpeg and the EXIF reader) on arbitrary bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func lidbFuzzImage(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = [UInt8](UnsafeBufferPointer(start: data, count: size))
    let limits = ImageLimits(maxPixels: 1 << 22, maxSide: 8192, maxFileBytes: 1 << 20)
    if let (image, info) = try? ImageDecoder.decode(bytes: bytes, name: "fuzz", limits: limits) {
        // An accepted image has the size its header claims, turned by its orientation.
        let (w, h) = info.orientation >= 5 ? (info.height, info.width) : (info.width, info.height)
        precondition(image.width == w && image.height == h && image.pixels.count == w * h * 3)
    }
    return 0
}
