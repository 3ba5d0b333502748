import ArgumentParser
import Checkpoint
import Crypto
import Hypernetwork
import Imaging
import SubjectDelta
import TensorFile

struct Personalize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "personalize",
        abstract: "Make a subject file from one photo with a hypernetwork (no training).",
        discussion: """
        Decodes the photo (PNG or JPEG; 8/16-bit; grey, RGB or RGBA — alpha composited on white; \
        JPEG EXIF orientation applied), preprocesses it as the hypernetwork's file says (resize, \
        crop, mean/std: spec/image.md), runs the image encoder and the weight decoder's k \
        refinement iterations (spec/hypernetwork.md) and writes a subject bound to BASE: its \
        family and target layer table (with --strict, also its content fingerprint). The subject \
        records the hypernetwork's fingerprint and the SHA-256 of the photo file, never the photo. \
        A hypernetwork made for another layer table is refused naming the first layer that differs; \
        images over 40 megapixels, 16,384 pixels a side or 100 MB are refused before decoding.
        """
    )
    @Option(help: "The hypernetwork (.lidb, from `lidb convert --kind hypernetwork`).") var hypernet: String
    @Option(help: "The base the subject is for.") var base: String
    @Option(help: "The photo (PNG or JPEG).") var image: String
    @Option(help: "Trigger token recorded in the subject (use it in prompts).") var trigger: String?
    @Option(name: .customLong("class"), help: "Class noun recorded in the subject (e.g. face, person).") var className: String?
    @Option(help: "Subject name recorded in the file.") var name: String?
    @Option(help: "Element type on disk: f16, f32, bf16, q8.") var dtype: SubjectDType = .f16
    @Flag(help: "Bind the subject to the base's content fingerprint too (not only its layer table).") var strict = false
    @Option(name: .shortAndLong, help: "Output subject .lidb.") var output: String
    @Flag(help: "Print per-stage times as JSON on stdout.") var timings = false

    func run() throws {
        try checkOutput(output, inputs: [hypernet, base, image])
        try reportingErrors { try personalize() }
    }

    func personalize() throws {
        let t0 = now()
        var stages: [(String, JSONValue)] = []
        var t = t0
        func lap(_ key: String) { let n = now(); stages.append((key, .double(n - t))); t = n }

        let h = try Hypernetwork(path: hypernet)
        lap("load_hypernetwork_s")
        let b = try BaseModel(path: base)
        try h.checkTargets(against: b)
        lap("load_base_s")
        let bytes = try ImageDecoder.fileBytes(image)
        let digest = SHA256.hash(data: bytes).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let (img, info) = try ImageDecoder.decode(bytes: bytes, name: image)
        lap("decode_s")
        let pre = try ImagePreprocessing(json: h.config.preprocessing, file: hypernet)
        let pixels = try pre.apply(img, image: image, config: hypernet)
        lap("preprocess_s")
        let predictions = try h.predict(pixels: pixels)
        lap("hypernetwork_s")
        let subject = try h.subject(from: predictions, for: b, provenance: SubjectProvenance(
            name: name, trigger: trigger, className: className, imageSHA256: digest), strict: strict)
        try subject.write(to: output, dtype: dtype)
        lap("write_s")
        stages.append(("total_s", .double(now() - t0)))

        let size = (try? MappedFile(path: output).bytes.count) ?? 0
        let orientation = info.orientation > 1 ? " (stored \(info.width)×\(info.height), EXIF orientation \(info.orientation) applied)" : ""
        print("read \(image): \(info.format.uppercased()) \(img.width)×\(img.height)\(orientation), \(info.bitDepth)-bit \(info.colorType); "
              + "preprocessed to \(pre.outputWidth)×\(pre.outputHeight)")
        print("wrote \(output): subject\(name.map { " '\($0)'" } ?? "") for \(h.config.architecture) (\(h.config.targetSet), "
              + "\(subject.layers.count) layers), \(subject.trainedParameters) trained parameters, \(size) bytes (\(dtype.rawValue))")
        if timings {
            print(JSONValue.object(stages).serializedString)
        }
    }
}
