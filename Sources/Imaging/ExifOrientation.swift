/// EXIF orientation (TIFF tag 0x0112) of a JPEG, read from its first APP1 "Exif" segment, and the
/// transform that displays the image upright. Every offset read from the file is bounds-checked;
/// anything malformed means "no orientation".
enum ExifOrientation {
    /// The orientation value 1–8, or nil when absent or invalid.
    static func find(inJPEG b: [UInt8]) -> Int? {
        guard b.count >= 4, b[0] == 0xFF, b[1] == 0xD8 else { return nil }
        var i = 2
        while i + 4 <= b.count {
            guard b[i] == 0xFF else { return nil }
            let marker = b[i + 1]
            if marker == 0xFF { i += 1; continue }  // fill byte
            // Markers without a length: TEM, RSTn; SOS or EOI end the header segments.
            if marker == 0x01 || (0xD0...0xD7).contains(marker) { i += 2; continue }
            if marker == 0xDA || marker == 0xD9 { return nil }
            let length = Int(b[i + 2]) << 8 | Int(b[i + 3])
            guard length >= 2, i + 2 + length <= b.count else { return nil }
            let start = i + 4, end = i + 2 + length
            if marker == 0xE1, end - start >= 6, b[start..<(start + 6)].elementsEqual([0x45, 0x78, 0x69, 0x66, 0, 0]) {
                return tiffOrientation(b, from: start + 6, to: end)
            }
            i = end
        }
        return nil
    }

    /// Orientation from a TIFF structure in `b[from..<to]` (offsets are relative to `from`).
    static func tiffOrientation(_ b: [UInt8], from base: Int, to end: Int) -> Int? {
        let size = end - base
        guard size >= 8 else { return nil }
        let little: Bool
        if b[base] == 0x49 && b[base + 1] == 0x49 { little = true } else if b[base] == 0x4D && b[base + 1] == 0x4D { little = false } else { return nil }
        func u16(_ off: Int) -> Int? {
            guard off >= 0, off <= size - 2 else { return nil }
            let x = Int(b[base + off]), y = Int(b[base + off + 1])
            return little ? x | y << 8 : x << 8 | y
        }
        func u32(_ off: Int) -> Int? {
            guard let hi = u16(little ? off + 2 : off), let lo = u16(little ? off : off + 2) else { return nil }
            return hi << 16 | lo
        }
        guard u16(2) == 42, let ifd = u32(4), let count = u16(ifd) else { return nil }
        for k in 0..<count {
            let entry = ifd + 2 + 12 * k
            guard let tag = u16(entry), let type = u16(entry + 2), let n = u32(entry + 4) else { return nil }
            if tag == 0x0112 {
                guard type == 3, n >= 1, let v = u16(entry + 8), (1...8).contains(v) else { return nil }
                return v
            }
        }
        return nil
    }

    /// The upright image for an EXIF orientation (1 or an unknown value: unchanged).
    static func apply(_ orientation: Int, to image: RGBImage) -> RGBImage {
        guard (2...8).contains(orientation) else { return image }
        let w = image.width, h = image.height
        let swapped = orientation >= 5
        let ow = swapped ? h : w, oh = swapped ? w : h
        let src = image.pixels
        let out = [UInt8](unsafeUninitializedCapacity: ow * oh * 3) { dst, count in
            for y in 0..<oh {
                for x in 0..<ow {
                    // Source pixel shown at (x, y).
                    let sx: Int, sy: Int
                    switch orientation {
                    case 2: (sx, sy) = (w - 1 - x, y)
                    case 3: (sx, sy) = (w - 1 - x, h - 1 - y)
                    case 4: (sx, sy) = (x, h - 1 - y)
                    case 5: (sx, sy) = (y, x)
                    case 6: (sx, sy) = (y, h - 1 - x)
                    case 7: (sx, sy) = (w - 1 - y, h - 1 - x)
                    default: (sx, sy) = (w - 1 - y, x)
                    }
                    let s = (sy * w + sx) * 3, d = (y * ow + x) * 3
                    dst[d] = src[s]
                    dst[d + 1] = src[s + 1]
                    dst[d + 2] = src[s + 2]
                }
            }
            count = ow * oh * 3
        }
        return RGBImage(width: ow, height: oh, pixels: out)
    }
}
