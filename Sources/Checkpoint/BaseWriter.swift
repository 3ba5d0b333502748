import Crypto
import TensorFile

/// The fingerprints a subject binds to (spec/base.md §4).
public enum Fingerprint {
    /// Tensors that identify the model: the UNet and the text encoder (what subjects modify).
    public static func isFingerprinted(_ name: String) -> Bool {
        name.hasPrefix("unet.") || name.hasPrefix("text_encoder.")
    }

    static func shapeText(_ shape: [Int]) -> String { shape.map(String.init).joined(separator: ",") }

    /// SHA-256 over `name \t dims \n` of the fingerprinted tensors, sorted by name (UTF-8 bytes).
    public static func layerTable(_ tensors: [TensorInfo]) -> String {
        var text = ""
        for t in tensors.filter({ isFingerprinted($0.name) }).sorted(by: { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }) {
            text += t.name + "\t" + shapeText(t.shape) + "\n"
        }
        return hex(SHA256.hash(data: Array(text.utf8)))
    }

    /// SHA-256 over `name \t dims \t digest \n`, sorted by name, where digest is the SHA-256 of the
    /// tensor's values rounded to F16 (floating-point types) or its raw bytes (other types). The
    /// rounding makes f32 and f16 copies of one model agree.
    public static func content(_ tensors: [TensorInfo], digests: [String: String]) -> String {
        var text = ""
        for t in tensors.filter({ isFingerprinted($0.name) }).sorted(by: { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }) {
            text += t.name + "\t" + shapeText(t.shape) + "\t" + (digests[t.name] ?? "") + "\n"
        }
        return hex(SHA256.hash(data: Array(text.utf8)))
    }

    /// Incremental digest of one tensor's values in the fingerprint's form.
    struct TensorDigest {
        var sha = SHA256()
        let dtype: DType
        init(dtype: DType) { self.dtype = dtype }
        mutating func add(_ chunk: UnsafeRawBufferPointer, scratch: OwnedBytes) {
            let castable = dtype.isFloatingPoint && DTypeConversion.canConvert(from: dtype, to: .F16)
            guard castable && dtype != .F16 else { sha.update(bufferPointer: chunk); return }
            let n = chunk.count * 8 / dtype.bitSize
            let dst = UnsafeMutableRawBufferPointer(rebasing: scratch.buffer[0..<(n * 2)])
            DTypeConversion.convert(chunk, from: dtype, into: dst, to: .F16, count: n)
            sha.update(bufferPointer: UnsafeRawBufferPointer(dst))
        }
        mutating func addF16(_ f16: UnsafeRawBufferPointer) { sha.update(bufferPointer: f16) }
        func finish() -> String { hex(sha.finalize()) }
    }

    static func hex<D: Sequence>(_ d: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in d { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }
}

public struct BaseWriteSummary: Sendable {
    public var tensorCount = 0
    public var cast = 0
    public var lossy: [(String, ConversionReport)] = []
    public var layerTableFingerprint = ""
    public var contentFingerprint = ""
}

extension BaseConverter {
    /// Writes `plan` as a base file, casting floating-point weights to `dtype` when given, streaming
    /// one tensor at a time (peak memory ≈ one chunk, not one model) and computing fingerprints on the way.
    public static func write(_ plan: BasePlan, to path: String, dtype: DType?, sync: Bool = true,
                             progress: ((Int, Int) -> Void)? = nil) throws(TensorFileError) -> BaseWriteSummary {
        final class State: @unchecked Sendable {
            var digests: [String: String] = [:]
            var lossy: [(String, ConversionReport)] = []
        }
        let state = State()
        var summary = BaseWriteSummary()
        var sources: [TensorSource] = []
        var outInfos: [TensorInfo] = []
        let chunkElements = 1 << 18
        for p in plan.tensors {
            let from = p.info.dtype
            var info = p.info
            if p.isWeight, let d = dtype, from.isFloatingPoint, DTypeConversion.canConvert(from: from, to: d) { info.dtype = d }
            if info.dtype != from { summary.cast += 1 }
            outInfos.append(info)
            let fingerprinted = p.isWeight && Fingerprint.isFingerprinted(info.name)
            let target = info
            var source = TensorSource(info: target) { (consume) throws(TensorFileError) in
                let bytes = try p.fetch()
                guard bytes.count == p.info.byteCount else {
                    throw TensorFileError(file: path, tensor: target.name, .sizeMismatch(expected: UInt64(p.info.byteCount), actual: UInt64(bytes.count)))
                }
                var digest = Fingerprint.TensorDigest(dtype: from)
                let n = p.info.elementCount
                let step = from.isSubByte ? max(n, 1) : chunkElements
                let hashScratch = OwnedBytes(count: fingerprinted ? min(n, step) * 2 : 0)
                let castScratch = OwnedBytes(count: target.dtype != from ? min(n, step) * target.dtype.byteSize : 0)
                var report = ConversionReport()
                var i = 0
                repeat {
                    let m = min(step, n - i)
                    let lo = i * from.bitSize / 8, hi = (i + m) * from.bitSize / 8
                    let chunk = UnsafeRawBufferPointer(rebasing: bytes.bytes[lo..<hi])
                    if target.dtype == from {
                        if fingerprinted { digest.add(chunk, scratch: hashScratch) }
                        try consume(chunk)
                    } else {
                        let dst = UnsafeMutableRawBufferPointer(rebasing: castScratch.buffer[0..<(m * target.dtype.byteSize)])
                        report.add(DTypeConversion.convert(chunk, from: from, into: dst, to: target.dtype, count: m))
                        if fingerprinted {
                            // A cast to F16 already is the fingerprint's form: hash it instead of casting twice.
                            if target.dtype == .F16 { digest.addF16(UnsafeRawBufferPointer(dst)) } else { digest.add(chunk, scratch: hashScratch) }
                        }
                        try consume(UnsafeRawBufferPointer(dst))
                    }
                    i += m
                } while i < n
                withExtendedLifetime(bytes.owner) {}
                bytes.releasePages()
                if fingerprinted { state.digests[target.name] = digest.finish() }
                if !report.isClean { state.lossy.append((target.name, report)) }
            }
            source.encodingHint = p.encodingHint
            sources.append(source)
        }
        let layerTable = Fingerprint.layerTable(outInfos)
        let carried = plan.metadata["fingerprints"]?["content"]?.stringValue
        let placeholder = String(repeating: "0", count: 64)
        func metadata(content: String) -> JSONValue {
            plan.metadata.setting("fingerprints", .object([("layer_table", .string(layerTable)), ("content", .string(content))]))
        }
        var content = carried ?? placeholder
        try LidbWriter.write(to: path, kind: "base", metadata: metadata(content: content), tensors: sources,
                             options: .init(sync: sync), progress: progress) {
            if carried == nil { content = Fingerprint.content(outInfos, digests: state.digests) }
            return metadata(content: content)
        }
        summary.tensorCount = sources.count
        summary.lossy = state.lossy
        summary.layerTableFingerprint = layerTable
        summary.contentFingerprint = content
        return summary
    }
}
