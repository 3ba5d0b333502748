"""The personalisation table of issue 14: how well lidb's subjects keep a held-out identity and follow prompts.

    python converters/world/eval_world.py PATH/TO/lidb [--conditions a,d40,d160] [--identities N]
    make eval-world                                   # LIDB_BIN: a built lidb (default: the release build)

For every held-out identity (samples/world/heldout/NNNN.png, its attributes in identities.json)
and four prompts — the canonical "a photo of sks face" and three that change one context attribute
(a blue hat, the sketch style, a pink background; worded as the pipeline's training captions word
them, space.caption) — lidb generates SEEDS images per prompt (DDIM, evaluate.STEPS steps, guidance
evaluate.GUIDANCE, 64×64) under each condition:

    a     the base, trigger dropped ("a photo of face, …"): what the model draws without the subject
    b     the hypernetwork's prediction (lidb personalize)
    c     the prediction + the 40-step rank-relaxed fast finetune (lidb finetune --hypernet)
    c-lr1e-3  the same at learning rate 1e-3 (lidb's default for the fast finetune is 1e-4)
    d40   a LiDB subject trained from scratch, 40 steps (lidb finetune --train lidb)
    d160  the same, 160 steps

The attribute reader (reader.py) reads every image: identity accuracy is the seven identity
attributes against the held-out identity's truth (all prompts), context accuracy whether the
prompt's context attribute is there (the photo style for the canonical prompt).

The finetunes (c, d) train on space.FIT_PROMPT, "a photo of sks face, on a grey background" — the
photo's background named, as the fits and the hypernetwork's denoising loss name it — so that the
trigger takes the face and "on a pink background" stays editable.

b, c and c-lr1e-3 need the world hypernetwork (samples/world/hypernetwork.safetensors + hypernetwork.json,
or --hypernet FILE --hypernet-config FILE); without it they are skipped with a notice. Work is
cached per condition and identity under $LIDB_WORLD_SCRATCH/eval-world/ (default
~/.cache/lidb-world), keyed by a hash of what it is made from (the lidb binary, the pipeline, the
hypernetwork, the photo, the subject command, the prompts and generation settings; the seeds follow
seed_of(), a fixed rule — changing it needs a fresh folder): a rerun computes only what changed,
and a changed reader only re-reads the cached images. Conditions not run this time are carried over from an existing eval-world.json
(and their column of eval-world.png) when its settings are the same.

Writes samples/world/eval-world.json (settings, per condition: identity and context accuracy,
per-attribute accuracy, times), eval-world.md (the table) and eval-world.png (a row per identity,
first 8: photo | a | b | c | c-lr1e-3 | d40 | d160, the canonical prompt's first seed; empty where a condition
did not run).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import OUT, ROOT, log, scratch, write_json
from space import ATTRIBUTES, CONTEXT, FIT_PROMPT, IDENTITY, caption

import evaluate  # noqa: E402  (sets up torch; PIPELINE, STEPS, GUIDANCE, sheet)
from reader import load_reader, read_attributes  # noqa: E402

HELDOUT = OUT / "heldout"
HYPERNET = OUT / "hypernetwork.safetensors"
HYPERNET_CONFIG = OUT / "hypernetwork.json"
CONDITIONS = ("a", "b", "c", "c-lr1e-3", "d40", "d160")
DESCRIPTIONS = {
    "a": "base, class prompt (trigger dropped)",
    "b": "hypernetwork prediction (lidb personalize)",
    "c": "prediction + fast finetune, 40 steps (lidb finetune --hypernet)",
    "c-lr1e-3": "prediction + fast finetune, 40 steps at lr 1e-3 (lidb finetune --hypernet --lr 1e-3)",
    "d40": "LiDB from scratch, 40 steps (lidb finetune --train lidb)",
    "d160": "LiDB from scratch, 160 steps (lidb finetune --train lidb)",
}
NEEDS_HYPERNET = {"b", "c", "c-lr1e-3"}
SEEDS = 2
SHEET_IDENTITIES = 8
SIZE = 64
TRIGGER, CLASS = "sks", "face"
# (name, context, whether the background is named, the context attribute the prompt asks for)
PROMPTS = [
    ("canonical", {"style": "photo", "background": "grey", "hat": "none"}, False, "style"),
    ("blue hat", {"style": "photo", "background": "grey", "hat": "blue"}, False, "hat"),
    ("sketch", {"style": "sketch", "background": "grey", "hat": "none"}, False, "style"),
    ("pink background", {"style": "photo", "background": "pink", "hat": "none"}, True, "background"),
]


def prompt_text(k: int, subject: str) -> str:
    _, ctx, named_bg, _ = PROMPTS[k]
    idx = {a: CONTEXT[a].index(v) for a, v in ctx.items()}
    return caption(None, idx, keep={"background": named_bg}, subject=subject)


def seed_of(identity: int, k: int, j: int) -> int:
    """The same seed for every condition: the conditions are compared image for image."""
    return 1000 * identity + 10 * k + j


def sha256_file(path: Path, h=None):
    own = h is None
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() if own else h


def sha256_tree(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0")
            sha256_file(p, h)
    return h.hexdigest()


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run(cmd: list) -> float:
    t0 = time.time()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"eval_world: command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr.strip()}")
    return time.time() - t0


def publish(tmp: Path, final: Path) -> None:
    """A finished work folder put in place in one rename (an interrupted run leaves only tmp)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


class Evaluation:
    def __init__(self, args):
        self.lidb = Path(args.lidb).resolve()
        self.work = scratch() / "eval-world"
        self.work.mkdir(parents=True, exist_ok=True)
        # One run at a time per scratch folder (two would compute, and replace, the same units).
        self._lock = open(self.work / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"eval_world: another evaluation is running in {self.work}; wait for it or set LIDB_WORLD_SCRATCH")
        meta = json.loads((HELDOUT / "identities.json").read_text())
        self.identities = meta["identities"][: args.identities]
        self.binary = sha256_file(self.lidb)
        self.pipeline = sha256_tree(evaluate.PIPELINE)
        self.reader = sha256_file(OUT / "reader.safetensors")
        self.hypernet = None
        hn, hc = Path(args.hypernet), Path(args.hypernet_config)
        if hn.exists() and hc.exists():
            self.hypernet = (hn, hc, key(sha256_file(hn), sha256_file(hc)))
        self.base = self.converted_base()
        self.hyper_lidb = None

    # Shared inputs, each cached by what it is made from.
    def converted_base(self) -> Path:
        out = self.work / f"base-{key(self.binary, self.pipeline)}.lidb"
        if not out.exists():
            log("converting samples/world/pipeline to a base")
            run([self.lidb, "convert", evaluate.PIPELINE, "-o", out])  # lidb writes its outputs atomically
        return out

    def converted_hypernet(self) -> Path:
        if self.hyper_lidb is None:
            hn, hc, h = self.hypernet
            out = self.work / f"hypernet-{key(self.binary, h)}.lidb"
            if not out.exists():
                log(f"converting {hn.name} to a .lidb")
                run([self.lidb, "convert", hn, "--kind", "hypernetwork", "--config", hc, "-o", out])
            self.hyper_lidb = out
        return self.hyper_lidb

    def subject_command(self, cond: str, photo, out, base=None, hyper=None):
        """The lidb command that makes the condition's subject (None for the base). `base` and
        `hyper` default to the converted files; the cache key passes placeholders."""
        base = base or self.base
        if cond == "a":
            return None
        if cond in NEEDS_HYPERNET:
            hyper = hyper or self.converted_hypernet()
        if cond == "b":
            return [self.lidb, "personalize", "--hypernet", hyper, "--base", base, "--image", photo,
                    "--trigger", TRIGGER, "--class", CLASS, "-o", out]
        if cond == "c":
            return [self.lidb, "finetune", "--base", base, "--image", photo, "--hypernet", hyper,
                    "--prompt", FIT_PROMPT, "--resolution", SIZE, "-o", out]
        if cond == "c-lr1e-3":
            return [self.lidb, "finetune", "--base", base, "--image", photo, "--hypernet", hyper, "--lr", "1e-3",
                    "--prompt", FIT_PROMPT, "--resolution", SIZE, "-o", out]
        steps = int(cond[1:])
        return [self.lidb, "finetune", "--base", base, "--image", photo, "--train", "lidb", "--steps", steps,
                "--prompt", FIT_PROMPT, "--resolution", SIZE, "-o", out]

    def unit_key(self, cond: str, ident: dict, photo_hash: str) -> str:
        cmd = self.subject_command(cond, "PHOTO", "OUT", base="BASE", hyper="HYPERNET")
        cmd = [str(c) for c in cmd[1:]] if cmd else None
        generation = [evaluate.STEPS, evaluate.GUIDANCE, SIZE, SEEDS, [prompt_text(k, "X") for k in range(len(PROMPTS))]]
        return key(self.binary, self.pipeline, self.hypernet[2] if cond in NEEDS_HYPERNET else None, photo_hash, cmd,
                   ident["identity"], generation)

    def unit_dir(self, cond: str, ident: dict) -> Path:
        k = self.unit_key(cond, ident, sha256_file(HELDOUT / ident["file"]))
        return self.work / cond / f"{ident['identity']}-{k}"

    def unit(self, cond: str, index: int, ident: dict) -> dict:
        """One condition for one identity: the subject, SEEDS images per prompt, the reader's reads."""
        photo = HELDOUT / ident["file"]
        final = self.unit_dir(cond, ident)
        result_file = final / "result.json"
        if result_file.exists():
            result = json.loads(result_file.read_text())
            if result.get("reader") != self.reader:
                result["reads"] = self.read(final, result["images"])
                result["reader"] = self.reader
                write_json(result_file, result)
            result["cached"] = True
            return result
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by an interrupted run (the lock excludes a live one)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        subject = tmp / "subject.lidb"
        cmd = self.subject_command(cond, photo, subject)
        subject_seconds = run(cmd) if cmd else 0.0
        images, gen_seconds = [], 0.0
        for p in range(len(PROMPTS)):
            text = prompt_text(p, CLASS if cond == "a" else f"{TRIGGER} {CLASS}")
            for j in range(SEEDS):
                name = f"p{p}-s{j}.png"
                g = [self.lidb, "generate", "--model", self.base, "--prompt", text, "--sampler", "ddim", "--steps", evaluate.STEPS,
                     "--cfg", evaluate.GUIDANCE, "--width", SIZE, "--height", SIZE, "--seed", seed_of(index, p, j), "-o", tmp / name]
                if cmd:
                    g[2:2] = ["--subject", subject]
                gen_seconds += run(g)
                images.append({"file": name, "prompt": text, "prompt_index": p, "seed": seed_of(index, p, j)})
        result = {"condition": cond, "identity": ident["identity"], "subject_seconds": round(subject_seconds, 2),
                  "generation_seconds": round(gen_seconds, 2), "images": images,
                  "subject_bytes": subject.stat().st_size if cmd else None,
                  "reads": self.read(tmp, images), "reader": self.reader}
        write_json(tmp / "result.json", result)
        publish(tmp, final)
        result["cached"] = False
        return result

    def read(self, folder: Path, images: list) -> list:
        from PIL import Image

        arr = np.stack([np.asarray(Image.open(folder / im["file"]).convert("RGB")) for im in images])
        return read_attributes(self.model_reader(), arr).tolist()

    def model_reader(self):
        if not hasattr(self, "_reader"):
            self._reader = load_reader()
        return self._reader

    def image(self, cond: str, index: int, ident: dict, name: str):
        from PIL import Image

        return np.asarray(Image.open(self.unit_dir(cond, ident) / name).convert("RGB"))


def summarise(cond: str, results: list, identities: list) -> dict:
    """Accuracies over every image of the condition: identity (7 attributes vs the truth) and
    context (the prompt's attribute), per attribute and per prompt."""
    id_keys = list(IDENTITY)
    attr_index = {k: i for i, k in enumerate(ATTRIBUTES)}
    id_hits, ctx_hits = [], []
    per_prompt_ctx = {name: [] for name, *_ in PROMPTS}
    per_prompt_id = {name: [] for name, *_ in PROMPTS}
    for res, ident in zip(results, identities):
        truth = [IDENTITY[k].index(ident["attributes"][k]) for k in id_keys]
        for im, read in zip(res["images"], res["reads"]):
            name, ctx, _, attr = PROMPTS[im["prompt_index"]]
            row = [read[attr_index[k]] == t for k, t in zip(id_keys, truth)]
            id_hits.append(row)
            per_prompt_id[name].append(np.mean(row))
            hit = read[attr_index[attr]] == CONTEXT[attr].index(ctx[attr])
            ctx_hits.append(hit)
            per_prompt_ctx[name].append(hit)
    id_hits = np.asarray(id_hits, dtype=float)
    n = len(results)
    subject_s = [r["subject_seconds"] for r in results]
    gen_s = [r["generation_seconds"] for r in results]
    sizes = [r["subject_bytes"] for r in results if r.get("subject_bytes")]
    return {
        "description": DESCRIPTIONS[cond],
        "identities": n,
        "images": int(id_hits.shape[0]),
        "identity_accuracy": round(float(id_hits.mean()), 4),
        "context_accuracy": round(float(np.mean(ctx_hits)), 4),
        "identity_accuracy_per_attribute": {k: round(float(id_hits[:, i].mean()), 4) for i, k in enumerate(id_keys)},
        "identity_accuracy_per_prompt": {k: round(float(np.mean(v)), 4) for k, v in per_prompt_id.items()},
        "context_accuracy_per_prompt": {k: round(float(np.mean(v)), 4) for k, v in per_prompt_ctx.items()},
        "times": {"subject_seconds_per_identity": round(float(np.mean(subject_s)), 2),
                  "generation_seconds_per_image": round(float(np.sum(gen_s)) / max(1, int(id_hits.shape[0])), 2),
                  "subject_seconds_total": round(float(np.sum(subject_s)), 1),
                  "generation_seconds_total": round(float(np.sum(gen_s)), 1)},
        "subject_bytes": int(np.median(sizes)) if sizes else None,
    }


def chance_identity_accuracy() -> float:
    return round(float(np.mean([1 / len(v) for v in IDENTITY.values()])), 4)


def markdown(table: dict) -> str:
    s = table["settings"]
    lines = [
        "| condition | identity accuracy | context accuracy | subject time / identity | subject file | generation / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in CONDITIONS:
        r = table["conditions"].get(c)
        if r is None or "identity_accuracy" not in r:
            why = (r or {}).get("skipped", "not run")
            lines.append(f"| ({c}) {DESCRIPTIONS[c]} | — ({why}) | — | — | — | — |")
            continue
        t = r["times"]
        subject_time = f"{t['subject_seconds_per_identity']:.1f} s" if c != "a" else "—"
        size = f"{r['subject_bytes'] / 1000:.1f} KB" if r.get("subject_bytes") else "—"
        lines.append(f"| ({c}) {r['description']} | {100 * r['identity_accuracy']:.1f} % | {100 * r['context_accuracy']:.1f} % | "
                     f"{subject_time} | {size} | {t['generation_seconds_per_image']:.2f} s |")
    lines += ["", f"{s['identities']} held-out identities × {len(s['prompts'])} prompts × {s['seeds_per_prompt']} seeds; "
              f"lidb generate, DDIM {s['steps']} steps, guidance {s['guidance_scale']}, {s['size']}; read by the attribute "
              f"reader. Identity accuracy: the 7 identity attributes against the held-out identity (chance "
              f"{100 * s['chance_identity_accuracy']:.1f} %); context accuracy: the prompt's context attribute "
              "(the photo style for the canonical prompt). Times: wall time of the lidb commands, including "
              "loading the model, on a shared 2-core machine.", ""]
    ran = [c for c in CONDITIONS if "identity_accuracy" in table["conditions"].get(c, {})]
    if ran:
        lines += ["| attribute | " + " | ".join(f"({c})" for c in ran) + " |", "|---|" + "---:|" * len(ran)]
        for k in IDENTITY:
            lines.append(f"| {k} | " + " | ".join(f"{100 * table['conditions'][c]['identity_accuracy_per_attribute'][k]:.0f} %"
                                                  for c in ran) + " |")
        for name, *_ in PROMPTS:
            lines.append(f"| context: {name} | " + " | ".join(f"{100 * table['conditions'][c]['context_accuracy_per_prompt'][name]:.0f} %"
                                                             for c in ran) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="issue 14's personalisation table on the sample world")
    ap.add_argument("lidb", help="a built lidb")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="a comma-separated subset of " + ",".join(CONDITIONS))
    ap.add_argument("--identities", type=int, default=24, help="the first N held-out identities (default all 24)")
    ap.add_argument("--hypernet", default=str(HYPERNET), help="the world hypernetwork (safetensors)")
    ap.add_argument("--hypernet-config", default=str(HYPERNET_CONFIG), help="its config (json)")
    ap.add_argument("--out", default=str(OUT / "eval-world"), help="output stem (.json, .md, .png; default samples/world/eval-world)")
    args = ap.parse_args()
    conditions = [c for c in args.conditions.split(",") if c]
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad or not conditions:
        sys.exit(f"eval_world: --conditions: unknown condition {','.join(bad) or '(none)'}; choose from {','.join(CONDITIONS)}")
    if not Path(args.lidb).is_file():
        sys.exit(f"eval_world: {args.lidb}: no such lidb binary (build it: swift build -c release)")
    ev = Evaluation(args)
    skipped = {}
    if ev.hypernet is None:
        for c in conditions:
            if c in NEEDS_HYPERNET:
                skipped[c] = "no hypernetwork"
        if skipped:
            print(f"notice: {Path(args.hypernet).relative_to(ROOT) if Path(args.hypernet).is_relative_to(ROOT) else args.hypernet} "
                  f"(+ its config) is absent: skipping condition{'s' if len(skipped) > 1 else ''} {', '.join(skipped)}", flush=True)
    run_conds = [c for c in conditions if c not in skipped]
    stem = Path(args.out)
    settings = {
        "identities": len(ev.identities), "prompts": [prompt_text(k, f"{TRIGGER} {CLASS}") for k in range(len(PROMPTS))],
        "class_prompts": [prompt_text(k, CLASS) for k in range(len(PROMPTS))],
        "context_attribute": {name: f"{attr} = {ctx[attr]}" for name, ctx, _, attr in PROMPTS},
        "seeds_per_prompt": SEEDS, "seeds": "1000 · identity + 10 · prompt + j (the same for every condition)",
        "sampler": "ddim", "steps": evaluate.STEPS, "guidance_scale": evaluate.GUIDANCE, "size": f"{SIZE}x{SIZE}",
        "chance_identity_accuracy": chance_identity_accuracy(),
        "commands": {
            "a": "lidb generate --model base.lidb --prompt 'a photo of face…'",
            "b": "lidb personalize --hypernet H.lidb --base base.lidb --image PHOTO --trigger sks --class face",
            "c": "lidb finetune --base base.lidb --image PHOTO --hypernet H.lidb --prompt FIT --resolution 64 (40 steps)",
            "c-lr1e-3": "lidb finetune --base base.lidb --image PHOTO --hypernet H.lidb --lr 1e-3 --prompt FIT --resolution 64 (40 steps)",
            "d40": "lidb finetune --base base.lidb --image PHOTO --train lidb --steps 40 --prompt FIT --resolution 64",
            "d160": "lidb finetune --base base.lidb --image PHOTO --train lidb --steps 160 --prompt FIT --resolution 64",
            "FIT": FIT_PROMPT,
        },
    }
    # Conditions not run now are carried over from the previous table when its settings match.
    previous = {}
    old_json = stem.with_suffix(".json")
    if old_json.exists():
        old = json.loads(old_json.read_text())
        if old.get("settings") == settings:
            previous = old.get("conditions", {})
        else:
            print("notice: the previous table's settings differ; conditions not run now are left out", flush=True)

    results = {c: [] for c in run_conds}
    # What is left to compute (units without a cached result), for the ETA: the mean time of each
    # condition's units computed so far (of any condition's, before the first), times the units left.
    pending = {(c, i) for i, ident in enumerate(ev.identities) for c in run_conds
               if not (ev.unit_dir(c, ident) / "result.json").exists()}
    spent = {c: [] for c in run_conds}
    t_start = time.time()
    for i, ident in enumerate(ev.identities):
        t0 = time.time()
        fresh = 0
        for c in run_conds:
            u0 = time.time()
            r = ev.unit(c, i, ident)
            results[c].append(r)
            pending.discard((c, i))
            if not r["cached"]:
                spent[c].append(time.time() - u0)
                fresh += 1
        every = [t for ts in spent.values() for t in ts]
        eta = sum(np.mean(spent[c] or every or [0.0]) for c, _ in pending)
        dt = time.time() - t0
        cached = len(run_conds) - fresh
        log(f"identity {i + 1}/{len(ev.identities)} ({ident['identity']}): {', '.join(run_conds) or 'nothing to run'} "
            f"in {dt:.1f} s{f' ({cached} cached)' if cached else ''}; elapsed {(time.time() - t_start) / 60:.1f} min, "
            f"ETA {eta / 60:.1f} min")

    conditions_table = {}
    for c in CONDITIONS:
        if c in results:
            conditions_table[c] = summarise(c, results[c], ev.identities)
        elif c in previous and "identity_accuracy" in previous[c]:
            conditions_table[c] = {**previous[c], "carried_over": True}
        elif c in skipped:
            conditions_table[c] = {"description": DESCRIPTIONS[c], "skipped": skipped[c]}
    table = {
        "description": "Issue 14's personalisation table on the sample world: held-out identities (one photo each), "
                       "subjects made by lidb, images generated by lidb's runtime, read by the attribute reader "
                       "(converters/world/eval_world.py).",
        "settings": settings,
        "conditions": conditions_table,
    }
    write_json(old_json, table)
    md = stem.with_suffix(".md")
    tmp = md.with_name(f".{md.name}.tmp-{os.getpid()}")
    tmp.write_text(markdown(table))
    os.replace(tmp, md)
    write_sheet(ev, results, stem.with_suffix(".png"), conditions_table)
    for c, r in conditions_table.items():
        if "identity_accuracy" in r:
            log(f"({c}) identity {100 * r['identity_accuracy']:.1f} %, context {100 * r['context_accuracy']:.1f} %"
                f"{' (carried over)' if r.get('carried_over') else ''}")
    log(f"wrote {old_json.relative_to(ROOT) if old_json.is_relative_to(ROOT) else old_json}, {md.name}, {stem.with_suffix('.png').name}")


def write_sheet(ev: Evaluation, results: dict, path: Path, table: dict) -> None:
    """Per identity a row: photo | a | b | c | d40 | d160 (canonical prompt, first seed). A condition
    carried over takes its column from the previous sheet; one that did not run stays white."""
    from PIL import Image

    n = min(SHEET_IDENTITIES, len(ev.identities))
    cols = 1 + len(CONDITIONS)
    old = None
    if path.exists():
        o = np.asarray(Image.open(path).convert("RGB"))
        if o.shape == (n * SIZE, cols * SIZE, 3):
            old = o
    cells = []
    for i, ident in enumerate(ev.identities[:n]):
        cells.append(np.asarray(Image.open(HELDOUT / ident["file"]).convert("RGB").resize((SIZE, SIZE))))
        for ci, c in enumerate(CONDITIONS, start=1):
            if c in results:
                cells.append(ev.image(c, i, ident, "p0-s0.png"))
            elif table.get(c, {}).get("carried_over") and old is not None:
                cells.append(old[i * SIZE:(i + 1) * SIZE, ci * SIZE:(ci + 1) * SIZE])
            else:
                cells.append(np.full((SIZE, SIZE, 3), 255, np.uint8))
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    evaluate.sheet(np.stack(cells), tmp, cols=cols)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
