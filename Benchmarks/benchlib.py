"""Shared by the benchmark drivers: run a command as its own process and measure it."""
import os
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
