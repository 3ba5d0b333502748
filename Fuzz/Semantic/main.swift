// SwiftPM links an executable's own entry point as `main`, which rules out libFuzzer's `main`;
// this one hands the command line to libFuzzer's driver (linked in by -sanitize=fuzzer).
#if canImport(Glibc)
import Glibc
#endif

@_extern(c, "LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                     _ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(runFuzzerDriver(&argc, &argv, { lidbFuzzSemantic($0, $1) }))
