#!/usr/bin/env bash
# Builds the libFuzzer targets with address sanitizer and runs each for FUZZ_SECONDS (default
# 600), in parallel. Targets:
#   safetensors, lidb, torch, image — one parser each, built with swiftc over its sources,
#       seeded from the test fixtures and samples; findings go to Fuzz/out/fuzz-NAME-*.
#   semantic — the structure-aware target for the semantic layers (Fuzz/Semantic, see
#       Fuzz/README.md): valid subject, base and hypernetwork files with hostile contents. Built
#       with SwiftPM in release (LIDB_FUZZ=1, build path .build-fuzz: about 6 minutes of CPU the
#       first time); runs with -rss_limit_mb=2048 -malloc_limit_mb=2048 so allocations sized by
#       the input are findings; findings go to Fuzz/crashes-semantic/.
#   FUZZ_TARGETS="safetensors lidb torch image" picks the targets (default: all four parsers;
#       semantic only when named).
#   FUZZ_KEEP_GOING=1 keeps fuzzing after a finding (libFuzzer's -fork=1 -ignore_crashes=1), to
#       collect several distinct findings in one run.
#   bash Fuzz/run.sh            # build and run the parser targets
#   FUZZ_SECONDS=600 FUZZ_TARGETS=semantic bash Fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-600}"
targets="${FUZZ_TARGETS:-safetensors lidb torch image}"
out=Fuzz/out
mkdir -p "$out"
cflags=(-O2 -g -fsanitize=address,fuzzer-no-link -I Sources/CLidbSupport/include)
for c in Sources/CLidbSupport/*.c; do clang "${cflags[@]}" -c "$c" -o "$out/$(basename "$c" .c).o"; done

build() {  # name, entry file
    if ! swiftc -O -g -sanitize=fuzzer,address -parse-as-library -module-name TensorFile \
        -I Sources/CZstd -I Sources/CLidbSupport/include \
        Sources/TensorFile/*.swift "$2" "$out"/*.o -lzstd -o "$out/$1" > "$out/$1.build.log" 2>&1; then
        grep -v "ld.gold: warning" "$out/$1.build.log" >&2
        exit 1
    fi
}
# The image decoder: its Swift files (they do not need TensorFile) and the C decoding shim.
build_image() {
    mkdir -p "$out/image"
    clang -O2 -g -fsanitize=address,fuzzer-no-link -I Sources/CImagingSupport/include \
        -c Sources/CImagingSupport/decode.c -o "$out/image/decode.o"
    if ! swiftc -O -g -sanitize=fuzzer,address -parse-as-library -module-name Imaging \
        -I Sources/CImagingSupport/include \
        Sources/Imaging/ImageDecoder.swift Sources/Imaging/ExifOrientation.swift Sources/Imaging/Image.swift \
        Sources/Imaging/ImageError.swift Fuzz/ImageDecoderFuzz.swift "$out/image/decode.o" -lpng16 -ljpeg \
        -o "$out/fuzz-image" > "$out/fuzz-image.build.log" 2>&1; then
        grep -v "ld.gold: warning" "$out/fuzz-image.build.log" >&2
        exit 1
    fi
}
# The semantic layers: SwiftPM, with the fuzz target and sanitizer flags switched on by LIDB_FUZZ.
build_semantic() {
    if ! LIDB_FUZZ=1 swift build -c release --build-path .build-fuzz --product FuzzSemantic > "$out/fuzz-semantic.build.log" 2>&1; then
        grep -v "ld.gold: warning" "$out/fuzz-semantic.build.log" >&2
        exit 1
    fi
    ln -sf "$PWD/.build-fuzz/release/FuzzSemantic" "$out/fuzz-semantic"
}
for t in $targets; do
    case $t in
        safetensors) build fuzz-safetensors Fuzz/SafetensorsHeaderFuzz.swift ;;
        lidb) build fuzz-lidb Fuzz/LidbHeaderFuzz.swift ;;
        torch) build fuzz-torch Fuzz/TorchCheckpointFuzz.swift ;;
        image) build_image ;;
        semantic) build_semantic ;;
        *) echo "unknown fuzz target $t" >&2; exit 2 ;;
    esac
done

# Seed corpora: real files of each format.
mkdir -p Fuzz/corpus-safetensors Fuzz/corpus-lidb Fuzz/corpus-torch Fuzz/corpus-image Fuzz/corpus-semantic Fuzz/crashes-semantic
find Tests/ImagingTests/Fixtures/images Tests/ImagingTests/Fixtures/malformed -type f -size -20k -exec cp {} Fuzz/corpus-image/ \;
find Tests/TensorFileTests/Fixtures/torch -maxdepth 1 -type f \( -name '*.pt' -o -name '*.ckpt' -o -name '*.bin' \) -size -200k -exec cp {} Fuzz/corpus-torch/ \;
find Tests/TensorFileTests/Fixtures -name '*.safetensors' -size -200k -exec cp {} Fuzz/corpus-safetensors/ \;
if [[ " $targets " == *" lidb "* ]]; then
    lidb="$(swift build --show-bin-path)/lidb"
    swift build --product lidb >/dev/null
    for f in Fuzz/corpus-safetensors/*.safetensors; do
        n=$(basename "$f" .safetensors)
        "$lidb" convert "$f" -o "Fuzz/corpus-lidb/$n.lidb" >/dev/null
        "$lidb" convert "$f" -o "Fuzz/corpus-lidb/$n-zstd.lidb" --zstd >/dev/null
    done
    if [[ -d spec/examples ]]; then cp spec/examples/*.lidb Fuzz/corpus-lidb/ 2>/dev/null || true; fi
fi
# The semantic target's input is a stream of choices, not a file: one seed per path through it
# (first byte: 0 subject, 1 base, 2 hypernetwork; the next ones pick how far each goes). They were
# picked from a corpus by what LIDB_FUZZ_TRACE=1 shows them reaching.
seed() { printf "$2" > "Fuzz/corpus-semantic/seed-$1"; }
seed subject-live '\x00'
seed subject-q8 '\x00\x07\x3f'
seed subject-stored-basis '\x00\x41\xc3\x04'
seed subject-lora '\x00\x5b\x19\x32\x41\x25\x5b\x19\x41\x25'
seed subject-export-merge '\x00\x00\x10\x80\x00\x76\x61\x65\x2e\x65\x6e\x63\x6f\x64\x65\x72\x2e\x64\x6f\x77\x6e\x5f\x62\x6c\x6f\x63\x6b\x73\x2e\x33\x2e\x72\x65\x73\x6e\x65\x74\x73\x2e\x30\x2e\x6e\x6f\x72\x6d\x31\x2e\x77\x65\x69\x67\x68\x74\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0f\xff\xfe\x7f\xfe'
seed base-schedulers '\x01'
seed base-open '\x01\x01'
seed base-load '\x01\x02'
seed base-generate '\x01\x03'
seed hyper-fixture '\x02'
seed hyper-synthesised '\x02\x41'

run() {  # name
    local corpus="Fuzz/corpus-${1#fuzz-}" artifacts="$out/$1-" extra=()
    if [[ $1 == fuzz-semantic ]]; then
        artifacts=Fuzz/crashes-semantic/
        extra=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -detect_leaks=0 -timeout=60 -max_len=4096 -len_control=0)
        if [[ -n "${FUZZ_KEEP_GOING:-}" ]]; then extra+=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1); fi
        # One BLAS thread (the cores are shared); short allocation stacks keep ASan's malloc cheap.
        # Swift's own crash reporter is switched off: libFuzzer reports the trap and saves the input.
        OPENBLAS_NUM_THREADS=1 SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="${ASAN_OPTIONS:-malloc_context_size=5}" \
            "$out/$1" -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" \
            -artifact_prefix="$artifacts" "$corpus" > "$out/$1.log" 2>&1
        return
    fi
    "$out/$1" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$artifacts" "$corpus" > "$out/$1.log" 2>&1
}
pids=()
for t in $targets; do run "fuzz-$t" & pids+=($!); done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in $targets; do
    echo "== fuzz-$t"
    grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|ERROR|Done" "$out/fuzz-$t.log" || tail -5 "$out/fuzz-$t.log"
done
exit $status
