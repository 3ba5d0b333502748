/// Writes safetensors files the way the reference `safetensors` library does, so the same tensors
/// and metadata give the same bytes: tensors sorted by dtype (descending declaration order of the
/// reference `Dtype` enum) then name (byte order); header `{"__metadata__":{…},"name":{"dtype",
/// "shape","data_offsets"},…}` in that order, compact JSON, padded with spaces so the data starts
/// at a multiple of 8.
public enum SafetensorsWriter {
    /// The header and the tensor order the reference writer would produce.
    public static func plan(_ tensors: [TensorInfo], metadata: [(String, String)]?) -> (header: [UInt8], order: [Int]) {
        let order = tensors.indices.sorted { a, b in
            let x = tensors[a], y = tensors[b]
            if x.dtype.safetensorsOrder != y.dtype.safetensorsOrder { return x.dtype.safetensorsOrder > y.dtype.safetensorsOrder }
            return x.name.utf8.lexicographicallyPrecedes(y.name.utf8)
        }
        var pairs: [(String, JSONValue)] = []
        if let metadata { pairs.append(("__metadata__", .object(metadata.map { ($0.0, .string($0.1)) }))) }
        var offset = 0
        for i in order {
            let t = tensors[i]
            let end = offset + t.byteCount
            pairs.append((t.name, .object([
                ("dtype", .string(t.dtype.name)),
                ("shape", .array(t.shape.map { .int($0) })),
                ("data_offsets", .array([.int(offset), .int(end)])),
            ])))
            offset = end
        }
        var header = JSONValue.object(pairs).serialized()
        let pad = (8 - header.count % 8) % 8
        header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: pad))
        return (header, order)
    }

    /// Writes `tensors` to `path` atomically, streaming each tensor's bytes from its source.
    /// Tensors whose bytes lie verbatim in a file (`TensorSource.verbatim`) are copied by the
    /// kernel; a checksum their file declares is checked over the same bytes on another thread,
    /// and a mismatch fails the write (no output). `sync: false` skips the fsync (see
    /// `AtomicFileWriter`).
    public static func write(to path: String, tensors: [TensorSource], metadata: [(String, String)]?,
                             sync: Bool = true, progress: ((Int, Int) -> Void)? = nil) throws(TensorFileError) {
        var seen = Set<String>()
        for t in tensors where !seen.insert(t.info.name).inserted {
            throw TensorFileError(file: path, tensor: t.info.name, .duplicateTensor)
        }
        if let metadata {
            var keys = Set<String>()
            for (k, _) in metadata where !keys.insert(k).inserted { throw TensorFileError(file: path, .duplicateKey(k)) }
        }
        if seen.contains("__metadata__") { throw TensorFileError(file: path, tensor: "__metadata__", .invalidName(reason: "reserved name")) }
        let (header, order) = plan(tensors.map(\.info), metadata: metadata)
        let out = try AtomicFileWriter(path: path, sync: sync)
        // Only checksums a source declares need computing here (a .lidb source's).
        let checks = BackgroundChecksums(tensors.map { $0.verbatim?.crc32c != nil ? $0.verbatim : nil })
        var prefix = [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { for i in 0..<8 { prefix[i] = $0[i] } }
        try out.write(prefix)
        try out.write(header)
        for (k, i) in order.enumerated() {
            let t = tensors[i]
            if let v = t.verbatim {
                guard v.range.count == t.info.byteCount else {
                    throw TensorFileError(file: path, tensor: t.info.name, .sizeMismatch(expected: UInt64(t.info.byteCount), actual: UInt64(v.range.count)))
                }
                try out.append(from: v.file, range: v.range)
                progress?(k + 1, order.count)
                continue
            }
            var written = 0
            try t.produce { (chunk) throws(TensorFileError) in
                written += chunk.count
                try out.write(chunk)
            }
            guard written == t.info.byteCount else {
                throw TensorFileError(file: path, tensor: t.info.name, .sizeMismatch(expected: UInt64(t.info.byteCount), actual: UInt64(written)))
            }
            progress?(k + 1, order.count)
        }
        let crcs = try checks.wait()
        for (i, t) in tensors.enumerated() {
            if let v = t.verbatim, let declared = v.crc32c, let crc = crcs[i], crc != declared {
                throw TensorFileError(file: v.file.path, tensor: t.info.name, .tensorChecksumMismatch(stored: declared, computed: crc))
            }
        }
        try out.commit()
    }
}
