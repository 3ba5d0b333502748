import CLidbSupport

/// CRC-32C (Castagnoli, as in iSCSI, ext4 and Btrfs): detects every single-bit error and every
/// burst of up to 32 bits, and runs at memory speed on CPUs with the SSE4.2 `crc32` instruction.
public enum CRC32C {
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return lidb_crc32c(crc, base, bytes.count)
    }

    public static func checksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: crc) }
    }

    /// The table-driven path, whatever the CPU supports (for tests of the fast path).
    public static func portableChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return lidb_crc32c_portable(crc, base, bytes.count)
    }

    public static var usesHardware: Bool { lidb_crc32c_is_hardware() != 0 }
}
