"""Checks lidb's exports with diffusers' own loaders (code we did not write).

For each fixture pipeline: `lidb convert` the diffusers folder to a base, `lidb export` it as a
diffusers folder and as an LDM single file, then load both with diffusers
(`from_pretrained`, `from_single_file(config=…)`) and compare every weight with the original
pipeline (torch.equal), plus the scheduler config and tokenizer ids.

    python converters/checks/check_exports.py PATH/TO/lidb
"""
import os
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "Tests", "BaseTests", "Fixtures")


def compare(ref, got):
    bad = n = 0
    for comp in ("unet", "vae", "text_encoder"):
        a, b = getattr(ref, comp).state_dict(), getattr(got, comp).state_dict()
        if set(a) != set(b):
            print(f"  {comp}: key sets differ: {sorted(set(a) ^ set(b))[:5]}")
            bad += 1
        for k in a:
            n += 1
            if k in b and not torch.equal(a[k], b[k]):
                print(f"  {comp}.{k} differs")
                bad += 1
    return n, bad


def main():
    lidb = sys.argv[1]
    failures = 0
    for name, cls in (("sd1", StableDiffusionPipeline), ("sd2", StableDiffusionPipeline), ("sd1-inpaint", StableDiffusionInpaintPipeline)):
        folder = os.path.join(FIXTURES, name, "diffusers-safetensors")
        ref = cls.from_pretrained(folder, local_files_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base.lidb")
            subprocess.run([lidb, "convert", folder, "-o", base], check=True, capture_output=True)
            out_dir, ldm = os.path.join(tmp, "diffusers"), os.path.join(tmp, "ldm.safetensors")
            subprocess.run([lidb, "export", base, "--format", "diffusers", "-o", out_dir], check=True, capture_output=True)
            subprocess.run([lidb, "export", base, "--format", "single-file", "-o", ldm], check=True, capture_output=True)
            got = cls.from_pretrained(out_dir, local_files_only=True)
            n, bad = compare(ref, got)
            same_sched = dict(ref.scheduler.config) == dict(got.scheduler.config)
            same_tok = ref.tokenizer("a photo of sks person").input_ids == got.tokenizer("a photo of sks person").input_ids
            print(f"{name}: export --format diffusers → from_pretrained: {n} tensors, {bad} differ; scheduler config equal: {same_sched}; tokenizer ids equal: {same_tok}")
            failures += bad + (not same_sched) + (not same_tok)
            single = cls.from_single_file(ldm, config=folder, local_files_only=True)
            n, bad = compare(ref, single)
            print(f"{name}: export --format single-file → from_single_file: {n} tensors, {bad} differ")
            failures += bad
    print("OK" if failures == 0 else f"FAILED: {failures} problem(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
