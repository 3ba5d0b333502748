import CZstd

/// One-shot zstd frames with exact sizes. Every frame must declare its content size, which must
/// equal what the caller expects; it is checked before any memory is allocated for the output.
enum Zstd {
    static func compress(_ src: UnsafeRawBufferPointer, level: Int32) throws(TensorFileError.Problem) -> [UInt8] {
        let bound = ZSTD_compressBound(src.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { dst in
            ZSTD_compress(dst.baseAddress, bound, src.baseAddress, src.count, level)
        }
        if ZSTD_isError(n) != 0 { throw .compressionFailed(String(cString: ZSTD_getErrorName(n))) }
        out.removeSubrange(n...)
        return out
    }

    /// Checks that `src` is exactly one frame declaring `expectedSize` bytes.
    static func checkFrame(_ src: UnsafeRawBufferPointer, expectedSize: Int) throws(TensorFileError.Problem) {
        let declared = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        if declared == ZSTD_CONTENTSIZE_ERROR { throw .decompressionFailed("not a zstd frame") }
        if declared == ZSTD_CONTENTSIZE_UNKNOWN { throw .decompressionFailed("frame does not declare its content size") }
        guard declared == UInt64(expectedSize) else {
            throw .decompressionFailed("frame declares \(declared) bytes, expected \(expectedSize)")
        }
        let frameSize = ZSTD_findFrameCompressedSize(src.baseAddress, src.count)
        if ZSTD_isError(frameSize) != 0 { throw .decompressionFailed(String(cString: ZSTD_getErrorName(frameSize))) }
        guard frameSize == src.count else { throw .decompressionFailed("data after the zstd frame") }
    }

    /// Decodes a single frame of exactly `expectedSize` bytes into new memory.
    static func decompress(_ src: UnsafeRawBufferPointer, expectedSize: Int) throws(TensorFileError.Problem) -> OwnedBytes {
        try checkFrame(src, expectedSize: expectedSize)
        let out = OwnedBytes(count: expectedSize)
        let n = ZSTD_decompress(out.buffer.baseAddress, expectedSize, src.baseAddress, src.count)
        if ZSTD_isError(n) != 0 { throw .decompressionFailed(String(cString: ZSTD_getErrorName(n))) }
        guard n == expectedSize else { throw .decompressionFailed("frame decoded to \(n) bytes, expected \(expectedSize)") }
        return out
    }

    /// Decodes a frame through a small reused buffer, only to check that it decodes to exactly
    /// `expectedSize` bytes (for `verify`, without allocating the whole tensor).
    static func validate(_ src: UnsafeRawBufferPointer, expectedSize: Int) throws(TensorFileError.Problem) {
        try checkFrame(src, expectedSize: expectedSize)
        guard let ds = ZSTD_createDStream() else { throw .decompressionFailed("out of memory") }
        defer { ZSTD_freeDStream(ds) }
        let chunk = 1 << 17
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buf.deallocate() }
        var input = ZSTD_inBuffer(src: src.baseAddress, size: src.count, pos: 0)
        var produced = 0
        while true {
            var output = ZSTD_outBuffer(dst: buf, size: chunk, pos: 0)
            let r = ZSTD_decompressStream(ds, &output, &input)
            if ZSTD_isError(r) != 0 { throw .decompressionFailed(String(cString: ZSTD_getErrorName(r))) }
            produced += output.pos
            if produced > expectedSize { throw .decompressionFailed("frame decodes to more than \(expectedSize) bytes") }
            if r == 0 { break }
            if output.pos == 0 && input.pos == input.size { throw .decompressionFailed("frame is truncated") }
        }
        guard produced == expectedSize else { throw .decompressionFailed("frame decoded to \(produced) bytes, expected \(expectedSize)") }
    }
}
