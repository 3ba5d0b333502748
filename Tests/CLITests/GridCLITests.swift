import Diffusion
import Foundation
import Imaging
import Testing

/// `lidb grid`: contact sheets of solid-colour PNGs written with the project's PNG writer, read
/// back with the project's decoder; the expected pixels are the inputs' own colours.
@Suite(.serialized) struct GridCLITests {
    typealias RGB = (UInt8, UInt8, UInt8)

    static func solid(_ c: RGB, width: Int, height: Int, to path: String) throws {
        var px = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) { (px[3 * i], px[3 * i + 1], px[3 * i + 2]) = c }
        try PNGWriter.write(rgb: px, width: width, height: height, to: path)
    }

    static func pixel(_ img: RGBImage, _ x: Int, _ y: Int) -> [UInt8] {
        let i = (y * img.width + x) * 3
        return Array(img.pixels[i..<(i + 3)])
    }

    /// Every pixel of the cell at (row, col) has colour `c`.
    static func cellIs(_ img: RGBImage, row: Int, col: Int, cell: (Int, Int), gap: Int, _ c: RGB) -> Bool {
        let x0 = col * (cell.0 + gap), y0 = row * (cell.1 + gap)
        for y in y0..<(y0 + cell.1) {
            for x in x0..<(x0 + cell.0) where pixel(img, x, y) != [c.0, c.1, c.2] { return false }
        }
        return true
    }

    let red: RGB = (220, 20, 30), green: RGB = (10, 200, 40), blue: RGB = (5, 60, 250), yellow: RGB = (240, 230, 0)

    @Test func cellsGapsAndEmptyCells() throws {
        let s = Scratch()
        for (n, c) in [("r", red), ("g", green), ("b", blue), ("y", yellow)] { try Self.solid(c, width: 6, height: 4, to: s.file("\(n).png")) }
        let r = try CLI.run(["grid", s.file("r.png"), s.file("g.png"), "-", s.file("b.png"), s.file("y.png"),
                             "--columns", "3", "--gap", "2", "--background", "#102030", "-o", s.file("sheet.png")])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("22×10") && r.stdout.contains("1 empty cell"), "\(r.stdout)")
        let (img, _) = try ImageDecoder.decode(file: s.file("sheet.png"))
        // 3 columns × 6 + 2 gaps × 2 = 22 wide; 2 rows × 4 + 1 gap × 2 = 10 high.
        #expect(img.width == 22 && img.height == 10)
        let bg: RGB = (0x10, 0x20, 0x30)
        #expect(Self.cellIs(img, row: 0, col: 0, cell: (6, 4), gap: 2, red))
        #expect(Self.cellIs(img, row: 0, col: 1, cell: (6, 4), gap: 2, green))
        #expect(Self.cellIs(img, row: 0, col: 2, cell: (6, 4), gap: 2, bg))      // '-'
        #expect(Self.cellIs(img, row: 1, col: 0, cell: (6, 4), gap: 2, blue))
        #expect(Self.cellIs(img, row: 1, col: 1, cell: (6, 4), gap: 2, yellow))
        #expect(Self.cellIs(img, row: 1, col: 2, cell: (6, 4), gap: 2, bg))      // past the last image
        // The gaps: the columns between cells and the row between the two rows.
        for y in 0..<10 { #expect(Self.pixel(img, 6, y) == [0x10, 0x20, 0x30] && Self.pixel(img, 15, y) == [0x10, 0x20, 0x30]) }
        for x in 0..<22 { #expect(Self.pixel(img, x, 4) == [0x10, 0x20, 0x30] && Self.pixel(img, x, 5) == [0x10, 0x20, 0x30]) }
    }

    @Test func imagesOfAnotherSizeAreScaledToTheCell() throws {
        let s = Scratch()
        try Self.solid(red, width: 4, height: 4, to: s.file("small.png"))
        try Self.solid(blue, width: 9, height: 3, to: s.file("wide.png"))
        // A two-colour image: left half green, right half yellow; enlarged 2× by nearest, each half stays exact.
        var px = [UInt8](repeating: 0, count: 4 * 2 * 3)
        for y in 0..<2 { for x in 0..<4 { let c = x < 2 ? green : yellow; let i = (y * 4 + x) * 3; (px[i], px[i + 1], px[i + 2]) = c } }
        try PNGWriter.write(rgb: px, width: 4, height: 2, to: s.file("halves.png"))
        for mode in ["nearest", "bilinear"] {
            let r = try CLI.run(["grid", s.file("small.png"), s.file("wide.png"), s.file("halves.png"), "--columns", "2", "--cell", "8x8",
                                 "--resize", mode, "-o", s.file("\(mode).png")])
            #expect(r.status == 0, "\(r.stderr)")
            let (img, _) = try ImageDecoder.decode(file: s.file("\(mode).png"))
            #expect(img.width == 16 && img.height == 16)
            #expect(Self.cellIs(img, row: 0, col: 0, cell: (8, 8), gap: 0, red))
            #expect(Self.cellIs(img, row: 0, col: 1, cell: (8, 8), gap: 0, blue))
            #expect(Self.cellIs(img, row: 1, col: 1, cell: (8, 8), gap: 0, (255, 255, 255)))  // default background
            if mode == "nearest" {
                for y in 8..<16 {
                    for x in 0..<4 { #expect(Self.pixel(img, x, y) == [green.0, green.1, green.2]) }
                    for x in 4..<8 { #expect(Self.pixel(img, x, y) == [yellow.0, yellow.1, yellow.2]) }
                }
            } else {
                // Bilinear: the outer columns are the edge colours, the middle ones lie between.
                #expect(Self.pixel(img, 0, 12) == [green.0, green.1, green.2] && Self.pixel(img, 7, 12) == [yellow.0, yellow.1, yellow.2])
                let mid = Self.pixel(img, 4, 12)
                #expect(mid[0] > green.0 && mid[0] < yellow.0)
            }
        }
    }

    @Test func errorsAreOneLineNamingTheProblem() throws {
        let s = Scratch()
        try Self.solid(red, width: 4, height: 4, to: s.file("ok.png"))
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3, 4, 5, 6, 7, 8, 9]).write(to: URL(fileURLWithPath: s.file("corrupt.png")))
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: s.file("text.png")))
        let cases: [([String], [String])] = [
            ([s.file("ok.png"), s.file("missing.png"), "--columns", "2"], ["missing.png", "no such file"]),
            ([s.file("ok.png"), s.file("corrupt.png"), "--columns", "2"], ["corrupt.png"]),
            ([s.file("text.png"), "--columns", "1"], ["text.png", "not a PNG or JPEG"]),
            ([s.file("ok.png"), "--columns", "0"], ["--columns 0"]),
            (["--columns", "2"], ["no images"]),
            ([s.file("ok.png"), "--columns", "1", "--background", "red"], ["--background 'red'"]),
            ([s.file("ok.png"), "--columns", "1", "--background", "12345g"], ["--background"]),
            ([s.file("ok.png"), "--columns", "1", "--cell", "64"], ["--cell '64'"]),
            (["-", "-", "--columns", "2"], ["--cell"]),
            ([s.file("ok.png"), "--columns", "3", "--cell", "8000x8000", s.file("ok.png"), s.file("ok.png")], ["16384 pixels a side"]),
            ([s.file("ok.png"), "--columns", "2", "--cell", "16384x16384", s.file("ok.png")], ["16384 pixels a side"]),
            ([s.file("ok.png"), "--columns", "1", "--cell", "16384x16384", "--gap", "1", s.file("ok.png")], ["16384 pixels a side"]),
            ([s.file("ok.png"), "--columns", "2", "--cell", "8192x8193", s.file("ok.png")], ["2^27"]),
            ([s.file("ok.png"), "--columns", "1", "--gap", "-1"], ["--gap"]),
        ]
        for (args, words) in cases {
            let r = try CLI.run(["grid"] + args + ["-o", s.file("out.png")])
            #expect(r.status == 2, "\(args): \(r.status) \(r.stderr)")
            #expect(r.stderr.hasPrefix("lidb: error: ") && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
            for w in words { #expect(r.stderr.contains(w), "\(args): \(r.stderr)") }
            #expect(!FileManager.default.fileExists(atPath: s.file("out.png")), "\(args)")
        }
        #expect(s.contents.allSatisfy { !$0.hasPrefix(".") }, "\(s.contents)")
        // Any --columns is fine arithmetic: more columns than images make a single row.
        let wide = try CLI.run(["grid", s.file("ok.png"), "--columns", "\(Int.max)", "-o", s.file("one.png")])
        #expect(wide.status == 0, "\(wide.stderr)")
        try? FileManager.default.removeItem(atPath: s.file("one.png"))
        // The output may not be one of the inputs.
        let r = try CLI.run(["grid", s.file("ok.png"), "--columns", "1", "-o", s.file("ok.png")])
        #expect(r.status == 2 && r.stderr.contains("ok.png"), "\(r.stderr)")
    }

    @Test func helpExplainsTheLayout() throws {
        let r = try CLI.run(["grid", "--help"])
        #expect(r.status == 0)
        for w in ["--columns", "--cell", "--gap", "--background", "nearest", "bilinear", "'-'", "row-major"] {
            #expect(r.stdout.contains(w), "\(w)")
        }
    }
}
