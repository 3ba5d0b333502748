"""UNet benchmark: lidb against PyTorch/diffusers, one SD 1.5-size UNet evaluation (random
weights), same inputs, same run; wall time per evaluation, GFLOP/s and peak RSS of each process,
and lidb's error against PyTorch's output; then the same in bf16 (PyTorch's CPU bf16 autocast
against `lidb bench unet --precision bf16`), both compared with PyTorch's f32 output.

    python bench.py LIDB WORKDIR [--repeat N] [--latents 32,64] [--precisions f32,bf16]
WORKDIR: the base benchmark's folder (sd15-diffusers, made by Benchmarks/base/make_sd15.py).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure, sd15_base  # noqa: E402

# One SD 1.5 UNet evaluation at 64×64 latents, batch 2 (classifier-free guidance): 1,607 GFLOP;
# the FLOPs scale with the number of latent pixels except attention, so 32×32 is given as measured time only.
GFLOP_64_B2 = 1607.0


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    repeat = sys.argv[sys.argv.index("--repeat") + 1] if "--repeat" in sys.argv else "3"
    latents = [int(x) for x in (sys.argv[sys.argv.index("--latents") + 1] if "--latents" in sys.argv else "32,64").split(",")]
    folder, base = sd15_base(lidb, work)
    precisions = (sys.argv[sys.argv.index("--precisions") + 1] if "--precisions" in sys.argv else "f32,bf16").split(",")
    for L in latents:
        ref = os.path.join(work, f"unet-ref-{L}.safetensors")
        _, torch_rss, out = measure([sys.executable, os.path.join(HERE, "torch_unet.py"), os.path.join(folder, "unet"),
                                     "--latent", str(L), "--batch", "2", "--repeat", repeat, "--out", ref])
        t = json.loads(out)
        _, lidb_rss, out = measure([lidb, "bench", "unet", "--model", base, "--latent", str(L), "--batch", "2", "--repeat", repeat, "--check", ref])
        l = json.loads(out)
        line = (f"{L}×{L} latents, batch 2: PyTorch {t['median_s']:.2f} s, lidb {l['median_s']:.2f} s "
                f"(ratio {l['median_s'] / t['median_s']:.2f}); peak RSS PyTorch {torch_rss:.0f} MiB, lidb {lidb_rss:.0f} MiB; "
                f"lidb vs PyTorch output: max |error| / max |output| = {l['max_rel_error_vs_reference']:.2e}")
        if L == 64:
            # lidb's 3×3 convolutions use Winograd (fewer multiplications): its figure is the
            # effective rate, the direct algorithm's FLOPs over lidb's time.
            line += (f"; {GFLOP_64_B2 / t['median_s']:.0f} GFLOP/s PyTorch, {GFLOP_64_B2 / l['median_s']:.0f} GFLOP/s lidb effective "
                     f"({GFLOP_64_B2 / t['median_s'] / 168 * 100:.0f}% / {GFLOP_64_B2 / l['median_s'] / 168 * 100:.0f}% of OpenBLAS sgemm peak, 168 GFLOP/s)")
        print(line, flush=True)
        if "bf16" not in precisions:
            continue
        # bf16: PyTorch under CPU bf16 autocast against lidb --precision bf16; both outputs are
        # compared with PyTorch's f32 output (the quality of each bf16 path).
        ref16 = os.path.join(work, f"unet-ref-{L}-bf16.safetensors")
        _, torch16_rss, out = measure([sys.executable, os.path.join(HERE, "torch_unet.py"), os.path.join(folder, "unet"),
                                       "--latent", str(L), "--batch", "2", "--repeat", repeat, "--out", ref16, "--bf16"])
        t16 = json.loads(out)
        _, lidb16_rss, out = measure([lidb, "bench", "unet", "--model", base, "--latent", str(L), "--batch", "2", "--repeat", repeat,
                                      "--check", ref, "--precision", "bf16"])
        l16 = json.loads(out)
        torch_err = relative_difference(ref16, ref)
        print(f"{L}×{L} latents, batch 2, bf16: PyTorch autocast {t16['median_s']:.2f} s, lidb {l16['median_s']:.2f} s "
              f"(ratio {l16['median_s'] / t16['median_s']:.2f}; vs PyTorch f32 {l16['median_s'] / t['median_s']:.2f}); "
              f"peak RSS PyTorch {torch16_rss:.0f} MiB, lidb {lidb16_rss:.0f} MiB; difference from PyTorch's f32 output "
              f"(max |error| / max |output|): PyTorch bf16 {torch_err:.2e}, lidb bf16 {l16['max_rel_error_vs_reference']:.2e}", flush=True)


def relative_difference(a_path, b_path):
    from safetensors.numpy import load_file
    a, b = load_file(a_path)["out"].astype("float64"), load_file(b_path)["out"].astype("float64")
    return float(abs(a - b).max() / abs(b).max())

if __name__ == "__main__":
    main()
