"""Shared by the benchmark drivers: run a command as its own process and measure it."""
import os
import sys
import subprocess
import time


def measure(cmd):
    """Runs `cmd` (whose output must be small); returns (wall seconds, that process's peak RSS in
    MiB from wait4, its stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return elapsed, usage.ru_maxrss / 1024.0, out


def sd15_base(lidb, work):
    """The SD 1.5-size random-weight pipeline of the base benchmark in `work`: its diffusers
    folder (made by Benchmarks/base/make_sd15.py when missing) and its f32 base (converted by
    `lidb convert` when missing). Returns (folder, base)."""
    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.path.join(work, "sd15-diffusers")
    if not os.path.isdir(folder):
        subprocess.run([sys.executable, os.path.join(here, "base", "make_sd15.py"), folder], check=True)
    base = os.path.join(work, "sd15-f32.lidb")
    if not os.path.exists(base):
        subprocess.run([lidb, "convert", folder, "-o", base], check=True, capture_output=True)
    return folder, base
