"""Checks the Python package's diffusers helper against lidb's own merge.

Converts the tiny SD 1 fixture pipeline (`lidb convert`), makes a subject (`lidb subject init`) and
merges it (`lidb merge`); then, in Python only, builds a diffusers pipeline from the base file
(`lidb.diffusers.pipeline_from_base`), applies the subject through the PEFT export
(`lidb.diffusers.apply_subject`, fused) and compares every weight with lidb's merged base.

    python converters/checks/check_python_diffusers.py PATH/TO/lidb
"""
import os
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "converters", "python"))

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import transformers  # noqa: E402

import lidb.diffusers  # noqa: E402
from lidb.base import read_base  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
PIPE = os.path.join(ROOT, "Tests", "BaseTests", "Fixtures", "sd1", "diffusers-safetensors")


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        base, subject, merged = (os.path.join(tmp, n) for n in ("base.lidb", "s.lidb", "merged.lidb"))
        subprocess.run([binary, "convert", PIPE, "-o", base], check=True, capture_output=True)
        subprocess.run([binary, "subject", "init", "--base", base, "--seed", "5", "--rank", "2", "--down-dim", "8",
                        "--up-dim", "8", "--std", "0.05", "--dtype", "f32", "-o", subject], check=True, capture_output=True)
        subprocess.run([binary, "merge", base, subject + ":0.8", "-o", merged], check=True, capture_output=True)
        pipe = lidb.diffusers.pipeline_from_base(base)
        lidb.diffusers.apply_subject(pipe, subject, weight=0.8, fuse=True)
        with read_base(merged) as m:
            want = {}
            for comp in ("unet", "text_encoder"):
                for k, v in m.state_dict(comp).items():
                    want[f"{comp}.{k}"] = v
        got = {}
        for comp, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
            for k, v in module.state_dict().items():
                if ".lora_" in k:
                    continue
                k = k.replace(".base_layer.", ".")
                if comp == "text_encoder" and not k.startswith("text_model."):
                    k = "text_model." + k
                got[f"{comp}.{k}"] = v.numpy()
        missing = set(want) - set(got)
        worst = 0.0
        changed = 0
        with read_base(base) as b0:
            orig = {f"{c}.{k}": v for c in ("unet", "text_encoder") for k, v in b0.state_dict(c).items()}
        for k, w in want.items():
            if k in got:
                d = float(np.abs(got[k].astype(np.float64) - w).max() / (np.abs(w).max() + 1e-30))
                worst = max(worst, d)
                changed += not np.array_equal(w, orig[k])
        ok = not missing and worst <= 1e-6 and changed > 0
        print(f"lidb.diffusers.apply_subject (fused) vs lidb merge: {len(want)} tensors ({changed} changed by the subject), "
              f"max |Δ| / max |W| = {worst:.2e}, missing {len(missing)} {'OK' if ok else 'FAIL'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
