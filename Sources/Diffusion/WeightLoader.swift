import Checkpoint
import Compute
import Dispatch
import TensorFile

/// Weights of a base, read as f32 on demand (each tensor converted once from the base's dtype).
public final class WeightLoader {
    public let base: BaseModel
    /// Tensors of at most this many bytes are read with bounded reads rather than through the map.
    public let readBytes: Int
    public init(base: BaseModel, readBytes: Int = 1 << 20) {
        self.base = base
        self.readBytes = readBytes
    }

    public func f32(_ name: String) throws(TensorFileError) -> [Float] {
        guard let e = base.file.entry(name) else { throw TensorFileError(file: base.file.path, tensor: name, .tensorNotFound) }
        guard DTypeConversion.canConvert(from: e.info.dtype, to: .F32) else {
            throw TensorFileError(file: base.file.path, tensor: name, .unsupportedConversion(from: e.info.dtype.name, to: "F32"))
        }
        let n = e.info.elementCount
        if e.info.byteCount <= readBytes {
            // Read, not mapped: the kernel maps whole page-cache folios around a small tensor's
            // bytes (hundreds of KiB each, across a UNet's few hundred biases and norms), which
            // would stay resident on top of the weights until the load ends.
            let size = e.info.dtype.byteSize
            var out = [Float](repeating: 0, count: n)
            var at = 0
            try out.withUnsafeMutableBufferPointer { (buf) throws(TensorFileError) in
                try base.file.streamTensor(name) { (chunk) throws(TensorFileError) in
                    let m = min(chunk.count / size, n - at)
                    DTypeConversion.convert(chunk, from: e.info.dtype, into: UnsafeMutableRawBufferPointer(start: buf.baseAddress! + at, count: m * 4),
                                            to: .F32, count: m)
                    at += m
                }
            }
            return out
        }
        let b = try base.file.tensorBytes(name)
        let out = [Float](unsafeUninitializedCapacity: n) { buf, count in
            _ = DTypeConversion.convert(b.bytes, from: e.info.dtype, into: UnsafeMutableRawBufferPointer(buf), to: .F32, count: n)
            count = n
        }
        b.releasePages()  // the f32 copy is what stays resident, not the mapped file too
        return out
    }

    public func shape(_ name: String) -> [Int]? { base.file.entry(name)?.info.shape }

    /// The F16 weight matrices and kernels under `prefix` (`….weight` tensors of two or more
    /// dimensions: `Linear` and `Conv2d` weights) with at least `minimumCount` values, as F16 bit
    /// patterns keyed without the prefix (copied out of the mapped file, whose pages are then released).
    func halfWeights(prefix: String, minimumCount: Int) throws(TensorFileError) -> [String: [UInt16]] {
        var out: [String: [UInt16]] = [:]
        for e in base.file.tensors where Self.keptHalf(e, prefix: prefix, minimumCount: minimumCount) {
            out[String(e.name.dropFirst(prefix.count))] = try sixteenBitPatterns(e)
        }
        return out
    }

    /// A 16-bit tensor's bit patterns, copied out of the mapped file (whose pages are then released).
    private func sixteenBitPatterns(_ e: TensorInfo) throws(TensorFileError) -> [UInt16] {
        let b = try base.file.tensorBytes(e.name)
        let n = e.elementCount
        defer { b.releasePages() }
        return [UInt16](unsafeUninitializedCapacity: n) { buf, count in
            UnsafeMutableRawBufferPointer(buf).copyMemory(from: UnsafeRawBufferPointer(rebasing: b.bytes[0..<(2 * n)]))
            count = n
        }
    }

    /// Large floating-point weights under `prefix` as bfloat16 bit patterns, keyed without the
    /// prefix: a BF16 base's copied as they are, others converted to f32 and rounded (nearest
    /// even), one tensor at a time.
    func bfloat16Weights(prefix: String, minimumCount: Int) throws(TensorFileError) -> [String: WeightValues] {
        var out: [String: WeightValues] = [:]
        for e in base.file.tensors where Self.keptBFloat16(e, prefix: prefix, minimumCount: minimumCount) {
            let key = String(e.name.dropFirst(prefix.count))
            if e.dtype == .BF16 {
                out[key] = .bf16(try sixteenBitPatterns(e))
            } else {
                out[key] = try roundedBFloat16(e)
            }
        }
        return out
    }

    /// A floating-point tensor rounded to bfloat16 straight from the mapped file, a chunk at a
    /// time (no binary32 copy of the tensor, whose freed pages would stay resident under the
    /// weights kept); the mapped pages are then released.
    private func roundedBFloat16(_ e: TensorInfo) throws(TensorFileError) -> WeightValues {
        guard DTypeConversion.canConvert(from: e.dtype, to: .F32), e.dtype.byteSize > 0 else {
            throw TensorFileError(file: base.file.path, tensor: e.name, .unsupportedConversion(from: e.dtype.name, to: "BF16"))
        }
        let b = try base.file.tensorBytes(e.name)
        defer { b.releasePages() }
        let size = e.dtype.byteSize, dtype = e.dtype
        return WeightValues.roundedToBFloat16(count: e.elementCount) { r, dst in
            let src = UnsafeRawBufferPointer(rebasing: b.bytes[(r.lowerBound * size)..<(r.upperBound * size)])
            DTypeConversion.convert(src, from: dtype, into: UnsafeMutableRawBufferPointer(start: dst, count: r.count * 4), to: .F32, count: r.count)
        }
    }

    /// Whether `bfloat16Weights` keeps a tensor as BF16 (`MemoryEstimate` counts the same ones).
    static func keptBFloat16(_ e: TensorInfo, prefix: String, minimumCount: Int) -> Bool {
        isLargeMatrix(e, prefix: prefix, minimumCount: minimumCount) && e.dtype.isFloatingPoint
    }

    /// Whether `halfWeights` keeps a tensor as F16 (`MemoryEstimate` counts the same ones).
    static func keptHalf(_ e: TensorInfo, prefix: String, minimumCount: Int) -> Bool {
        isLargeMatrix(e, prefix: prefix, minimumCount: minimumCount) && e.dtype == .F16
    }

    /// A `Linear` or `Conv2d` weight (`….weight`, two or more dimensions) under `prefix` with at
    /// least `minimumCount` values.
    private static func isLargeMatrix(_ e: TensorInfo, prefix: String, minimumCount: Int) -> Bool {
        e.name.hasPrefix(prefix) && e.name.hasSuffix(".weight") && e.shape.count >= 2 && e.elementCount >= minimumCount
    }

    /// The f32 weights of every tensor whose name starts with `prefix`, keyed without it;
    /// converted on all cores (the conversion and the kernel's zeroing of fresh pages dominate a
    /// model's load time). The first failure (in the base's tensor order) is thrown.
    func all(prefix: String, excluding: Set<String> = []) throws(TensorFileError) -> [String: [Float]] {
        let names = base.file.tensors.map(\.name).filter { $0.hasPrefix(prefix) && !excluding.contains(String($0.dropFirst(prefix.count))) }
        let slots = UnsafeMutableBufferPointer<Result<[Float], TensorFileError>?>.allocate(capacity: names.count)
        slots.initialize(repeating: nil)
        defer { slots.deinitialize(); slots.deallocate() }
        let shared = UnsafeSendable(slots)
        let jobs = max(1, min(Parallel.cores, names.count))
        let loader = UnsafeSendable(self)
        DispatchQueue.concurrentPerform(iterations: jobs) { j in
            // Interleaved, so both threads get large and small tensors.
            for i in stride(from: j, to: names.count, by: jobs) {
                let r: Result<[Float], TensorFileError>
                do throws(TensorFileError) { r = .success(try loader.p.f32(names[i])) } catch { r = .failure(error) }
                shared.p[i] = r  // each index written by one thread
            }
        }
        var out: [String: [Float]] = [:]
        for (i, n) in names.enumerated() {
            switch slots[i]! {
            case .success(let v): out[String(n.dropFirst(prefix.count))] = v
            case .failure(let e): throw e
            }
        }
        return out
    }
}

