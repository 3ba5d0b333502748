// libFuzzer entry point: the .lidb preamble/header parser, then full verification (checksums,
// padding, bounded zstd decoding) of whatever it accepts. Each input is tried twice: as it is,
// and with its header checksum recomputed, so that mutations also reach the JSON and tensor-table
// validation behind the checksum.
@_cdecl("LLVMFuzzerTestOneInput")
public func lidbFuzzLidb(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    check(bytes)
    guard size >= 64 else { return 0 }
    var copy = Array(bytes)
    let stored = copy.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self)) }
    guard stored <= UInt64(size - 64) else { return 0 }
    let crc = copy.withUnsafeBytes { b -> UInt32 in
        let c = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<48]))
        return CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[64..<(64 + Int(stored))]), continuing: c)
    }
    withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { copy[48 + i] = $0[i] } }
    copy.withUnsafeBytes { check($0) }
    return 0
}

private func check(_ bytes: UnsafeRawBufferPointer) {
    guard let layout = try? LidbLayout.parse(bytes, file: "fuzz.lidb") else { return }
    precondition(Int(layout.dataOffset + layout.dataLength) == bytes.count)
    _ = LidbFile.verify(layout: layout, bytes: bytes, file: "fuzz.lidb")
    for e in layout.entries where e.encoding == .zstd {
        let start = Int(layout.dataOffset + e.offset)
        _ = try? Zstd.validate(UnsafeRawBufferPointer(rebasing: bytes[start..<start + Int(e.length)]), expectedSize: e.info.byteCount)
    }
}
