"""The format benchmark: lidb against the Python `safetensors` library on the same 2 GB file, in
the same run. Each measured command runs as its own process; wall time and that process's peak
RSS (from wait4) are recorded. Results are printed as a table and written as JSON.

    python Benchmarks/format/bench.py LIDB_BINARY WORKDIR [--repeat N]
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import measure  # noqa: E402


def drop_file(path):
    if os.path.exists(path):
        os.remove(path)


def main():
    lidb, work = sys.argv[1], sys.argv[2]
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
    os.makedirs(work, exist_ok=True)
    big = os.path.join(work, "big.safetensors")
    if not os.path.exists(big):
        print("writing the 1,000-tensor input with the safetensors library ...", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "make_big.py"), big], check=True)
    size = os.path.getsize(big)
    py_roundtrip = (
        "import sys; from safetensors.numpy import load_file, save_file; "
        "t = load_file(sys.argv[1]); save_file(t, sys.argv[2], metadata={'format': 'pt'})"
    )
    outputs = {
        "python safetensors load_file + save_file": os.path.join(work, "py.safetensors"),
        "lidb convert safetensors -> safetensors": os.path.join(work, "l.safetensors"),
        "lidb convert safetensors -> lidb": os.path.join(work, "l.lidb"),
    }
    commands = {
        "python safetensors load_file + save_file": [sys.executable, "-c", py_roundtrip, big, outputs["python safetensors load_file + save_file"]],
        "lidb convert safetensors -> safetensors": [lidb, "convert", big, "-o", outputs["lidb convert safetensors -> safetensors"]],
        "lidb convert safetensors -> lidb": [lidb, "convert", big, "-o", outputs["lidb convert safetensors -> lidb"]],
    }
    # Warm the page cache so every case reads from memory.
    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)
    results = {}
    for _ in range(repeat):
        for name, cmd in commands.items():
            drop_file(outputs[name])
            t, rss, _ = measure(cmd)
            results.setdefault(name, []).append((t, rss))
    same = subprocess.run(["cmp", "-s", outputs["python safetensors load_file + save_file"],
                           outputs["lidb convert safetensors -> safetensors"]]).returncode == 0
    _, _, bench_lidb = measure([lidb, "bench", "format", os.path.join(work, "l.lidb"), "--repeat", "50"])
    _, _, bench_st = measure([lidb, "bench", "format", big, "--repeat", "50"])
    open_lidb, open_st = json.loads(bench_lidb), json.loads(bench_st)

    anchor = statistics.median(t for t, _ in results["python safetensors load_file + save_file"])
    report = {"identical_outputs": same, "input_bytes": size, "tensors": 1000, "repeat": repeat, "cases": {}, "open": {"lidb": open_lidb, "safetensors": open_st}}
    print(f"\ninput: {size / 1e9:.2f} GB, 1000 tensors; median of {repeat} runs; page cache warm")
    print(f"{'case':45s} {'median s':>9s} {'GB/s':>6s} {'ratio':>6s} {'peak RSS MiB':>13s}")
    for name, rows in results.items():
        med = statistics.median(t for t, _ in rows)
        rss = max(r for _, r in rows)
        report["cases"][name] = {"median_s": med, "all_s": [t for t, _ in rows], "gbps": size / med / 1e9,
                                 "ratio_to_python": med / anchor, "peak_rss_mib": rss}
        print(f"{name:45s} {med:9.2f} {size / med / 1e9:6.2f} {med / anchor:6.2f} {rss:13.0f}")
    print(f"\nopen + validate (.lidb, map + header parse, 1000 tensors): median {open_lidb['open_ms_median']:.2f} ms")
    print(f"open + validate (.safetensors):                             median {open_st['open_ms_median']:.2f} ms")
    print(f"CRC-32C over all tensors: {open_lidb['crc_first_pass_gbps']:.2f} GB/s first pass, {open_lidb['crc_warm_gbps']:.2f} GB/s warm "
          f"(hardware: {open_lidb['crc_hardware']}); lidb verify: {open_lidb['verify_seconds']:.2f} s")
    print(f"python's and lidb's safetensors outputs are byte-identical: {same}")
    print("note: lidb fsyncs its output before renaming it into place; the Python library does not sync.")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nresults: {os.path.join(work, 'results.json')}")


if __name__ == "__main__":
    main()
