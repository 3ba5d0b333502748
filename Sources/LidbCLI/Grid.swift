import ArgumentParser
import Diffusion
import Imaging
import TensorFile

/// How an image of another size than the cell is brought to the cell's size.
enum GridResize: String, ExpressibleByArgument, CaseIterable {
    case nearest, bilinear
}

struct Grid: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compose PNG/JPEG images into one contact-sheet PNG.",
        discussion: """
        Cells are filled row-major: the first --columns images make the first row, and so on; the \
        last row may be partly empty (fewer images than --columns make a single, narrower row). '-' instead of an image name leaves its cell empty (the \
        background colour). Every cell has the size --cell WxH, by default the size of the first \
        image (the first name that is not '-'); an image of another size is stretched to the cell \
        (the aspect ratio is not kept) with --resize: nearest (default; each cell pixel takes the \
        source pixel under its centre, so whole-number enlargements stay sharp) or bilinear \
        (linear interpolation between the four nearest source pixels, pixel centres aligned as \
        in torch's interpolate with align_corners=False; no antialiasing when shrinking). --gap \
        pixels of background separate neighbouring cells (not the sheet's outer edge).

        Images are read as `lidb personalize` reads photos: PNG or JPEG, EXIF orientation \
        applied, transparency composited over white, at most 40 megapixels each. The sheet — \
        columns × cell width + (columns − 1) × gap by rows × cell height + (rows − 1) × gap, \
        checked arithmetic — \
        is refused before it is allocated if a side exceeds 16384 pixels or it has more than \
        2^27 (134,217,728) pixels. The output is an 8-bit RGB PNG, written atomically.
        """
    )
    @Argument(help: "Images (PNG or JPEG), row-major; '-' leaves a cell empty.") var images: [String] = []
    @Option(help: "Cells per row (at least 1).") var columns: Int
    @Option(help: "Cell size WxH in pixels (default: the first image's size).") var cell: String?
    @Option(help: "Pixels of background between neighbouring cells.") var gap: Int = 0
    @Option(help: "Background colour as RRGGBB hex (a leading # is allowed).") var background: String = "ffffff"
    @Option(help: "Resampling of images whose size differs from the cell: nearest or bilinear.") var resize: GridResize = .nearest
    @Option(name: .shortAndLong, help: "Output PNG.") var output: String

    static let maxSide = 16384
    static let maxPixels = 1 << 27  // 134 M pixels, 402 MB of RGB

    func validate() throws {
        if images.isEmpty { throw ValidationError("no images given (give image files, or '-' for an empty cell)") }
        if columns < 1 { throw ValidationError("--columns \(columns): must be at least 1") }
        if gap < 0 || gap > Self.maxSide { throw ValidationError("--gap \(gap): must be from 0 to \(Self.maxSide)") }
        if Self.parseColour(background) == nil {
            throw ValidationError("--background '\(background)': not a colour; give six hex digits RRGGBB, e.g. ffffff or #1e90ff")
        }
        if let cell, Self.parseCell(cell) == nil {
            throw ValidationError("--cell '\(cell)': not a size; give WxH with each side from 1 to \(Self.maxSide), e.g. 64x64")
        }
        if images.allSatisfy({ $0 == "-" }) && cell == nil {
            throw ValidationError("every image is '-': give --cell WxH for the empty cells' size")
        }
    }

    /// `RRGGBB` or `#RRGGBB` → (r, g, b).
    static func parseColour(_ s: String) -> (UInt8, UInt8, UInt8)? {
        let hex = s.hasPrefix("#") ? Substring(s.dropFirst()) : Substring(s)
        guard hex.count == 6, hex.allSatisfy(\.isHexDigit), let v = UInt32(hex, radix: 16) else { return nil }
        return (UInt8(v >> 16), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF))
    }

    /// `WxH` → (w, h), each side 1…maxSide.
    static func parseCell(_ s: String) -> (Int, Int)? {
        let parts = s.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let w = Int(parts[0]), let h = Int(parts[1]), (1...maxSide).contains(w), (1...maxSide).contains(h) else { return nil }
        return (w, h)
    }

    /// The sheet's (width, height) for `count` cells, or a one-line reason it is refused. Checked
    /// arithmetic throughout: nothing here can overflow or trap.
    static func sheetSize(count: Int, columns: Int, cellWidth: Int, cellHeight: Int, gap: Int) -> Result<(Int, Int), SheetTooLarge> {
        let cols = min(columns, max(count, 1))
        let rows = count / columns + (count % columns == 0 ? 0 : 1)  // no overflow for any --columns
        func side(_ n: Int, _ c: Int) -> Int? {
            let (a, o1) = n.multipliedReportingOverflow(by: c)
            let (g, o2) = (n - 1).multipliedReportingOverflow(by: gap)
            let (s, o3) = a.addingReportingOverflow(g)
            return o1 || o2 || o3 ? nil : s
        }
        guard let w = side(cols, cellWidth), let h = side(rows, cellHeight) else {
            return .failure(SheetTooLarge(description: "the sheet's size overflows 64-bit arithmetic"))
        }
        let size = "\(cols) × \(rows) cells of \(cellWidth)×\(cellHeight) with gap \(gap) make a \(w)×\(h) sheet"
        if w > maxSide || h > maxSide {
            return .failure(SheetTooLarge(description: "\(size), more than \(maxSide) pixels a side"))
        }
        if w * h > maxPixels {
            return .failure(SheetTooLarge(description: "\(size) = \(w * h) pixels, more than the limit of \(maxPixels) (2^27)"))
        }
        return .success((w, h))
    }

    struct SheetTooLarge: Error { var description: String }

    func run() throws {
        let files = images.filter { $0 != "-" }
        try checkOutput(output, inputs: files)
        let colour = Self.parseColour(background)!
        try reportingErrors {
            // The cell size: --cell, else the first image's (decoded once and kept for its cell).
            var first: (index: Int, image: RGBImage)? = nil
            let cellWidth: Int, cellHeight: Int
            if let cell, let size = Self.parseCell(cell) {
                (cellWidth, cellHeight) = size
            } else {
                let i = images.firstIndex { $0 != "-" }!
                let (img, _) = try ImageDecoder.decode(file: images[i])
                first = (i, img)
                (cellWidth, cellHeight) = (img.width, img.height)
            }
            let width: Int, height: Int
            switch Self.sheetSize(count: images.count, columns: columns, cellWidth: cellWidth, cellHeight: cellHeight, gap: gap) {
            case let .success((w, h)): (width, height) = (w, h)
            case let .failure(e): throw TensorFileError(file: output, .invalidArgument("refused: \(e.description); use a smaller --cell, fewer --columns or a smaller --gap"))
            }
            var sheet = [UInt8](repeating: 0, count: width * height * 3)
            for p in 0..<(width * height) {
                sheet[p * 3] = colour.0
                sheet[p * 3 + 1] = colour.1
                sheet[p * 3 + 2] = colour.2
            }
            for (k, name) in images.enumerated() where name != "-" {
                let img: RGBImage
                if let f = first, f.index == k { img = f.image } else { img = try ImageDecoder.decode(file: name).0 }
                let cellPixels = Self.resized(img, width: cellWidth, height: cellHeight, resize)
                let (row, col) = k.quotientAndRemainder(dividingBy: columns)
                let x0 = col * (cellWidth + gap), y0 = row * (cellHeight + gap)
                sheet.withUnsafeMutableBufferPointer { dst in
                    cellPixels.withUnsafeBufferPointer { src in
                        for y in 0..<cellHeight {
                            let d = ((y0 + y) * width + x0) * 3
                            let s = y * cellWidth * 3
                            for i in 0..<(cellWidth * 3) { dst[d + i] = src[s + i] }
                        }
                    }
                }
                first = nil
            }
            try PNGWriter.write(rgb: sheet, width: width, height: height, to: output)
            let filled = files.count, empty = images.count - files.count
            print("wrote \(output) (\(width)×\(height), \(filled) image\(filled == 1 ? "" : "s")\(empty > 0 ? ", \(empty) empty cell\(empty == 1 ? "" : "s")" : ""))")
        }
    }

    /// `image` brought to `width × height` RGB pixels (returned as is when it already has that size).
    static func resized(_ image: RGBImage, width: Int, height: Int, _ mode: GridResize) -> [UInt8] {
        if image.width == width && image.height == height { return image.pixels }
        let sw = image.width, sh = image.height
        var out = [UInt8](repeating: 0, count: width * height * 3)
        image.pixels.withUnsafeBufferPointer { src in
            switch mode {
            case .nearest:
                // The source pixel under the centre of each destination pixel.
                let xs = (0..<width).map { min(sw - 1, Int((Double($0) + 0.5) * Double(sw) / Double(width))) }
                for y in 0..<height {
                    let sy = min(sh - 1, Int((Double(y) + 0.5) * Double(sh) / Double(height)))
                    for x in 0..<width {
                        let s = (sy * sw + xs[x]) * 3, d = (y * width + x) * 3
                        out[d] = src[s]
                        out[d + 1] = src[s + 1]
                        out[d + 2] = src[s + 2]
                    }
                }
            case .bilinear:
                // Half-pixel centres, edges clamped.
                func taps(_ n: Int, _ sn: Int) -> [(Int, Int, Double)] {
                    (0..<n).map { i in
                        let c = max(0, (Double(i) + 0.5) * Double(sn) / Double(n) - 0.5)
                        let i0 = min(Int(c), sn - 1)
                        let i1 = min(i0 + 1, sn - 1)
                        return (i0, i1, c - Double(i0))
                    }
                }
                let tx = taps(width, sw), ty = taps(height, sh)
                for y in 0..<height {
                    let (y0, y1, fy) = ty[y]
                    for x in 0..<width {
                        let (x0, x1, fx) = tx[x]
                        for c in 0..<3 {
                            let a = Double(src[(y0 * sw + x0) * 3 + c]), b = Double(src[(y0 * sw + x1) * 3 + c])
                            let e = Double(src[(y1 * sw + x0) * 3 + c]), f = Double(src[(y1 * sw + x1) * 3 + c])
                            let v = (a * (1 - fx) + b * fx) * (1 - fy) + (e * (1 - fx) + f * fx) * fy
                            out[(y * width + x) * 3 + c] = UInt8(min(255, max(0, v.rounded())))
                        }
                    }
                }
            }
        }
        return out
    }
}
