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
step "make a subject (random factors, the paper's LiDB configuration)" "$lidb" subject init --base "$out/tiny-sd1.lidb" --seed 7 --std 0.5 --name demo --trigger sks -o "$out/subject.lidb"
step "inspect it" "$lidb" inspect "$out/subject.lidb"
step "generate with the subject, merged" "$lidb" generate --model "$out/tiny-sd1.lidb" --subject "$out/subject.lidb:0.8" --prompt "a photo of sks person" --steps 4 --width 64 --height 64 -o "$out/merged.png"
step "generate with the subject, live" "$lidb" generate --model "$out/tiny-sd1.lidb" --subject "$out/subject.lidb:0.8" --apply live --prompt "a photo of sks person" --steps 4 --width 64 --height 64 -o "$out/live.png" --timings
step "merge into the base file" "$lidb" merge "$out/tiny-sd1.lidb" "$out/subject.lidb:0.8" -o "$out/merged.lidb"
step "unmerge (bit-exact restore)" "$lidb" unmerge "$out/merged.lidb" "$out/subject.lidb:0.8" --original "$out/tiny-sd1.lidb" -o "$out/restored.lidb"
step "verify" "$lidb" verify "$out/restored.lidb"
echo "   (the tiny models have random weights: the images are meaningless, the pipeline is real)"
echo
echo "outputs in $out/:"
ls -l "$out"
