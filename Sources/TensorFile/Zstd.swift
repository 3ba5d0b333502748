import CZstd

/// One-shot zstd frames with exact sizes: decompression refuses any frame whose declared content
/// size differs from what the caller expects, so a hostile frame cannot make us allocate more.
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

    /// Decompresses a single frame of exactly `expectedSize` bytes into `dst` (of that size).
    static func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) throws(TensorFileError.Problem) {
        let expectedSize = dst.count
        let declared = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        if declared == ZSTD_CONTENTSIZE_ERROR { throw .decompressionFailed("not a zstd frame") }
        if declared == ZSTD_CONTENTSIZE_UNKNOWN { throw .decompressionFailed("frame does not declare its content size") }
        guard declared == UInt64(expectedSize) else {
            throw .decompressionFailed("frame declares \(declared) bytes, expected \(expectedSize)")
        }
        let frameSize = ZSTD_findFrameCompressedSize(src.baseAddress, src.count)
        if ZSTD_isError(frameSize) != 0 { throw .decompressionFailed(String(cString: ZSTD_getErrorName(frameSize))) }
        guard frameSize == src.count else { throw .decompressionFailed("data after the zstd frame") }
        let n = ZSTD_decompress(dst.baseAddress, dst.count, src.baseAddress, src.count)
        if ZSTD_isError(n) != 0 { throw .decompressionFailed(String(cString: ZSTD_getErrorName(n))) }
        guard n == expectedSize else { throw .decompressionFailed("frame decoded to \(n) bytes, expected \(expectedSize)") }
    }
}
