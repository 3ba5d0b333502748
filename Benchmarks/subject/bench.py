"""Subject benchmark: merge / unmerge / live switching of lidb subjects against PEFT's merge and
unmerge of a rank-1 LoRA, on the same SD 1.5-size random UNet, in the same run.

    python bench.py LIDB WORKDIR [--repeat N]
WORKDIR must hold the base benchmark's pipeline (Benchmarks/base: sd15-diffusers); the f32 base and
the subjects are made here with lidb.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    repeat = sys.argv[sys.argv.index("--repeat") + 1] if "--repeat" in sys.argv else "7"
    folder = os.path.join(work, "sd15-diffusers")
    if not os.path.isdir(folder):
        subprocess.run([sys.executable, os.path.join(HERE, "..", "base", "make_sd15.py"), folder], check=True)
    base = os.path.join(work, "sd15-f32.lidb")
    if not os.path.exists(base):
        run([lidb, "convert", folder, "-o", base])
    results = {}
    for targets in ("unet-attn", "paper"):
        subject = os.path.join(work, f"{targets}.lidb")
        run([lidb, "subject", "init", "--base", base, "--targets", targets, "--seed", "1", "--std", "0.02", "-o", subject])
        results[targets] = json.loads(run([lidb, "bench", "subject", "--base", base, "--subject", subject, "--repeat", repeat]))
        results[targets]["file_bytes"] = os.path.getsize(subject)
    peft = json.loads(run([sys.executable, os.path.join(HERE, "peft_anchor.py"), os.path.join(folder, "unet"), "--repeat", repeat]))
    print(f"\nSD 1.5-size random UNet (f32), medians of {repeat}; 2 cores")
    print(f"PEFT rank-1 LoRA, {peft['layers']} UNet attention layers ({peft['weights_touched'] / 1e6:.0f} M weights): "
          f"merge {peft['merge_ms']:.1f} ms, unmerge {peft['unmerge_ms']:.1f} ms; "
          f"{peft['changed_after_merge_unmerge']:,} weights differ after merge + unmerge")
    for targets, r in results.items():
        print(f"lidb {targets} subject ({r['layers']} layers, {r['weights_touched'] / 1e6:.0f} M weights, {r['file_bytes']} bytes): "
              f"merge {r['merge_ms']:.1f} ms ({r['merge_ms'] / peft['merge_ms']:.2f}× PEFT), "
              f"unmerge restore {r['unmerge_restore_ms']:.1f} ms ({r['unmerge_restore_ms'] / peft['unmerge_ms']:.2f}×, bit-exact), "
              f"unmerge subtract {r['unmerge_subtract_ms']:.1f} ms ({r['unmerge_subtract_ms'] / peft['unmerge_ms']:.2f}×), "
              f"live switch {r['live_switch_ms']:.3f} ms; first basis generation {r['bases_cold_ms']:.0f} ms")
    with open(os.path.join(work, "subject-results.json"), "w") as f:
        json.dump({"peft": peft, "lidb": results}, f, indent=2)


if __name__ == "__main__":
    main()
