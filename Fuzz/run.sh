#!/usr/bin/env bash
# Builds the libFuzzer targets (one per parser) with address sanitizer and runs each for
# FUZZ_SECONDS (default 600), in parallel, seeded from the test fixtures and samples.
#   FUZZ_TARGETS="safetensors lidb torch image" picks the targets (default: all four).
#   bash Fuzz/run.sh            # build and run both
#   FUZZ_SECONDS=60 bash Fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-600}"
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
targets="${FUZZ_TARGETS:-safetensors lidb torch image}"
for t in $targets; do
    case $t in
        safetensors) build fuzz-safetensors Fuzz/SafetensorsHeaderFuzz.swift ;;
        lidb) build fuzz-lidb Fuzz/LidbHeaderFuzz.swift ;;
        torch) build fuzz-torch Fuzz/TorchCheckpointFuzz.swift ;;
        image) build_image ;;
        *) echo "unknown fuzz target $t" >&2; exit 2 ;;
    esac
done

# Seed corpora: real files of each format.
mkdir -p Fuzz/corpus-safetensors Fuzz/corpus-lidb Fuzz/corpus-torch Fuzz/corpus-image
find Tests/ImagingTests/Fixtures/images Tests/ImagingTests/Fixtures/malformed -type f -size -20k -exec cp {} Fuzz/corpus-image/ \;
find Tests/TensorFileTests/Fixtures/torch -maxdepth 1 -type f \( -name '*.pt' -o -name '*.ckpt' -o -name '*.bin' \) -size -200k -exec cp {} Fuzz/corpus-torch/ \;
find Tests/TensorFileTests/Fixtures -name '*.safetensors' -size -200k -exec cp {} Fuzz/corpus-safetensors/ \;
lidb="$(swift build --show-bin-path)/lidb"
swift build --product lidb >/dev/null
for f in Fuzz/corpus-safetensors/*.safetensors; do
    n=$(basename "$f" .safetensors)
    "$lidb" convert "$f" -o "Fuzz/corpus-lidb/$n.lidb" >/dev/null
    "$lidb" convert "$f" -o "Fuzz/corpus-lidb/$n-zstd.lidb" --zstd >/dev/null
done
if [[ -d spec/examples ]]; then cp spec/examples/*.lidb Fuzz/corpus-lidb/ 2>/dev/null || true; fi

run() {  # name
    "$out/$1" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$out/$1-" "Fuzz/corpus-${1#fuzz-}" > "$out/$1.log" 2>&1
}
pids=()
for t in $targets; do run "fuzz-$t" & pids+=($!); done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in $targets; do
    echo "== fuzz-$t"
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|ERROR|Done" "$out/fuzz-$t.log" || tail -5 "$out/fuzz-$t.log"
done
exit $status
