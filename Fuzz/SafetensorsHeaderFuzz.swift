// libFuzzer entry point: the safetensors header parser and validator on arbitrary bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func lidbFuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    if let layout = try? SafetensorsLayout.parse(bytes, file: "fuzz.safetensors") {
        // Every entry of an accepted file lies inside the buffer.
        for e in layout.entries {
            precondition(e.begin <= e.end && layout.dataStart + e.end <= size)
        }
    }
    return 0
}
