"""The sample world's driver (`make world`): runs the stages in order, skipping those whose outputs exist.

    python converters/world/make_world.py                 # every stage that has not produced its outputs
    python converters/world/make_world.py --force sd      # rerun a stage (and what depends on it)
    python converters/world/make_world.py --list          # stages, their outputs, done or not

Each stage is a script of this folder run in its own process (under /usr/bin/time -v when it
exists, so its wall time and peak RSS are recorded in <scratch>/logs/STAGE.time and
samples/world/stage-times.json). A stage that was interrupted resumes from its checkpoint in the
scratch folder (LIDB_WORLD_SCRATCH, default ~/.cache/lidb-world) when it is run again.
Threads: LIDB_WORLD_THREADS (default 1).

Stages (issue 14):
    render    rendered photos (scratch) and the committed held-out photos       data.py
    reader    the attribute reader and its accuracy table                       reader.py
    vae       the AutoencoderKL                                                 vae.py
    latents   the training photos encoded, the VAE scaling factor               latents.py
    text      the CLIP text encoder pretrained on the captions                  text.py
    sd        the UNet on the captions (text encoder and VAE frozen)            sd.py
    export    samples/world/pipeline (diffusers folder, F16)                    export.py
    eval      attribute accuracy of generated held-out captions (diffusers)      evaluate.py
    fits      per-identity LiDB fits (`fits.py --shard i/n` splits them)         fits.py
    encoder   the hypernetwork's image encoder, pretrained on attribute words     encoder.py
    hyper     the hypernetwork, under torchrun (2 processes)                   hyper.py
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time

from common import HERE, OUT, scratch, write_json

STAGES = [
    ("render", "data"),
    ("reader", "reader"),
    ("vae", "vae"),
    ("latents", "latents"),
    ("text", "text"),
    ("sd", "sd"),
    ("export", "export"),
    ("eval", "evaluate"),
    ("fits", "fits"),
    ("encoder", "encoder"),
    ("hyper", "hyper"),
]
# What each stage's outputs are made from (earlier stages' outputs). latents and sd also use the
# reader, for reports only (reconstruction accuracy, progress probes), so it is not listed there.
DEPS = {
    "render": [],
    "reader": ["render"],
    "vae": ["render"],
    "latents": ["render", "vae"],
    "text": ["render"],
    "sd": ["render", "latents", "text"],
    "export": ["vae", "sd"],
    "eval": ["export", "reader"],
    "fits": ["export", "reader"],
    "encoder": [],
    "hyper": ["fits", "encoder"],
}


def plan(done: dict, forced: set, committed_missing: set) -> dict:
    """Which stages run: forced stages and stages with committed outputs (samples/world) that are
    missing, then every stage downstream of those (their inputs change), then — for every stage that
    runs — each stage it reads whose outputs are missing (the scratch intermediates are rebuilt only
    when something that reads them runs). On a fresh clone, whose committed outputs exist, nothing
    runs; `--force sd` rebuilds what sd reads if the scratch folder lacks it, and reruns export and eval."""
    order = [n for n, _ in STAGES]
    run = {n: n in forced or n in committed_missing for n in order}
    for n in order:
        if any(run[d] for d in DEPS[n]):
            run[n] = True
    for n in reversed(order):
        if run[n]:
            for d in DEPS[n]:
                if not done[d]:
                    run[d] = True
    return run


def outputs(module: str) -> list:
    return importlib.import_module(module).outputs()


def parse_time(text: str) -> dict:
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        parts = [float(x) for x in m.group(1).split(":")]
        out["wall_s"] = round(sum(p * 60 ** i for i, p in enumerate(reversed(parts))), 1)
    for key, pat in (("user_s", r"User time \(seconds\): (\S+)"), ("system_s", r"System time \(seconds\): (\S+)")):
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_mib"] = round(int(m.group(1)) / 1024, 1)
    return out


def run_stage(name: str, module: str) -> dict:
    logs = scratch() / "logs"
    logs.mkdir(exist_ok=True)
    cmd = [sys.executable, str(HERE / f"{module}.py")]
    timer = os.access("/usr/bin/time", os.X_OK)
    tfile = logs / f"{name}.time"
    if timer:
        cmd = ["/usr/bin/time", "-v", "-o", str(tfile)] + cmd
    print(f"== {name}: {' '.join(cmd)} (log {logs / (name + '.log')})", flush=True)
    t0 = time.time()
    with open(logs / f"{name}.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            log.flush()
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"stage {name} failed (exit {code}); log {logs / (name + '.log')}")
    rec = parse_time(tfile.read_text()) if timer and tfile.exists() else {"wall_s": round(time.time() - t0, 1)}
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="append", default=[], help="rerun this stage even if its outputs exist")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    known = {n for n, _ in STAGES}
    for f in args.force:
        if f not in known:
            raise SystemExit(f"--force: unknown stage {f!r} (stages: {', '.join(n for n, _ in STAGES)})")
    times_path = OUT / "stage-times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    outs = {name: outputs(module) for name, module in STAGES}
    done = {name: all(p.exists() for p in outs[name]) for name, _ in STAGES}
    committed_missing = {name for name, _ in STAGES if any(OUT in p.parents and not p.exists() for p in outs[name])}
    run = plan(done, set(args.force), committed_missing)
    for name, module in STAGES:
        if args.list:
            state = ("done" if done[name] else "missing") + (", would run" if run[name] else "")
            print(f"{name:8s} {state}: " + ", ".join(str(p) for p in outs[name]))
            continue
        if not run[name]:
            print(f"== {name}: " + ("outputs exist" if done[name] else "not needed (nothing that reads it runs)")
                  + ", skipped", flush=True)
            continue
        rec = run_stage(name, module)
        rec["threads"] = int(os.environ.get("LIDB_WORLD_THREADS", "1"))
        times[name] = rec
        write_json(times_path, times)
        print(f"== {name}: {json.dumps(rec)}", flush=True)
    if not args.list:
        stages = {k: v for k, v in times.items() if isinstance(v, dict) and k in known}
        total = sum(r.get("wall_s", 0) for r in stages.values())
        print(f"== stage times (wall, s): {json.dumps({k: v.get('wall_s') for k, v in stages.items()})}; total {total:.0f} s")


if __name__ == "__main__":
    main()
