/// Pillow 13's `Image.resize((w, h), Image.BILINEAR)` of an 8-bit RGB image, bit for bit
/// (spec/finetune.md §2; the resize of diffusers' DreamBooth training scripts, through
/// torchvision's `Resize` on a PIL image).
///
/// It is `Resampler` with `Convention.pillow` (22-bit weights, the kernel argument multiplied by
/// `1 / fs`) and Pillow's pass order: the vertical pass first when `(H − H') > 0` and
/// `(H − H') > 2 · (W − W')`, otherwise the horizontal pass first; a pass whose size does not
/// change is skipped; the first pass's output is rounded to 8 bits.
public enum PillowResize {
    /// Whether Pillow runs the vertical pass first for this resize.
    public static func verticalFirst(width: Int, height: Int, toWidth ow: Int, toHeight oh: Int) -> Bool {
        let dh = height - oh, dw = width - ow
        return dh > 0 && dh > 2 * dw
    }

    /// The image resized to `width × height` with Pillow's bilinear filter, or nil when a side is
    /// not positive or the pixel count overflows. The caller bounds the size (limits are the
    /// caller's: this allocates `width · height · 3` bytes).
    public static func bilinear(_ image: RGBImage, width ow: Int, height oh: Int) -> RGBImage? {
        guard ow > 0, oh > 0 else { return nil }
        let (n, o1) = ow.multipliedReportingOverflow(by: oh)
        let (_, o2) = n.multipliedReportingOverflow(by: 3)
        guard !o1, !o2 else { return nil }
        if ow == image.width, oh == image.height { return image }
        let w = image.width, h = image.height
        func horizontal(_ px: [UInt8], rows: Int) -> [UInt8] {
            Resampler.horizontalPass(px, width: w, height: rows, to: ow,
                                     weights: Resampler.weights(inSize: w, outSize: ow, filter: .bilinear, convention: .pillow))
        }
        func vertical(_ px: [UInt8], columns: Int) -> [UInt8] {
            Resampler.verticalPass(px, width: columns, height: h, to: oh,
                                   weights: Resampler.weights(inSize: h, outSize: oh, filter: .bilinear, convention: .pillow))
        }
        var px = image.pixels
        if verticalFirst(width: w, height: h, toWidth: ow, toHeight: oh) {
            if oh != h { px = vertical(px, columns: w) }
            if ow != w { px = horizontal(px, rows: oh) }
        } else {
            if ow != w { px = horizontal(px, rows: h) }
            if oh != h { px = vertical(px, columns: ow) }
        }
        return RGBImage(width: ow, height: oh, pixels: px)
    }
}
