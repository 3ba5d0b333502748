"""The format benchmark: `lidb convert` against every way a user would copy the same 2 GB
safetensors file with the Python `safetensors` library, in the same run.

Anchors (each a separate process):
  - `safetensors.torch` load_file + save_file: the library's default and most used path (the load
    is memory-mapped);
  - the same followed by an fsync of the output, which is what lidb does by default;
  - `safetensors.numpy` load_file + save_file (copies every tensor into numpy first).

lidb runs in both directions of interest (→ .safetensors, → .lidb), once with its default
durability (temporary file, fsync, rename) and once with `--no-sync`, so the cost of the sync is
reported separately. Rounds alternate the cases; each number is a median over the rounds.

Before every measured command the previous output is deleted and `sync` flushes the page cache's
dirty pages, so no case pays for an earlier case's writeback. "Warm" runs read the input from the
page cache; "cold" runs (only where the page cache can be dropped: root on Linux) drop it first.

Wall time and each process's peak RSS (from wait4) are recorded; results are printed as a table
and written as JSON.

    python Benchmarks/format/bench.py LIDB_BINARY WORKDIR [--repeat N] [--cold-repeat N]
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure  # noqa: E402

# Each Python anchor also reports its own time for load + save (+ fsync) alone, without the
# interpreter's start and the imports (about 1.3 s for torch here), as a user converting inside a
# running Python session would see it. Ratios use that in-process time: the stricter anchor.
TORCH = (
    "import sys, time, json; from safetensors.torch import load_file, save_file; t0 = time.perf_counter(); "
    "t = load_file(sys.argv[1]); save_file(t, sys.argv[2], metadata={'format': 'pt'}); "
    "print(json.dumps({'seconds': time.perf_counter() - t0}))"
)
TORCH_SYNC = (
    "import sys, time, json, os; from safetensors.torch import load_file, save_file; t0 = time.perf_counter(); "
    "t = load_file(sys.argv[1]); save_file(t, sys.argv[2], metadata={'format': 'pt'}); "
    "fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd); "
    "print(json.dumps({'seconds': time.perf_counter() - t0}))"
)
NUMPY = (
    "import sys, time, json; from safetensors.numpy import load_file, save_file; t0 = time.perf_counter(); "
    "t = load_file(sys.argv[1]); save_file(t, sys.argv[2], metadata={'format': 'pt'}); "
    "print(json.dumps({'seconds': time.perf_counter() - t0}))"
)


def can_drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    repeat = arg("--repeat", 5)
    cold_repeat = arg("--cold-repeat", 3)
    os.makedirs(work, exist_ok=True)
    big = os.path.join(work, "big.safetensors")
    if not os.path.exists(big):
        print("writing the 1,000-tensor input with the safetensors library ...", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "make_big.py"), big], check=True)
    size = os.path.getsize(big)
    out = {
        "torch": os.path.join(work, "torch.safetensors"),
        "numpy": os.path.join(work, "numpy.safetensors"),
        "st": os.path.join(work, "l.safetensors"),
        "lidb": os.path.join(work, "l.lidb"),
    }
    py = sys.executable
    # name -> (command, output, anchor for its ratio)
    cases = {
        "safetensors.torch load_file + save_file": ([py, "-c", TORCH, big, out["torch"]], out["torch"], None),
        "safetensors.torch load_file + save_file + fsync": ([py, "-c", TORCH_SYNC, big, out["torch"]], out["torch"], None),
        "safetensors.numpy load_file + save_file": ([py, "-c", NUMPY, big, out["numpy"]], out["numpy"], None),
        "lidb convert -> safetensors": ([lidb, "convert", big, "-o", out["st"]], out["st"],
                                        "safetensors.torch load_file + save_file + fsync"),
        "lidb convert -> safetensors --no-sync": ([lidb, "convert", big, "-o", out["st"], "--no-sync"], out["st"],
                                                  "safetensors.torch load_file + save_file"),
        "lidb convert -> lidb": ([lidb, "convert", big, "-o", out["lidb"]], out["lidb"],
                                 "safetensors.torch load_file + save_file + fsync"),
        "lidb convert -> lidb --no-sync": ([lidb, "convert", big, "-o", out["lidb"], "--no-sync"], out["lidb"],
                                           "safetensors.torch load_file + save_file"),
    }

    def run_rounds(rounds, cold):
        results = {}
        for _ in range(rounds):
            for name, (cmd, output, _) in cases.items():
                if os.path.exists(output):
                    os.remove(output)
                if cold:
                    drop_caches()
                else:
                    subprocess.run(["sync"], check=True)
                    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)
                t, rss, stdout = measure(cmd)
                inner = json.loads(stdout)["seconds"] if cmd[0] == py else t
                results.setdefault(name, []).append((t, rss, inner))
        return results

    warm = run_rounds(repeat, cold=False)
    identical = {}
    for a, b in [("torch", "st"), ("numpy", "st")]:
        identical[f"{a} vs lidb"] = subprocess.run(["cmp", "-s", out[a], out[b]]).returncode == 0
    verify = subprocess.run([lidb, "verify", out["lidb"]], capture_output=True, text=True)
    cold = run_rounds(cold_repeat, cold=True) if cold_repeat > 0 and can_drop_caches() else None

    subprocess.run(["sync"], check=True)
    _, _, bench_lidb = measure([lidb, "bench", "format", out["lidb"], "--repeat", "50"])
    _, _, bench_st = measure([lidb, "bench", "format", big, "--repeat", "50"])
    open_lidb, open_st = json.loads(bench_lidb), json.loads(bench_st)

    report = {"input_bytes": size, "tensors": 1000, "repeat": repeat, "cold_repeat": cold_repeat if cold else 0,
              "identical_outputs": identical, "lidb_verify_clean": verify.returncode == 0,
              "warm": {}, "cold": {}, "open": {"lidb": open_lidb, "safetensors": open_st}}

    def table(label, results, key):
        print(f"\n{label}: {size / 1e9:.2f} GB, 1000 tensors; median of {len(next(iter(results.values())))} alternating rounds")
        print("(process: the whole command; in-process: a Python anchor's load + save without interpreter start and imports)")
        print(f"{'case':48s} {'process s':>9s} {'in-proc s':>9s} {'GB/s':>6s} {'ratio':>6s}  {'anchor of the ratio (in-process)':48s} {'peak RSS MiB':>12s}")
        meds = {n: statistics.median(t for t, _, _ in rows) for n, rows in results.items()}
        inner = {n: statistics.median(i for _, _, i in rows) for n, rows in results.items()}
        for name, rows in results.items():
            med = meds[name]
            rss = max(r for _, r, _ in rows)
            anchor = cases[name][2]
            ratio = med / inner[anchor] if anchor else None
            ratio_process = med / meds[anchor] if anchor else None
            report[key][name] = {"median_s": med, "all_s": [t for t, _, _ in rows], "in_process_median_s": inner[name],
                                 "gbps": size / med / 1e9, "anchor": anchor, "ratio_to_in_process": ratio,
                                 "ratio_to_process": ratio_process, "peak_rss_mib": rss}
            r = f"{ratio:6.2f}" if ratio else f"{'':6s}"
            ins = f"{inner[name]:9.2f}" if cases[name][0][0] == py else f"{'':9s}"
            print(f"{name:48s} {med:9.2f} {ins} {size / med / 1e9:6.2f} {r}  {anchor or '':48s} {rss:12.0f}")

    table("page cache warm", warm, "warm")
    if cold:
        table("page cache dropped before each run (cold)", cold, "cold")
    else:
        print("\ncold-cache runs skipped (the page cache cannot be dropped here: needs root on Linux)")
    print(f"\nopen + validate (.lidb, map + header parse, 1000 tensors): median {open_lidb['open_ms_median']:.2f} ms")
    print(f"open + validate (.safetensors):                             median {open_st['open_ms_median']:.2f} ms")
    print(f"CRC-32C over all tensors: {open_lidb['crc_first_pass_gbps']:.2f} GB/s first pass, {open_lidb['crc_warm_gbps']:.2f} GB/s warm "
          f"(hardware: {open_lidb['crc_hardware']}); lidb verify: {open_lidb['verify_seconds']:.2f} s")
    print(f"lidb's safetensors output is byte-identical to safetensors.torch's: {identical['torch vs lidb']}, "
          f"to safetensors.numpy's: {identical['numpy vs lidb']}; lidb verify of the .lidb output clean: {verify.returncode == 0}")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nresults: {os.path.join(work, 'results.json')}")
    if not (identical["torch vs lidb"] and verify.returncode == 0):
        raise SystemExit("outputs differ or the .lidb output does not verify")


if __name__ == "__main__":
    main()
