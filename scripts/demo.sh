#!/usr/bin/env bash
# The quick start, on the trained sample world (converters/world/README.md): builds lidb in release
# mode, converts the world's pipeline and hypernetwork, turns a held-out face photo into a subject
# (hypernetwork prediction, then the 40-step fast finetune), generates the canonical and three
# context prompts with the base and both subjects, tours the format (LoRA export and import,
# merge, unmerge, verify) and composes a contact sheet. Everything goes to $LIDB_DEMO_OUT (default
# demo-output/); LIDB_BIN=path/to/lidb skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
world=samples/world
hypernet=$world/hypernetwork.safetensors
hyperconfig=$world/hypernetwork.json
photo=$world/heldout/0000.png
seed=7
if [[ ! -f $hypernet || ! -f $hyperconfig ]]; then
    echo "demo: the world hypernetwork ($hypernet + hypernetwork.json) is missing; the demo needs it (converters/world/README.md)" >&2
    exit 1
fi
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

if [[ -n ${LIDB_BIN:-} ]]; then
    lidb=$LIDB_BIN
else
    step "build lidb (release)" swift build -c release --product lidb
    lidb="$(swift build -c release --show-bin-path)/lidb"
fi

# The canonical prompt and three that change one context attribute, worded as the world's captions.
names=(canonical hat sketch pink)
prompts=("a photo of sks face" "a photo of sks face, wearing a blue hat" "a sketch of sks face" "a photo of sks face, on a pink background")

# generate TAG [SUBJECT]: the four prompts (the base without a subject gets them with the trigger
# dropped: "a photo of face, …"), 64×64, DDIM 25 steps, guidance 5, the same seed.
generate() {
    local tag=$1 subject=${2:-} i prompt
    for i in "${!prompts[@]}"; do
        prompt=${prompts[$i]}
        if [[ -z $subject ]]; then
            prompt=${prompt/sks /}
            "$lidb" generate --model "$out/world.lidb" --prompt "$prompt" --sampler ddim --steps 25 --cfg 5 \
                --width 64 --height 64 --seed $seed -o "$out/$tag-${names[$i]}.png"
        else
            "$lidb" generate --model "$out/world.lidb" --subject "$subject" --prompt "$prompt" --sampler ddim --steps 25 --cfg 5 \
                --width 64 --height 64 --seed $seed -o "$out/$tag-${names[$i]}.png"
        fi
    done
}

step "convert the world pipeline (diffusers folder, f16) to a base" \
    "$lidb" convert $world/pipeline -o "$out/world.lidb"
step "convert the world hypernetwork (safetensors + config) to a .lidb" \
    "$lidb" convert "$hypernet" --kind hypernetwork --config "$hyperconfig" -o "$out/hyper.lidb"
step "personalise: a held-out face photo in, subject file out (hypernetwork prediction)" \
    "$lidb" personalize --hypernet "$out/hyper.lidb" --base "$out/world.lidb" --image "$photo" \
        --trigger sks --class face --name heldout-0000 -o "$out/predicted.lidb" --timings
# The world's tiny model takes a larger step than lidb's default for the fast finetune (1e-4)
# (samples/world/eval-world.md). The prompt names the photo's background, as the world's fits and
# hypernetwork do, so that the subject takes the face and not the grey background.
step "fast finetune: the prediction + 40 rank-relaxed steps on the photo (lr 1e-3)" \
    "$lidb" finetune --base "$out/world.lidb" --image "$photo" --hypernet "$out/hyper.lidb" --lr 1e-3 \
        --prompt "a photo of sks face, on a grey background" --name heldout-0000 --resolution 64 -o "$out/finetuned.lidb"
step "inspect the subject (layers, trained parameters, binding, provenance)" \
    "$lidb" inspect "$out/finetuned.lidb"
ls -l "$out/predicted.lidb" "$out/finetuned.lidb"
step "generate 4 prompts with the base (trigger dropped)" generate base
step "generate 4 prompts with the predicted subject" generate predicted "$out/predicted.lidb"
step "generate 4 prompts with the finetuned subject" generate finetuned "$out/finetuned.lidb"
step "generate with the finetuned subject applied live (weights untouched)" \
    "$lidb" generate --model "$out/world.lidb" --subject "$out/finetuned.lidb" --apply live --prompt "${prompts[0]}" \
        --sampler ddim --steps 25 --cfg 5 --width 64 --height 64 --seed $seed -o "$out/finetuned-live.png"
step "export the finetuned subject as a kohya LoRA for diffusers/ComfyUI" \
    "$lidb" subject export "$out/finetuned.lidb" --format kohya -o "$out/finetuned-kohya.safetensors"
step "import that LoRA again as a subject" \
    "$lidb" subject import "$out/finetuned-kohya.safetensors" --base "$out/world.lidb" -o "$out/lora.lidb"
step "merge two subjects into a new base file" \
    "$lidb" merge "$out/world.lidb" "$out/predicted.lidb" "$out/lora.lidb:0.5" -o "$out/merged.lidb"
step "unmerge them again (bit-exact restore from the original)" \
    "$lidb" unmerge "$out/merged.lidb" "$out/predicted.lidb" "$out/lora.lidb:0.5" --original "$out/world.lidb" -o "$out/restored.lidb"
step "verify every checksum of the restored base" "$lidb" verify "$out/restored.lidb"
cells=()
for n in "${names[@]}"; do
    if [[ $n == canonical ]]; then cells+=("$photo"); else cells+=(-); fi
    cells+=("$out/base-$n.png" "$out/predicted-$n.png" "$out/finetuned-$n.png")
done
step "contact sheet: rows = prompts; columns = photo | base | predicted | finetuned" \
    "$lidb" grid "${cells[@]}" --columns 4 --cell 128x128 --gap 4 -o "$out/sheet.png"

total=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
echo
echo "steps:"
printf '%s\n' "${summary[@]}"
printf '%8.2f s  total\n' "$total"
echo
echo "outputs in $out/:"
ls -l "$out"
echo
echo "contact sheet: $out/sheet.png (rows: ${prompts[0]} | …wearing a blue hat | a sketch of… | …on a pink background;"
echo "columns: the photo | base | predicted | finetuned)"
if [[ -f $world/eval-world.md ]]; then
    echo
    echo "the evaluation on all 24 held-out identities ($world/eval-world.md, make eval-world):"
    echo
    cat $world/eval-world.md
fi
