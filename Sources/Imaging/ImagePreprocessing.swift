import TensorFile

/// How an image becomes an image encoder's `pixel_values`: resize, optional centre crop, rescale
/// and normalise. The JSON form mirrors the fields of transformers' `preprocessor_config.json`;
/// the math is that of transformers' default (torchvision) image processors — see spec/image.md.
public struct ImagePreprocessing: Sendable, Equatable {
    public enum Size: Sendable, Equatable {
        /// Scale so that the shorter side is this long, keeping the aspect ratio (the longer side
        /// is truncated to an integer).
        case shortestEdge(Int)
        /// Scale to exactly this size.
        case exact(height: Int, width: Int)
    }

    public enum Resample: String, Sendable, Equatable {
        case bilinear, bicubic
    }

    public let size: Size
    /// Centre crop to (height, width) after resizing, or nil for none.
    public let cropSize: (height: Int, width: Int)?
    public let resample: Resample
    public let rescaleFactor: Double
    public let imageMean: [Double]
    public let imageStd: [Double]

    init(size: Size, cropSize: (height: Int, width: Int)?, resample: Resample, rescaleFactor: Double, imageMean: [Double], imageStd: [Double]) {
        self.size = size
        self.cropSize = cropSize
        self.resample = resample
        self.rescaleFactor = rescaleFactor
        self.imageMean = imageMean
        self.imageStd = imageStd
    }

    public static func == (a: ImagePreprocessing, b: ImagePreprocessing) -> Bool {
        a.size == b.size && a.cropSize?.height == b.cropSize?.height && a.cropSize?.width == b.cropSize?.width
            && a.resample == b.resample && a.rescaleFactor == b.rescaleFactor && a.imageMean == b.imageMean && a.imageStd == b.imageStd
    }

    /// OpenAI CLIP's normalisation constants (as in transformers' `OPENAI_CLIP_MEAN` / `_STD`).
    public static let openAIClipMean = [0.48145466, 0.4578275, 0.40821073]
    public static let openAIClipStd = [0.26862954, 0.26130258, 0.27577711]

    /// `CLIPImageProcessor` defaults: bicubic resize of the shortest edge to `size`, centre crop
    /// `size × size`, rescale by 1/255, OpenAI CLIP mean/std.
    public static func clip(size: Int) -> ImagePreprocessing {
        ImagePreprocessing(size: .shortestEdge(size), cropSize: (size, size), resample: .bicubic,
                           rescaleFactor: 1.0 / 255.0, imageMean: openAIClipMean, imageStd: openAIClipStd)
    }

    /// `ViTImageProcessor` defaults: bilinear resize to `size × size`, no crop, rescale by 1/255,
    /// mean = std = 0.5.
    public static func vit(size: Int) -> ImagePreprocessing {
        ImagePreprocessing(size: .exact(height: size, width: size), cropSize: nil, resample: .bilinear,
                           rescaleFactor: 1.0 / 255.0, imageMean: [0.5, 0.5, 0.5], imageStd: [0.5, 0.5, 0.5])
    }

    /// Largest size or crop side accepted.
    public static let maxSide = 8192

    /// Largest image, in pixels, that resizing may produce before the crop (as training's
    /// `TrainingLimits.maxResizedPixels`): 64,000,000 pixels, 183 MiB of 8-bit RGB. An exact
    /// `size` beyond it is refused when the description is read; a `shortest_edge` size depends
    /// on the image (1×48 pixels to a shortest edge of 8192 is 8192 × 393,216 pixels), so `apply`
    /// refuses it before allocating.
    public static let maxResizedPixels = 64_000_000

    public var outputHeight: Int {
        if let c = cropSize { return c.height }
        if case let .exact(h, _) = size { return h }
        preconditionFailure("shortest_edge without crop_size has no fixed output size")
    }

    public var outputWidth: Int {
        if let c = cropSize { return c.width }
        if case let .exact(_, w) = size { return w }
        preconditionFailure("shortest_edge without crop_size has no fixed output size")
    }

    // MARK: JSON

    static let keys = ["size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std"]

    /// Reads the JSON form; `file` names where it came from in errors. Every key is required,
    /// unknown keys are refused, and the output size must be fixed (a `shortest_edge` size needs
    /// a `crop_size`).
    public init(json: JSONValue, file: String) throws(ImageError) {
        func bad(_ key: String, _ problem: String) -> ImageError { .invalidPreprocessing(file: file, key: key, problem: problem) }
        guard let pairs = json.objectValue else { throw bad("(root)", "not a JSON object") }
        var seen = Set<String>()
        for (k, _) in pairs {
            guard Self.keys.contains(k) else { throw bad(k, "unknown key (expected \(Self.keys.joined(separator: ", ")))") }
            guard seen.insert(k).inserted else { throw bad(k, "appears twice") }
        }
        for k in Self.keys where !seen.contains(k) { throw bad(k, "missing") }

        func side(_ v: JSONValue?, _ key: String) throws(ImageError) -> Int {
            guard let v, v.isInteger, let n = v.int64Value, n >= 1, n <= Int64(Self.maxSide) else {
                throw bad(key, "must be an integer from 1 to \(Self.maxSide)")
            }
            return Int(n)
        }
        func heightWidth(_ v: JSONValue, _ key: String) throws(ImageError) -> (Int, Int) {
            guard let o = v.objectValue, o.count == 2, v["height"] != nil, v["width"] != nil else {
                throw bad(key, "must be {\"height\": h, \"width\": w}")
            }
            return (try side(v["height"], key + ".height"), try side(v["width"], key + ".width"))
        }

        let sizeJSON = json["size"]!
        if let o = sizeJSON.objectValue, o.count == 1, let s = sizeJSON["shortest_edge"] {
            size = .shortestEdge(try side(s, "size.shortest_edge"))
        } else if sizeJSON.objectValue != nil, sizeJSON["height"] != nil {
            let (h, w) = try heightWidth(sizeJSON, "size")
            // Sides are at most 8192: the product cannot overflow.
            guard h * w <= Self.maxResizedPixels else {
                throw bad("size", "\(h)×\(w) is \(h * w) pixels, more than the limit of \(Self.maxResizedPixels) for a resized image")
            }
            size = .exact(height: h, width: w)
        } else {
            throw bad("size", "must be {\"shortest_edge\": n} or {\"height\": h, \"width\": w}")
        }

        let cropJSON = json["crop_size"]!
        if cropJSON == .null {
            cropSize = nil
            if case .shortestEdge = size { throw bad("crop_size", "must not be null when size is shortest_edge (the output size would depend on the image)") }
        } else {
            let (h, w) = try heightWidth(cropJSON, "crop_size")
            cropSize = (h, w)
        }

        guard let r = json["resample"]!.stringValue, let resample = Resample(rawValue: r) else {
            throw bad("resample", "must be \"bicubic\" or \"bilinear\"")
        }
        self.resample = resample

        guard let rf = json["rescale_factor"]!.doubleValue, rf.isFinite, rf > 0 else { throw bad("rescale_factor", "must be a positive number") }
        rescaleFactor = rf

        func triple(_ key: String, positive: Bool) throws(ImageError) -> [Double] {
            guard let a = json[key]!.arrayValue, a.count == 3 else { throw bad(key, "must be an array of 3 numbers") }
            var out: [Double] = []
            for v in a {
                guard let d = v.doubleValue, d.isFinite, !positive || d > 0 else {
                    throw bad(key, positive ? "must hold 3 positive numbers" : "must hold 3 finite numbers")
                }
                out.append(d)
            }
            return out
        }
        imageMean = try triple("image_mean", positive: false)
        imageStd = try triple("image_std", positive: true)
    }

    /// The canonical JSON form (keys in schema order); `init(json:file:)` reads it back equal.
    public var json: JSONValue {
            let sizeJSON: JSONValue
            switch size {
            case let .shortestEdge(n): sizeJSON = .object([("shortest_edge", .int(n))])
            case let .exact(h, w): sizeJSON = .object([("height", .int(h)), ("width", .int(w))])
            }
            let crop: JSONValue = cropSize.map { .object([("height", .int($0.height)), ("width", .int($0.width))]) } ?? .null
            return .object([
                ("size", sizeJSON),
                ("crop_size", crop),
                ("resample", .string(resample.rawValue)),
                ("rescale_factor", .double(rescaleFactor)),
                ("image_mean", .array(imageMean.map { .double($0) })),
                ("image_std", .array(imageStd.map { .double($0) })),
            ])
    }

    // MARK: Math

    /// The size the image is resized to before cropping, as (height, width), or nil when a side
    /// is not positive or the arithmetic overflows.
    public func resizedSize(height: Int, width: Int) -> (height: Int, width: Int)? {
        guard height > 0, width > 0 else { return nil }
        switch size {
        case let .exact(h, w): return (h, w)
        case let .shortestEdge(s):
            // The longer side is s · long / short, truncated (as transformers computes it in floating point).
            let short = min(height, width), long = max(height, width)
            let (product, overflow) = s.multipliedReportingOverflow(by: long)
            guard !overflow else { return nil }
            let q = Double(product) / Double(short)
            guard q < Double(Int.max) else { return nil }
            let newLong = Int(q)
            return width <= height ? (newLong, s) : (s, newLong)
        }
    }

    /// The resized size, checked against `maxResizedPixels` before anything is allocated.
    /// `config` names the preprocessing description's file and `image` the photo, for errors.
    public func checkedResizedSize(height: Int, width: Int, image: String, config: String) throws(ImageError) -> (height: Int, width: Int) {
        let key: String
        switch size {
        case .exact: key = "size"
        case .shortestEdge: key = "size.shortest_edge"
        }
        guard let r = resizedSize(height: height, width: width),
              case let (pixels, overflow) = r.height.multipliedReportingOverflow(by: r.width), !overflow, pixels <= Self.maxResizedPixels
        else {
            let r = resizedSize(height: height, width: width)
            throw .resizeTooLarge(file: config, key: key, image: image, width: width, height: height,
                                  resizedWidth: r?.width ?? Int.max, resizedHeight: r?.height ?? Int.max, limit: Self.maxResizedPixels)
        }
        return r
    }

    /// `pixel_values` for one image: CHW, `3 × outputHeight × outputWidth`. An image that the
    /// `size` would resize past `maxResizedPixels` is refused (`ImageError.resizeTooLarge`, naming
    /// `config`, the key and `image`) before any pixel memory is allocated.
    public func apply(_ image: RGBImage, image name: String = "image", config: String = "preprocessing") throws(ImageError) -> [Float] {
        let (rh, rw) = try checkedResizedSize(height: image.height, width: image.width, image: name, config: config)
        let resized = Resampler.resize(image.pixels, width: image.width, height: image.height,
                                       toWidth: rw, toHeight: rh, filter: resample)
        let (ch, cw) = cropSize.map { ($0.height, $0.width) } ?? (rh, rw)
        // Centre crop; a crop larger than the image first pads it with zeros (left/top get the
        // smaller half of the padding).
        let padTop = ch > rh ? (ch - rh) / 2 : 0, padLeft = cw > rw ? (cw - rw) / 2 : 0
        let ph = ch > rh ? ch : rh, pw = cw > rw ? cw : rw
        let top = (ph - ch) / 2, left = (pw - cw) / 2
        // Fused rescale and normalise: (x − mean / f) / (std / f), in float32.
        let inv = Float(1.0 / rescaleFactor)
        let mean = imageMean.map { Float($0) * inv }, std = imageStd.map { Float($0) * inv }
        let plane = ch * cw
        var out = [Float](repeating: 0, count: 3 * plane)
        for y in 0..<ch {
            let sy = y + top - padTop
            for x in 0..<cw {
                let sx = x + left - padLeft
                for c in 0..<3 {
                    var v: Float = 0
                    if sy >= 0, sy < rh, sx >= 0, sx < rw { v = Float(resized[(sy * rw + sx) * 3 + c]) }
                    out[c * plane + y * cw + x] = (v - mean[c]) / std[c]
                }
            }
        }
        return out
    }
}

extension ImagePreprocessing {
    /// Reads a transformers `preprocessor_config.json` as transformers itself writes it (`resample`
    /// as PIL's number, `do_*` switches, extra keys such as `image_processor_type` ignored).
    /// `size` and `crop_size` must be in the dictionary form; `do_resize` must be true (or absent).
    /// A `false` `do_center_crop` means no crop; a `false` `do_rescale` a factor of 1; a `false`
    /// `do_normalize` mean 0 and std 1.
    public init(transformersConfig config: JSONValue, file: String) throws(ImageError) {
        func bad(_ key: String, _ problem: String) -> ImageError { .invalidPreprocessing(file: file, key: key, problem: problem) }
        guard config.objectValue != nil else { throw bad("(root)", "not a JSON object") }
        func flag(_ key: String, default value: Bool) throws(ImageError) -> Bool {
            guard let v = config[key] else { return value }
            guard let b = v.boolValue else { throw bad(key, "must be true or false") }
            return b
        }
        func required(_ key: String) throws(ImageError) -> JSONValue {
            guard let v = config[key] else { throw bad(key, "missing") }
            return v
        }
        guard try flag("do_resize", default: true) else { throw bad("do_resize", "must be true: images of any size are resized") }
        let resample: JSONValue
        switch try required("resample") {
        case let r where r.int64Value == 2: resample = .string("bilinear")
        case let r where r.int64Value == 3: resample = .string("bicubic")
        case let r where r.stringValue == "bilinear" || r.stringValue == "bicubic": resample = r
        default: throw bad("resample", "must be 2 (bilinear) or 3 (bicubic)")
        }
        let crop: JSONValue = try flag("do_center_crop", default: false) ? try required("crop_size") : .null
        let rescale: JSONValue = try flag("do_rescale", default: true) ? try required("rescale_factor") : .int(1)
        let normalize = try flag("do_normalize", default: true)
        let mean: JSONValue = normalize ? try required("image_mean") : .array([.int(0), .int(0), .int(0)])
        let std: JSONValue = normalize ? try required("image_std") : .array([.int(1), .int(1), .int(1)])
        try self.init(json: .object([
            ("size", try required("size")), ("crop_size", crop), ("resample", resample),
            ("rescale_factor", rescale), ("image_mean", mean), ("image_std", std),
        ]), file: file)
    }
}
