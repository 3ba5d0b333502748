#!/usr/bin/env bash
# The quick start: builds lidb in release mode and runs it on the bundled samples.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${LIDB_DEMO_OUT:-demo-output}"
rm -rf "$out"
mkdir -p "$out"
step() { local t0=$SECONDS; echo; echo "== $1"; shift; "$@"; echo "   ($((SECONDS - t0)) s)"; }

step "build (release)" swift build -c release --product lidb
lidb="$(swift build -c release --show-bin-path)/lidb"
step "inspect the sample safetensors file" "$lidb" inspect samples/tiny-clip-text.safetensors
step "convert it to .lidb (lossless)" "$lidb" convert samples/tiny-clip-text.safetensors -o "$out/tiny-clip-text.lidb"
step "inspect the .lidb file" "$lidb" inspect "$out/tiny-clip-text.lidb"
step "verify every checksum" "$lidb" verify "$out/tiny-clip-text.lidb"
step "convert to f16, zstd-compressed" "$lidb" convert "$out/tiny-clip-text.lidb" -o "$out/tiny-clip-text-f16.lidb" --dtype f16 --zstd
step "and back to safetensors" "$lidb" convert "$out/tiny-clip-text.lidb" -o "$out/roundtrip.safetensors"
if cmp -s samples/tiny-clip-text.safetensors "$out/roundtrip.safetensors"; then
    echo "   round trip safetensors → lidb → safetensors: identical bytes"
else
    echo "   round trip differs" >&2; exit 1
fi
pipeline=Tests/BaseTests/Fixtures/sd1/diffusers-safetensors   # a tiny random-weight SD 1.x pipeline
step "convert a diffusers pipeline to a base" "$lidb" convert "$pipeline" -o "$out/tiny-sd1.lidb" --dtype f16
step "inspect the base" "$lidb" inspect "$out/tiny-sd1.lidb"
step "export it as an LDM single file" "$lidb" export "$out/tiny-sd1.lidb" --format single-file -o "$out/tiny-sd1-ldm.safetensors"
step "and back to diffusers" "$lidb" export "$out/tiny-sd1.lidb" --format diffusers -o "$out/tiny-sd1-diffusers"
echo
echo "outputs in $out/:"
ls -l "$out"
