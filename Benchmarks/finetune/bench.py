"""Training-step benchmark: one `lidb finetune` step against PyTorch + PEFT, SD 1.5-size random
weights, batch 1, the `paper` layers (200 on SD 1.5) with rank-1 terms, AdamW, float32, 2 threads,
same photo, same run. Reports the median step time and each process's peak RSS as ratios, and the
paper's 40-step fast finetune wall time (load + 40 × the median step).

    python bench.py LIDB WORKDIR [--steps 3] [--resolutions 256,512] [--precisions f32,bf16]
                                 [--weights f32,f16-per-layer]
(bf16: PyTorch's forward under CPU bf16 autocast, as diffusers' scripts with mixed precision,
against `lidb finetune --precision bf16`.) --weights f16-per-layer adds a lidb run on the F16 base
(sd15-diffusers-f16.lidb, made from the same folder) with its UNet weights kept F16 and converted
as each product runs: the same f32 arithmetic on the same F16 values as that base at f32
residency, against the same PyTorch run.
WORKDIR: the base benchmark's folder (sd15-diffusers, made by Benchmarks/base/make_sd15.py).
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure, sd15_base  # noqa: E402


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    steps = sys.argv[sys.argv.index("--steps") + 1] if "--steps" in sys.argv else "3"
    resolutions = [int(x) for x in (sys.argv[sys.argv.index("--resolutions") + 1] if "--resolutions" in sys.argv else "256,512").split(",")]
    folder, base = sd15_base(lidb, work)
    photo = os.path.join(REPO, "samples", "face.jpg")
    out = os.path.join(work, "finetune-bench.lidb")
    precisions = (sys.argv[sys.argv.index("--precisions") + 1] if "--precisions" in sys.argv else "f32").split(",")
    weights = (sys.argv[sys.argv.index("--weights") + 1] if "--weights" in sys.argv else "f32").split(",")
    half_base = os.path.join(work, "sd15-diffusers-f16.lidb")
    if "f16-per-layer" in weights and not os.path.exists(half_base):
        subprocess.run([lidb, "convert", folder, "-o", half_base, "--dtype", "f16"], check=True, capture_output=True)
    for r, precision in [(r, p) for p in precisions for r in resolutions]:
        _, torch_rss, o = measure([sys.executable, os.path.join(HERE, "torch_finetune.py"), folder, photo,
                                   "--resolution", str(r), "--steps", steps] + (["--bf16"] if precision == "bf16" else []))
        t = json.loads(o)
        for w in weights:
            run_base, extra, label = (half_base, ["--weights", "f16-per-layer"], ", lidb F16 base, f16-per-layer") if w == "f16-per-layer" else (base, [], "")
            _, lidb_rss, o = measure([lidb, "finetune", "--base", run_base, "--image", photo, "--resolution", str(r), "--steps", steps,
                                      "--lr", "1e-4", "-o", out, "--timings", "--precision", precision] + extra)
            l = json.loads(o.strip().splitlines()[-1])
            ratio = l["step_median_s"] / t["step_median_s"]
            print(f"{precision}{label}, {r}×{r}, batch 1, {t['layers']} layers rank 1, AdamW: PyTorch+PEFT{' bf16 autocast' if precision == 'bf16' else ''} {t['step_median_s']:.2f} s/step, "
                  f"lidb {l['step_median_s']:.2f} s/step (ratio {ratio:.2f}); peak RSS PyTorch {torch_rss:.0f} MiB, lidb {lidb_rss:.0f} MiB "
                  f"(ratio {lidb_rss / torch_rss:.2f}); 40-step fast finetune ≈ {l['load_s'] + 40 * l['step_median_s']:.0f} s lidb, "
                  f"{t['load_s'] + 40 * t['step_median_s']:.0f} s PyTorch", flush=True)


if __name__ == "__main__":
    main()
