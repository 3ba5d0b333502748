"""Generation benchmark: one whole text-to-image generation (512×512, 20 Euler steps, guidance
7.5) with lidb against diffusers' StableDiffusionPipeline on an SD 1.5-size random-weight
pipeline, each its own process, in the same run: median time per denoising step (one UNet
evaluation at batch 2), VAE decode, total wall time and peak RSS, as ratios lidb / diffusers;
lidb for the f32 and the f16 base (UNet weights converted to f32 at load), and for the f16 base
with `--weights f16-per-layer` (kept F16, converted layer by layer). The images are compared pixel by pixel (8-bit).

With bf16 in --precisions, diffusers under CPU bf16 autocast runs against `lidb generate
--precision bf16` (f32 base; f16 base with f16-per-layer), and every image is compared with
diffusers' f32 image, diffusers' bf16 one included. --precisions bf16 skips lidb's f32 runs
(diffusers' f32 run stays: it is the reference image).

    python bench.py LIDB WORKDIR [--steps 20] [--size 512] [--precisions f32,bf16]
WORKDIR: the base benchmark's folder (sd15-diffusers; the f32 base sd15-f32.lidb is the UNet
benchmark's, the f16 base sd15-diffusers-f16.lidb is made here, both from the diffusers folder).
"""
import json
import os
import statistics
import subprocess
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse"
SEED = 42


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    steps, size = int(arg("--steps", "20")), int(arg("--size", "512"))
    folder = os.path.join(work, "sd15-diffusers")
    if not os.path.isdir(folder):
        subprocess.run([sys.executable, os.path.join(HERE, "..", "base", "make_sd15.py"), folder], check=True)
    bases = {"f32": os.path.join(work, "sd15-f32.lidb"), "f16": os.path.join(work, "sd15-diffusers-f16.lidb")}
    for dtype, path in bases.items():
        if not os.path.exists(path):
            extra = ["--dtype", "f16"] if dtype == "f16" else []
            subprocess.run([lidb, "convert", folder, "-o", path] + extra, check=True, capture_output=True)

    ref_png = os.path.join(work, f"generate-diffusers-{size}.png")
    wall, rss, out = measure([sys.executable, os.path.join(HERE, "diffusers_generate.py"), folder, "--steps", str(steps),
                              "--size", str(size), "--seed", str(SEED), "--prompt", PROMPT, "--out", ref_png])
    d = json.loads(out)
    d_step = statistics.median(d["unet_steps_s"])
    print(f"diffusers: {d_step:.2f} s/step (median of {steps}), VAE decode {d['vae_decode_s']:.2f} s, "
          f"total {wall:.1f} s (load {d['load_s']:.1f} s), peak RSS {rss:.0f} MiB", flush=True)
    ref = np.asarray(Image.open(ref_png)).astype(np.int16)
    results = {"diffusers": {"step_s": d_step, "vae_decode_s": d["vae_decode_s"], "total_s": wall, "peak_rss_mib": rss}}
    # (label, base, UNet weight residency): f32 weights from either base, and an f16 base kept f16.
    precisions = arg("--precisions", "f32,bf16").split(",")

    def run_lidb(path, residency, png, extra=()):
        """One `lidb generate`: median step s, its --timings, wall s, peak RSS MiB, |pixels − diffusers f32|, the results row."""
        wall, rss, out = measure([lidb, "generate", "--model", path, "--prompt", PROMPT, "--steps", str(steps), "--cfg", "7.5",
                                  "--seed", str(SEED), "--sampler", "euler", "--width", str(size), "--height", str(size),
                                  "--weights", residency, "-o", png, "--timings", *extra])
        t = json.loads(out)
        diff = np.abs(np.asarray(Image.open(png)).astype(np.int16) - ref)
        step = statistics.median(t["unet_steps_s"])
        return step, t, wall, rss, diff, {"step_s": step, "vae_decode_s": t["vae_decode_s"], "total_s": wall, "peak_rss_mib": rss,
                                          "max_pixel_diff_vs_f32": int(diff.max()), "mean_pixel_diff_vs_f32": float(diff.mean())}

    runs = [("f32", bases["f32"], "f32"), ("f16", bases["f16"], "f32"), ("f16, f16-per-layer", bases["f16"], "f16-per-layer")]
    for dtype, path, residency in (runs if "f32" in precisions else []):
        png = os.path.join(work, f"generate-lidb-{dtype.replace(', ', '-')}-{size}.png")
        step, t, wall, rss, diff, results[f"lidb {dtype} base"] = run_lidb(path, residency, png)
        print(f"lidb, {dtype} base: {step:.2f} s/step (ratio {step / d_step:.2f}), VAE decode {t['vae_decode_s']:.2f} s "
              f"(ratio {t['vae_decode_s'] / d['vae_decode_s']:.2f}), total {wall:.1f} s (ratio {wall / results['diffusers']['total_s']:.2f}, "
              f"load {t['load_s']:.1f} s), peak RSS {rss:.0f} MiB (ratio {rss / results['diffusers']['peak_rss_mib']:.2f}); "
              f"image vs diffusers: max |Δ| {diff.max()} / 255, mean {diff.mean():.3f}", flush=True)
    if "bf16" in precisions:
        png16 = os.path.join(work, f"generate-diffusers-bf16-{size}.png")
        wall, rss, out = measure([sys.executable, os.path.join(HERE, "diffusers_generate.py"), folder, "--steps", str(steps),
                                  "--size", str(size), "--seed", str(SEED), "--prompt", PROMPT, "--out", png16, "--bf16"])
        d16 = json.loads(out)
        d16_step = statistics.median(d16["unet_steps_s"])
        diff = np.abs(np.asarray(Image.open(png16)).astype(np.int16) - ref)
        results["diffusers bf16"] = {"step_s": d16_step, "vae_decode_s": d16["vae_decode_s"], "total_s": wall, "peak_rss_mib": rss,
                                     "max_pixel_diff_vs_f32": int(diff.max()), "mean_pixel_diff_vs_f32": float(diff.mean())}
        print(f"diffusers bf16 autocast: {d16_step:.2f} s/step, VAE decode {d16['vae_decode_s']:.2f} s, total {wall:.1f} s, "
              f"peak RSS {rss:.0f} MiB; image vs diffusers f32: max |Δ| {diff.max()} / 255, mean {diff.mean():.3f}", flush=True)
        runs16 = [("f32", bases["f32"], "f32"), ("f32, bf16-per-layer", bases["f32"], "bf16-per-layer"),
                  ("f16, f16-per-layer", bases["f16"], "f16-per-layer")]
        for dtype, path, residency in runs16:
            png = os.path.join(work, f"generate-lidb-bf16-{dtype.replace(', ', '-')}-{size}.png")
            step, t, wall, rss, diff, results[f"lidb bf16, {dtype} base"] = run_lidb(path, residency, png, ("--precision", "bf16"))
            print(f"lidb bf16, {dtype} base: {step:.2f} s/step (ratio {step / d16_step:.2f} to diffusers bf16, {step / d_step:.2f} to f32), "
                  f"total {wall:.1f} s (ratio {wall / results['diffusers bf16']['total_s']:.2f}), peak RSS {rss:.0f} MiB "
                  f"(ratio {rss / results['diffusers bf16']['peak_rss_mib']:.2f}); image vs diffusers f32: max |Δ| {diff.max()} / 255, "
                  f"mean {diff.mean():.3f}", flush=True)
    with open(os.path.join(work, f"generate-results-{size}.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
