/// A read-only index of the entries of a zip archive held in memory (a mapped file), as PyTorch's
/// `torch.save` writes it: every entry *stored* (method 0), so entry data can be used in place.
///
/// Validation (see `spec/torch-checkpoints.md`): the end-of-central-directory record ends the file
/// exactly (its comment reaches the last byte); ZIP64 records are followed when the locator is
/// present; single-disk archives only; the central directory lies inside the file and before the
/// end records; a bounded number of entries and name lengths; names are UTF-8 and unique; only
/// stored, unencrypted entries (anything compressed is refused, naming the entry — which also
/// makes zip bombs impossible); compressed size equals uncompressed size; each local header
/// matches its central entry's name and method; entry data lies inside the file, before the
/// central directory, and no two entries (local header + data) overlap. All arithmetic is checked.
public struct ZipArchive: Sendable {
    public struct Entry: Equatable, Sendable {
        public var name: String
        /// Offset of the entry's data in the archive bytes.
        public var dataOffset: Int
        public var size: Int
        /// CRC-32 recorded in the central directory.
        public var crc32: UInt32
        public var localHeaderOffset: Int
        public var range: Range<Int> { dataOffset..<(dataOffset + size) }
    }

    public static let maxEntries = 1_000_000
    public static let maxNameLength = 4096

    /// Entries in central-directory order.
    public let entries: [Entry]
    private let index: [String: Int]

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    /// True when `bytes` begin with a zip local-file-header signature.
    public static func hasSignature(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x50 && bytes[1] == 0x4B && bytes[2] == 0x03 && bytes[3] == 0x04
    }

    public init(bytes: UnsafeRawBufferPointer, file: String) throws(TensorFileError) {
        func bad(_ m: String) -> TensorFileError { TensorFileError(file: file, .zipMalformed(m)) }
        let size = bytes.count
        func u16(_ o: Int) -> Int { Int(bytes.loadUnaligned(fromByteOffset: o, as: UInt16.self).littleEndian) }
        func u32(_ o: Int) -> UInt32 { bytes.loadUnaligned(fromByteOffset: o, as: UInt32.self).littleEndian }
        func u64(_ o: Int) -> UInt64 { bytes.loadUnaligned(fromByteOffset: o, as: UInt64.self).littleEndian }
        func fits(_ offset: Int, _ length: Int) -> Bool {
            offset >= 0 && length >= 0 && offset <= size && length <= size - offset
        }

        // End of central directory: 22 bytes plus a comment that must reach the end of the file.
        guard size >= 22 else { throw bad("no end-of-central-directory record (file has \(size) bytes)") }
        var eocd = -1
        var i = size - 22
        let lowest = max(0, size - 22 - 0xFFFF)
        while i >= lowest {
            if u32(i) == 0x0605_4B50 && i + 22 + u16(i + 20) == size { eocd = i; break }
            i -= 1
        }
        guard eocd >= 0 else { throw bad("no end-of-central-directory record (truncated or not a zip file)") }
        var diskNumber = UInt64(u16(eocd + 4))
        var cdDisk = UInt64(u16(eocd + 6))
        var entriesOnDisk = UInt64(u16(eocd + 8))
        var entryCount = UInt64(u16(eocd + 10))
        var cdSize = UInt64(u32(eocd + 12))
        var cdOffset = UInt64(u32(eocd + 16))
        var recordsStart = eocd  // the central directory must end before the end records

        // ZIP64: a locator right before the end record points at the ZIP64 end record.
        if eocd >= 20 && u32(eocd - 20) == 0x0706_4B50 {
            let locator = eocd - 20
            guard u32(locator + 4) == 0, u32(locator + 16) <= 1 else { throw bad("multi-disk archives are not supported") }
            let z = u64(locator + 8)
            guard z <= UInt64(locator), fits(Int(z), 56), Int(z) + 56 <= locator else {
                throw bad("ZIP64 end record offset \(z) is outside the file")
            }
            let r = Int(z)
            guard u32(r) == 0x0606_4B50 else { throw bad("no ZIP64 end record at offset \(r)") }
            let recordSize = u64(r + 4)
            guard recordSize >= 44, recordSize <= UInt64(locator - r - 12) else { throw bad("invalid ZIP64 end record size \(recordSize)") }
            diskNumber = UInt64(u32(r + 16))
            cdDisk = UInt64(u32(r + 20))
            entriesOnDisk = u64(r + 24)
            entryCount = u64(r + 32)
            cdSize = u64(r + 40)
            cdOffset = u64(r + 48)
            recordsStart = r
        }
        guard diskNumber == 0, cdDisk == 0, entriesOnDisk == entryCount else { throw bad("multi-disk archives are not supported") }
        guard entryCount <= UInt64(Self.maxEntries) else {
            throw TensorFileError(file: file, .limitExceeded(what: "number of zip entries (\(entryCount))", limit: UInt64(Self.maxEntries)))
        }
        guard cdOffset <= UInt64(recordsStart), cdSize <= UInt64(recordsStart) - cdOffset else {
            throw bad("central directory [\(cdOffset), +\(cdSize)) is not inside the file before the end record")
        }
        guard entryCount.multipliedReportingOverflow(by: 46).partialValue <= cdSize else {
            throw bad("central directory of \(cdSize) bytes cannot hold \(entryCount) entries")
        }
        let cdStart = Int(cdOffset)
        let cdEnd = cdStart + Int(cdSize)

        var entries: [Entry] = []
        entries.reserveCapacity(Int(entryCount))
        var index: [String: Int] = [:]
        var p = cdStart
        for _ in 0..<Int(entryCount) {
            guard p + 46 <= cdEnd else { throw bad("central directory entry at offset \(p) runs past the directory") }
            guard u32(p) == 0x0201_4B50 else { throw bad("bad central directory entry signature at offset \(p)") }
            let flags = u16(p + 8)
            let method = u16(p + 10)
            let crc = u32(p + 16)
            var csize = UInt64(u32(p + 20))
            var usize = UInt64(u32(p + 24))
            let nameLength = u16(p + 28)
            let extraLength = u16(p + 30)
            let commentLength = u16(p + 32)
            let startDisk = u16(p + 34)
            var localOffset = UInt64(u32(p + 42))
            let variable = nameLength + extraLength + commentLength
            guard p + 46 + variable <= cdEnd else { throw bad("central directory entry at offset \(p) runs past the directory") }
            guard nameLength > 0, nameLength <= Self.maxNameLength else {
                throw bad("entry name length \(nameLength) at offset \(p) is not in 1...\(Self.maxNameLength)")
            }
            let nameBytes = UnsafeRawBufferPointer(rebasing: bytes[(p + 46)..<(p + 46 + nameLength)])
            if firstInvalidUTF8(nameBytes) != nil { throw bad("entry name at offset \(p) is not UTF-8") }
            let name = String(decoding: nameBytes, as: UTF8.self)
            func badEntry(_ m: String) -> TensorFileError { TensorFileError(file: file, .zipMalformed("entry '\(name.debugEscaped)': \(m)")) }
            guard flags & 0x41 == 0 else { throw badEntry("encrypted entries are not supported") }
            guard method == 0 else { throw TensorFileError(file: file, .zipEntryCompressed(entry: name, method: UInt16(method))) }

            // ZIP64 extended information: the 64-bit values of the fields set to 0xFFFFFFFF, in order.
            let needU = usize == 0xFFFF_FFFF, needC = csize == 0xFFFF_FFFF, needO = localOffset == 0xFFFF_FFFF
            if needU || needC || needO || startDisk == 0xFFFF {
                var e = p + 46 + nameLength
                let extraEnd = e + extraLength
                var found = false
                while e + 4 <= extraEnd {
                    let id = u16(e), len = u16(e + 2)
                    guard e + 4 + len <= extraEnd else { throw badEntry("extra field runs past its entry") }
                    if id == 0x0001 {
                        var q = e + 4
                        let end = q + len
                        func next() throws(TensorFileError) -> UInt64 {
                            guard q + 8 <= end else { throw badEntry("ZIP64 extra field is too short") }
                            defer { q += 8 }
                            return u64(q)
                        }
                        if needU { usize = try next() }
                        if needC { csize = try next() }
                        if needO { localOffset = try next() }
                        found = true
                        break
                    }
                    e += 4 + len
                }
                guard found else { throw badEntry("ZIP64 sizes are missing their extra field") }
            }
            guard startDisk == 0 || startDisk == 0xFFFF else { throw bad("multi-disk archives are not supported") }
            guard csize == usize else { throw badEntry("stored entry has compressed size \(csize) but size \(usize)") }

            // Local header: name and method must match; the data follows its name and extra field.
            guard localOffset <= UInt64(cdStart), Int(localOffset) + 30 <= cdStart else {
                throw badEntry("local header offset \(localOffset) is not before the central directory")
            }
            let l = Int(localOffset)
            guard u32(l) == 0x0403_4B50 else { throw badEntry("bad local header signature at offset \(l)") }
            guard u16(l + 8) == method else { throw badEntry("local header method differs from the central directory") }
            let localName = u16(l + 26), localExtra = u16(l + 28)
            let dataOffset = l + 30 + localName + localExtra
            guard localName == nameLength, dataOffset <= cdStart,
                  memcmpEqual(bytes, l + 30, p + 46, nameLength) else {
                throw badEntry("local header at offset \(l) does not match the central directory")
            }
            guard usize <= UInt64(cdStart - dataOffset) else {
                throw badEntry("data [\(dataOffset), +\(usize)) runs into the central directory at \(cdStart) or past the end of the file")
            }
            if index[name] != nil { throw TensorFileError(file: file, .zipDuplicateEntry(name)) }
            index[name] = entries.count
            entries.append(Entry(name: name, dataOffset: dataOffset, size: Int(usize), crc32: crc, localHeaderOffset: l))
            p += 46 + variable
        }

        // No two entries may share bytes (overlapping entries are a zip-bomb and confusion trick).
        let order = entries.indices.sorted { entries[$0].localHeaderOffset < entries[$1].localHeaderOffset }
        var previousEnd = 0
        var previousName = ""
        for k in order {
            let e = entries[k]
            guard e.localHeaderOffset >= previousEnd else {
                throw bad("entries '\(previousName.debugEscaped)' and '\(e.name.debugEscaped)' overlap")
            }
            previousEnd = e.dataOffset + e.size
            previousName = e.name
        }
        self.entries = entries
        self.index = index
    }

    /// The bytes of `entry` within the archive bytes.
    public func data(_ entry: Entry, in bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[entry.range])
    }
}

private func memcmpEqual(_ b: UnsafeRawBufferPointer, _ x: Int, _ y: Int, _ n: Int) -> Bool {
    guard x + n <= b.count, y + n <= b.count else { return false }
    for k in 0..<n where b[x + k] != b[y + k] { return false }
    return true
}

/// CRC-32 (IEEE 802.3, the zip checksum).
func zipCRC32(_ data: UnsafeRawBufferPointer) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in data {
        crc = zipCRCTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
    }
    return ~crc
}

private let zipCRCTable: [UInt32] = (0..<256).map { n -> UInt32 in
    var c = UInt32(n)
    for _ in 0..<8 { c = (c & 1) != 0 ? (0xEDB8_8320 ^ (c >> 1)) : (c >> 1) }
    return c
}
