/// Every failure of the format layer: which file, which tensor (if any), and what is wrong.
///
/// The message is a single line meant for a terminal: `path: tensor 'name': problem`.
public struct TensorFileError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    public var tensor: String?
    public var problem: Problem

    public init(file: String, tensor: String? = nil, _ problem: Problem) {
        self.file = file
        self.tensor = tensor
        self.problem = problem
    }

    public var description: String {
        var s = file + ": "
        if let tensor { s += "tensor '\(tensor.debugEscaped)': " }
        return s + problem.description
    }

    /// What went wrong. Cases are specific so tests (and callers) can tell failures apart.
    public enum Problem: Error, Equatable, Sendable, CustomStringConvertible {
        // I/O
        case io(operation: String, message: String)
        /// An input that is a FIFO, a device, a socket or a folder (refused before it is read).
        case notARegularFile(kind: String)
        /// The file is shorter than when it was opened: another program truncated or rewrote it.
        case fileChanged(openedSize: UInt64, currentSize: UInt64)
        // Outputs (checked before any work, and again when the output is put in place)
        /// The output path exists and is not a regular file (a device, a FIFO, a socket).
        case outputNotRegularFile(kind: String)
        /// The output path names a folder where a file is to be written.
        case outputIsFolder
        /// The output is one of the command's inputs (same file, or the same path).
        case outputIsInput(input: String)
        /// The output's folder does not exist, is not a folder, or cannot be written.
        case outputFolderUnusable(folder: String, reason: String)
        // Framing
        case truncated(needed: UInt64, available: UInt64)
        case headerTooLarge(length: UInt64, limit: UInt64)
        case headerPastEnd(headerEnd: UInt64, fileSize: UInt64)
        case badMagic
        case unsupportedVersion(major: UInt16, minor: UInt16)
        case unknownRequiredFlags(UInt32)
        case nonZeroReserved(offset: UInt64)
        case misalignedDataSection(offset: UInt64)
        case dataSectionMismatch(expectedEnd: UInt64, fileSize: UInt64)
        // Header text
        case headerNotUTF8(offset: Int)
        case invalidJSON(offset: Int, reason: String)
        case nestingTooDeep(limit: Int)
        case headerNotObject
        case duplicateKey(String)
        case missingField(String)
        case wrongType(field: String, expected: String)
        case metadataNotObject
        case metadataValueNotString(key: String)
        case invalidName(reason: String)
        case limitExceeded(what: String, limit: UInt64)
        // Tensor table
        case unknownDType(String)
        case invalidShape(String)
        case sizeOverflow
        case sizeMismatch(expected: UInt64, actual: UInt64)
        case invalidOffsets(begin: UInt64, end: UInt64)
        case hole(expectedBegin: UInt64, actualBegin: UInt64)
        case overlap(expectedBegin: UInt64, actualBegin: UInt64)
        case outOfRange(end: UInt64, limit: UInt64)
        case bufferNotCovered(dataEnd: UInt64, bufferSize: UInt64)
        case misalignedTensor(offset: UInt64)
        case duplicateTensor
        case unknownEncoding(String)
        case unknownKind(String)
        // Integrity
        case headerChecksumMismatch(stored: UInt32, computed: UInt32)
        case tensorChecksumMismatch(stored: UInt32, computed: UInt32)
        case nonZeroPadding(offset: UInt64)
        case decompressionFailed(String)
        case compressionFailed(String)
        // Access and conversion
        case tensorNotFound
        case unsupportedConversion(from: String, to: String)
        case invalidShardIndex(String)
        case unsupportedFormat(String)
        case invalidArgument(String)
        // PyTorch checkpoints (zip archive + pickle)
        case zipMalformed(String)
        case zipEntryCompressed(entry: String, method: UInt16)
        case zipDuplicateEntry(String)
        case pickleMalformed(offset: Int, reason: String)
        case pickleOpcodeUnsupported(offset: Int, opcode: UInt8)
        case pickleGlobalRefused(String)
        case pickleCallRefused(String)
        case legacyTorchFormat
        case storageOutOfRange(storage: String, needed: UInt64, available: UInt64)
        case torchCheckpoint(String)

        public var description: String {
            switch self {
            case let .io(op, msg): return "cannot \(op): \(msg)"
            case let .notARegularFile(kind): return "is a \(kind), not a regular file"
            case let .fileChanged(opened, now):
                return "the file changed while it was being read (\(opened) bytes when opened, \(now) now): another program truncated or rewrote it"
            case let .outputNotRegularFile(kind):
                return "the output exists and is a \(kind), not a regular file; refusing to replace it"
            case .outputIsFolder: return "the output is a folder; give a file name"
            case let .outputIsInput(input):
                return "the output is the same file as the input '\(input.debugEscaped)'; refusing to overwrite an input"
            case let .outputFolderUnusable(folder, reason): return "cannot write into the folder '\(folder.debugEscaped)': \(reason)"
            case let .truncated(needed, available):
                return "file is truncated: needs \(needed) bytes, has \(available)"
            case let .headerTooLarge(_, limit):
                // The length itself is not printed: in a file of another kind it is just 8 bytes of
                // that file's content, which a message should not echo.
                return "the header length field exceeds the limit of \(limit) bytes (a damaged file, or not one of this format)"
            case let .headerPastEnd(end, size):
                return "header ends at byte \(end), past the end of the file (\(size) bytes)"
            case .badMagic: return "not a lidb file (bad magic bytes)"
            case let .unsupportedVersion(major, minor):
                return "unsupported format version \(major).\(minor) (this reader understands major version 1)"
            case let .unknownRequiredFlags(f): return "unknown required header flags 0x\(String(f, radix: 16))"
            case let .nonZeroReserved(o): return "reserved byte at offset \(o) is not zero"
            case let .misalignedDataSection(o): return "data section offset \(o) is not a multiple of 64"
            case let .dataSectionMismatch(end, size):
                return "data section ends at byte \(end) but the file has \(size) bytes"
            case let .headerNotUTF8(o): return "header is not valid UTF-8 (at byte \(o))"
            case let .invalidJSON(o, reason): return "header is not valid JSON at byte \(o): \(reason)"
            case let .nestingTooDeep(limit): return "header nests deeper than \(limit) levels"
            case .headerNotObject: return "header is not a JSON object"
            case let .duplicateKey(k): return "duplicate key '\(k.debugEscaped)' in a header object"
            case let .missingField(f): return "missing field '\(f)'"
            case let .wrongType(f, e): return "field '\(f)' must be \(e)"
            case .metadataNotObject: return "__metadata__ is not an object"
            case let .metadataValueNotString(k): return "metadata value for '\(k.debugEscaped)' is not a string"
            case let .invalidName(r): return "invalid tensor name: \(r)"
            case let .limitExceeded(what, limit): return "\(what) exceeds the limit of \(limit)"
            case let .unknownDType(d): return "unknown dtype '\(d.debugEscaped)'"
            case let .invalidShape(r): return "invalid shape: \(r)"
            case .sizeOverflow: return "shape size overflows 64 bits"
            case let .sizeMismatch(e, a): return "byte size is \(a) but shape and dtype need \(e)"
            case let .invalidOffsets(b, e): return "invalid data offsets [\(b), \(e)) (end before begin)"
            case let .hole(e, a): return "offsets leave a hole: expected the data to begin at \(e), it begins at \(a)"
            case let .overlap(e, a): return "offsets overlap: expected the data to begin at \(e), it begins at \(a)"
            case let .outOfRange(end, limit): return "data ends at \(end), past the end of the data buffer (\(limit) bytes)"
            case let .bufferNotCovered(end, size):
                return "tensors cover \(end) bytes but the data buffer has \(size) (trailing bytes)"
            case let .misalignedTensor(o): return "data offset \(o) is not a multiple of 64"
            case .duplicateTensor: return "duplicate tensor name"
            case let .unknownEncoding(e): return "unknown encoding '\(e.debugEscaped)'"
            case let .unknownKind(k): return "unknown file kind '\(k.debugEscaped)'"
            case let .headerChecksumMismatch(s, c):
                return "header checksum mismatch (stored \(hex8(s)), computed \(hex8(c))): the header is damaged"
            case let .tensorChecksumMismatch(s, c):
                return "checksum mismatch (stored \(hex8(s)), computed \(hex8(c))): the data is damaged"
            case let .nonZeroPadding(o): return "padding byte at offset \(o) is not zero"
            case let .decompressionFailed(m): return "cannot decompress: \(m)"
            case let .compressionFailed(m): return "cannot compress: \(m)"
            case .tensorNotFound: return "no such tensor"
            case let .unsupportedConversion(f, t): return "cannot convert \(f) to \(t)"
            case let .invalidShardIndex(m): return "invalid shard index: \(m)"
            case let .unsupportedFormat(m): return "unsupported format: \(m)"
            case let .invalidArgument(m): return m
            case let .zipMalformed(m): return "invalid zip archive: \(m)"
            case let .zipEntryCompressed(e, m):
                return "zip entry '\(e.debugEscaped)' is compressed (method \(m)); only stored entries are accepted"
            case let .zipDuplicateEntry(e): return "duplicate zip entry '\(e.debugEscaped)'"
            case let .pickleMalformed(o, r): return "invalid pickle at byte \(o): \(r)"
            case let .pickleOpcodeUnsupported(o, op):
                return "unsupported pickle opcode 0x\(String(op, radix: 16)) at byte \(o)"
            case let .pickleGlobalRefused(g): return "refusing pickle global '\(g.debugEscaped)'"
            case let .pickleCallRefused(m): return "refusing pickle call: \(m)"
            case .legacyTorchFormat: return "legacy (non-zip) PyTorch format is not supported; re-save with torch.save"
            case let .storageOutOfRange(s, n, a):
                return "needs \(n) bytes of storage '\(s.debugEscaped)', which has \(a)"
            case let .torchCheckpoint(m): return "invalid PyTorch checkpoint: \(m)"
            }
        }
    }
}

func hex8(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 8 - s.count) + s
}

extension String {
    /// The string with control characters and quotes escaped, bounded in length, for messages.
    var debugEscaped: String {
        var out = ""
        for (i, u) in unicodeScalars.enumerated() {
            if i >= 200 { out += "…"; break }
            switch u {
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case "'": out += "\\'"
            case "\\": out += "\\\\"
            default:
                if u.value < 0x20 || u.value == 0x7F { out += "\\u{\(String(u.value, radix: 16))}" } else { out.unicodeScalars.append(u) }
            }
        }
        return out
    }
}
