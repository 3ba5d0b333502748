import TensorFile

/// Makes a `hypernetwork` file from a weights file (safetensors, .pt, …) and its `hyper.json`:
/// both are checked against each other before anything is written.
public enum HypernetworkConverter {
    public struct Summary: Sendable {
        public var tensorCount: Int
        public var layers: Int
    }

    public static func convert(weights: String, config configPath: String, to output: String, dtype: DType? = nil,
                               zstd: Bool = false) throws(HypernetworkError) -> Summary {
        func wrap<T>(_ body: () throws(TensorFileError) -> T) throws(HypernetworkError) -> T {
            do throws(TensorFileError) { return try body() } catch { throw HypernetworkError(file: error.file, .file(error)) }
        }
        let json = try wrap { () throws(TensorFileError) in
            let map = try MappedFile(path: configPath)
            return try JSONValue.parse(Array(map.bytes), file: configPath)
        }
        let config = try HypernetworkConfig(json: json, file: configPath)
        let src = try wrap { () throws(TensorFileError) in try openTensorCollection(weights) }
        try config.check(tensors: src.tensors, file: weights)
        var sources: [TensorSource] = []
        for t in src.tensors {
            var info = t
            if let dtype, t.dtype != dtype { info.dtype = dtype }
            let name = t.name, from = t.dtype, target = info
            sources.append(TensorSource(info: target) { (consume) throws(TensorFileError) in
                let bytes = try src.tensorBytes(name)
                try TensorSource.converting(target, bytes, from: from, file: weights).produce(consume)
                bytes.releasePages()
            })
        }
        try wrap { () throws(TensorFileError) in
            try LidbWriter.write(to: output, kind: "hypernetwork", metadata: json, tensors: sources,
                                 options: .init(encoding: zstd ? .zstdIfSmaller(level: 19) : .raw, compressHeader: zstd))
        }
        return Summary(tensorCount: sources.count, layers: config.layers.count)
    }
}
