"""Hypernetwork benchmark: lidb against the PyTorch reference on one photo, same weights (random,
ViT-H/14-sized CLIP-vision encoder, decoder for SD 1.5's 200-layer `paper` table), same preprocessed
input, same run. Reports seconds per photo (median of --repeat, model loaded), their ratio, each
process's peak RSS, the CPU time per photo (all threads; PyTorch's OpenMP threads may spin), and lidb's error against PyTorch's predictions. Runs are interleaved
(--rounds pairs of PyTorch then lidb) because the machine may be shared.

    python bench.py LIDB WORKDIR [--repeat N] [--rounds R]
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure  # noqa: E402


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    repeat, rounds = arg("--repeat", "3"), int(arg("--rounds", "2"))
    if not os.path.exists(os.path.join(work, "pixels.safetensors")):
        subprocess.run([sys.executable, os.path.join(HERE, "make_hyper.py"), work], check=True)
    model = os.path.join(work, "hyper.lidb")
    if not os.path.exists(model):
        subprocess.run([lidb, "convert", os.path.join(work, "hyper.safetensors"), "--kind", "hypernetwork",
                        "--config", os.path.join(work, "hyper.json"), "-o", model], check=True, capture_output=True)
    ref = os.path.join(work, "ref.safetensors")
    for r in range(rounds):
        _, torch_rss, out = measure([sys.executable, os.path.join(HERE, "torch_hyper.py"), work, "--repeat", repeat, "--out", ref])
        t = json.loads(out)
        _, lidb_rss, out = measure([lidb, "bench", "hyper", "--model", model, "--pixels", os.path.join(work, "pixels.safetensors"),
                                    "--repeat", repeat, "--check", ref])
        l = json.loads(out)
        print(f"round {r + 1}: one photo, {l['layers']} layers: PyTorch {t['median_s']:.2f} s (all {', '.join(f'{x:.2f}' for x in t['all_s'])}), "
              f"lidb {l['median_s']:.2f} s (all {', '.join(f'{x:.2f}' for x in l['all_s'])}), ratio lidb/PyTorch {l['median_s'] / t['median_s']:.2f}; "
              f"CPU seconds per photo PyTorch {t['cpu_s_median']:.2f}, lidb {l['cpu_s_median']:.2f}; "
              f"peak RSS PyTorch {torch_rss:.0f} MiB, lidb {lidb_rss:.0f} MiB; load PyTorch {t['load_s']:.1f} s, lidb {l['load_s']:.1f} s; "
              f"lidb vs PyTorch: max |error| / max |output| = {l['max_rel_error_vs_reference']:.2e}", flush=True)


if __name__ == "__main__":
    main()
