"""Checks that LoRA files exported by lidb load in diffusers and fuse to diffusers' own result.

Imports the fixture PEFT LoRA into a subject (`lidb subject import`), exports it as kohya and as
PEFT (`lidb subject export`), loads each with `load_lora_weights` into the fixture pipeline, fuses,
and compares the fused weights with Tests/SubjectTests/Fixtures/lora/fused.safetensors.

    python converters/checks/check_lora_exports.py PATH/TO/lidb
"""
import os
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPE = os.path.join(ROOT, "Tests", "BaseTests", "Fixtures", "sd1", "diffusers-safetensors")
LORA = os.path.join(ROOT, "Tests", "SubjectTests", "Fixtures", "lora")


def fused_weights(pipe):
    """Fused weights under lidb's base names (PEFT keeps fused layers wrapped: `….base_layer.weight`)."""
    out = {}
    for k, v in pipe.unet.state_dict().items():
        out["unet." + k.replace(".base_layer.", ".")] = v
    for k, v in pipe.text_encoder.state_dict().items():
        k = k.replace(".base_layer.", ".")
        out["text_encoder." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return out


def main():
    lidb = sys.argv[1]
    want = load_file(os.path.join(LORA, "fused.safetensors"))
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        base, subject = os.path.join(tmp, "base.lidb"), os.path.join(tmp, "s.lidb")
        subprocess.run([lidb, "convert", PIPE, "-o", base], check=True, capture_output=True)
        subprocess.run([lidb, "subject", "import", os.path.join(LORA, "peft.safetensors"), "--base", base, "--dtype", "f32", "-o", subject],
                       check=True, capture_output=True)
        for fmt in ("kohya", "peft"):
            out = os.path.join(tmp, f"{fmt}.safetensors")
            subprocess.run([lidb, "subject", "export", subject, "--format", fmt, "-o", out], check=True, capture_output=True)
            pipe = StableDiffusionPipeline.from_pretrained(PIPE, local_files_only=True)
            pipe.load_lora_weights(out)
            pipe.fuse_lora(lora_scale=1.0)
            got = fused_weights(pipe)
            worst = 0.0
            for k, w in want.items():
                d = (got[k] - w).abs().max().item()
                scale = (w.abs().max().item() + 1e-30)
                worst = max(worst, d / scale)
            ok = worst <= 1e-5
            failures += not ok
            print(f"{fmt}: lidb export → diffusers load_lora_weights + fuse_lora: {len(want)} layers, max |Δ| / max |W| = {worst:.2e} {'OK' if ok else 'FAIL'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
