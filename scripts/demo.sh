#!/usr/bin/env bash
# The quick start: builds lidb in release mode and runs the whole flow on the bundled samples —
# convert a base and a hypernetwork, personalise from a photo, generate merged and live, merge,
# unmerge, verify. Everything goes to $LIDB_DEMO_OUT (default demo-output/).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${LIDB_DEMO_OUT:-demo-output}"
rm -rf "$out"
mkdir -p "$out"
summary=()
step() {
    local title=$1; shift
    local t0=$EPOCHREALTIME
    echo; echo "== $title"
    "$@"
    local dt; dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
    printf '   (%.2f s)\n' "$dt"
    summary+=("$(printf '%8.2f s  %s' "$dt" "$title")")
}
start=$EPOCHREALTIME

step "build lidb (release)" swift build -c release --product lidb
lidb="$(swift build -c release --show-bin-path)/lidb"

step "convert the sample pipeline (diffusers folder, f16) to a base" \
    "$lidb" convert samples/tiny-sd -o "$out/tiny-sd.lidb"
step "convert the sample hypernetwork (safetensors + config) to a .lidb" \
    "$lidb" convert samples/tiny-hyper.safetensors --kind hypernetwork --config samples/tiny-hyper.json -o "$out/tiny-hyper.lidb"
step "personalise: photo in, subject file out" \
    "$lidb" personalize --hypernet "$out/tiny-hyper.lidb" --base "$out/tiny-sd.lidb" --image samples/face.jpg \
        --trigger sks --class face --name sample-face -o "$out/face.lidb" --timings
step "inspect the subject (size, trained parameters, binding, provenance)" \
    "$lidb" inspect "$out/face.lidb"
ls -l "$out/face.lidb"
step "generate with the subject merged into the weights" \
    "$lidb" generate --model "$out/tiny-sd.lidb" --subject "$out/face.lidb" --prompt "a photo of sks face" \
        --steps 20 --width 256 --height 256 --seed 42 -o "$out/merged.png"
step "generate with the subject applied live (weights untouched)" \
    "$lidb" generate --model "$out/tiny-sd.lidb" --subject "$out/face.lidb" --apply live --prompt "a photo of sks face" \
        --steps 20 --width 256 --height 256 --seed 42 -o "$out/live.png"
step "import a PEFT LoRA as a second subject" \
    "$lidb" subject import samples/lora-peft.safetensors --base "$out/tiny-sd.lidb" -o "$out/lora.lidb"
step "merge both subjects into a new base file" \
    "$lidb" merge "$out/tiny-sd.lidb" "$out/face.lidb" "$out/lora.lidb:0.5" -o "$out/merged.lidb"
step "unmerge them again (bit-exact restore from the original)" \
    "$lidb" unmerge "$out/merged.lidb" "$out/face.lidb" "$out/lora.lidb:0.5" --original "$out/tiny-sd.lidb" -o "$out/restored.lidb"
step "verify every checksum of the restored base" "$lidb" verify "$out/restored.lidb"
step "export the subject as a LoRA for diffusers/ComfyUI" \
    "$lidb" subject export "$out/face.lidb" --format kohya -o "$out/face-kohya.safetensors"

total=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
echo
echo "The sample models have random weights: the images are noise, every step of the pipeline is real."
echo
echo "steps:"
printf '%s\n' "${summary[@]}"
printf '%8.2f s  total\n' "$total"
echo
echo "outputs in $out/:"
ls -l "$out"
