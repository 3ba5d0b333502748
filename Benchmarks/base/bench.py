"""Base benchmark: an SD 1.5-size f32 single-file checkpoint (LDM names, ~4.3 GB) to an f16 base,
lidb against Python (safetensors load_file + .half() + save_file) in the same run. Each case is its
own process; wall time and that process's peak RSS (wait4) are recorded.

    python bench.py LIDB WORKDIR [--repeat N]
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure  # noqa: E402


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
    os.makedirs(work, exist_ok=True)
    folder, ldm = os.path.join(work, "sd15-diffusers"), os.path.join(work, "sd15-ldm.safetensors")
    if not os.path.exists(ldm):
        print("writing an SD 1.5-size random pipeline (diffusers) ...", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "make_sd15.py"), folder], check=True)
        subprocess.run([lidb, "convert", folder, "-o", os.path.join(work, "tmp.lidb")], check=True)
        subprocess.run([lidb, "export", os.path.join(work, "tmp.lidb"), "--format", "single-file", "-o", ldm], check=True)
        os.remove(os.path.join(work, "tmp.lidb"))
    size = os.path.getsize(ldm)
    py = ("import sys, torch; from safetensors.torch import load_file, save_file; "
          "t = load_file(sys.argv[1]); t = {k: (v.half() if v.is_floating_point() else v) for k, v in t.items()}; "
          "save_file(t, sys.argv[2])")
    cases = {
        "python safetensors load + .half() + save": ([sys.executable, "-c", py, ldm, os.path.join(work, "py-f16.safetensors")], "py-f16.safetensors"),
        "lidb convert single-file -> f16 base.lidb": ([lidb, "convert", ldm, "-o", os.path.join(work, "sd15-f16.lidb"), "--dtype", "f16"], "sd15-f16.lidb"),
    }
    subprocess.run(["cat", ldm], stdout=subprocess.DEVNULL, check=True)  # page cache warm for every case
    results = {}
    for _ in range(repeat):
        for name, (cmd, out) in cases.items():
            p = os.path.join(work, out)
            if os.path.exists(p):
                os.remove(p)
            results.setdefault(name, []).append(measure(cmd)[:2])
    anchor = statistics.median(t for t, _ in results["python safetensors load + .half() + save"])
    print(f"\ninput: {size / 1e9:.2f} GB single-file f32 checkpoint (LDM names); median of {repeat}; page cache warm")
    print(f"{'case':45s} {'median s':>9s} {'ratio':>6s} {'peak RSS MiB':>13s}")
    report = {"input_bytes": size, "repeat": repeat, "cases": {}}
    for name, rows in results.items():
        med = statistics.median(t for t, _ in rows)
        rss = max(r for _, r in rows)
        report["cases"][name] = {"median_s": med, "all_s": [t for t, _ in rows], "ratio_to_python": med / anchor, "peak_rss_mib": rss}
        print(f"{name:45s} {med:9.2f} {med / anchor:6.2f} {rss:13.0f}")
    print("note: lidb also maps names to diffusers layout, computes fingerprints (SHA-256) and fsyncs; Python does none of these.")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
