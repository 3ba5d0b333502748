/// Output of `convertCollection`.
public struct ConversionSummary: Sendable {
    public var tensorCount = 0
    public var converted = 0
    /// Tensors whose cast produced infinities from finite values, or NaNs.
    public var lossy: [(String, ConversionReport)] = []
}

public enum OutputFormat: String, Sendable {
    case lidb, safetensors

    public init(path: String) throws(TensorFileError) {
        if path.hasSuffix(".lidb") { self = .lidb } else if path.hasSuffix(".safetensors") { self = .safetensors } else {
            throw TensorFileError(file: path, .unsupportedFormat("output must end in .lidb or .safetensors"))
        }
    }
}

/// Metadata as safetensors' string map: strings stay, other JSON values become their JSON text.
public func safetensorsMetadata(from json: JSONValue) -> [(String, String)]? {
    guard let pairs = json.objectValue, !pairs.isEmpty else { return nil }
    return pairs.map { ($0.0, $0.1.stringValue ?? $0.1.serializedString) }
}

/// Copies every tensor of `source` into a new file at `path` (format from the extension),
/// casting floating-point tensors to `dtype` when given. Streams tensor by tensor; tensors that
/// pass through unchanged and lie verbatim in the input are copied by the kernel. `sync: false`
/// skips the fsync before the output is renamed into place (see `AtomicFileWriter`).
public func convertCollection(_ source: TensorCollection, to path: String, dtype: DType?, kind: String = "tensors",
                              zstd: Bool = false, sync: Bool = true, progress: ((Int, Int) -> Void)? = nil) throws(TensorFileError) -> ConversionSummary {
    let format = try OutputFormat(path: path)
    if !LidbFormat.knownKinds.contains(kind) { throw TensorFileError(file: path, .unknownKind(kind)) }
    var summary = ConversionSummary()
    final class Reports: @unchecked Sendable { var items: [(String, ConversionReport)] = [] }
    let reports = Reports()
    var sources: [TensorSource] = []
    for t in source.tensors {
        // Only floating-point tensors are cast; integers and packed sub-byte types are kept.
        let target = (dtype != nil && t.dtype.isFloatingPoint && DTypeConversion.canConvert(from: t.dtype, to: dtype!)) ? dtype! : t.dtype
        var info = t
        info.dtype = target
        let name = t.name
        let from = t.dtype
        guard from == target || DTypeConversion.canConvert(from: from, to: target) else {
            throw TensorFileError(file: source.path, tensor: name, .unsupportedConversion(from: from.name, to: target.name))
        }
        // Streamed chunk by chunk with bounded reads; a .lidb tensor's checksum is checked over the
        // same chunks, and a mismatch fails the write (no output) naming the tensor.
        var tensorSource = TensorSource(info: info) { (consume) throws(TensorFileError) in
            if from == target {
                try source.streamTensor(name, consume)
                return
            }
            let step = 1 << 18
            let scratch = OwnedBytes(count: min(info.elementCount, step) * target.byteSize)
            var report = ConversionReport()
            try source.streamTensor(name) { (chunk) throws(TensorFileError) in
                let n = chunk.count / from.byteSize
                var i = 0
                while i < n {
                    let m = min(step, n - i)
                    let src = UnsafeRawBufferPointer(rebasing: chunk[(i * from.byteSize)..<((i + m) * from.byteSize)])
                    let dst = UnsafeMutableRawBufferPointer(rebasing: scratch.buffer[0..<(m * target.byteSize)])
                    report.add(DTypeConversion.convert(src, from: from, into: dst, to: target, count: m))
                    try consume(UnsafeRawBufferPointer(dst))
                    i += m
                }
            }
            if !report.isClean { reports.items.append((name, report)) }
        }
        if from == target, let v = source.verbatimRange(name), v.range.count == info.byteCount { tensorSource.verbatim = v }
        sources.append(tensorSource)
        if target != t.dtype { summary.converted += 1 }
    }
    summary.tensorCount = sources.count
    switch format {
    case .safetensors:
        try SafetensorsWriter.write(to: path, tensors: sources, metadata: safetensorsMetadata(from: source.metadataJSON), sync: sync, progress: progress)
    case .lidb:
        let sourceKind = (source as? LidbFile)?.kind
        let k = (kind == "tensors" && sourceKind != nil) ? sourceKind! : kind
        try LidbWriter.write(to: path, kind: k, metadata: source.metadataJSON, tensors: sources,
                             options: .init(encoding: zstd ? .zstdIfSmaller(level: 19) : .raw, compressHeader: zstd, sync: sync),
                             progress: progress)
    }
    summary.lossy = reports.items
    return summary
}
