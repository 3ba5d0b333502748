"""Stage `hyper`: the world's hypernetwork, trained on (photo, fitted LiDB weights) pairs.

    python converters/world/hyper.py                       # = torchrun with HYPER_PROCESSES processes
    torchrun --nproc_per_node=N converters/world/hyper.py --worker [--steps S --run-dir D --no-eval]
    python converters/world/hyper.py --ddp-check           # 1 vs 2 processes, same global batch

The architecture is lidb's hypernetwork (converters/python/reference/hypernetwork.py,
spec/hypernetwork.md): a small CLIP-vision ViT from scratch on the 64×64 photo and a transformer
decoder that refines the LiDB factors of every `paper` layer over `iterations` passes. The
image encoder starts from encoder.py's pretraining (the paper's starts from a pretrained CLIP ViT-H)
and adapts at ENCODER_LR_SCALE times the learning rate. The
objective is HyperDreamBooth's: a weight-space loss to the per-identity fits of fits.py plus the
denoising loss of the pipeline with the predicted factors applied (terms.BatchedLiDB overrides), on
a photo of the identity: latent sample × scaling, t ~ U{0 … 999}, ε ~ N(0, I), add_noise, MSE.

The fitted factors are tiny (up_train ~1e-3) and down_train and up_train differ in scale, so the
network is trained in normalised units — factors divided by the RMS of the fitted down (s_d) and up
(s_u) factors — and the scales are folded into the saved weights (weight_in's columns ÷ s, the
heads' rows × s), which gives exactly the reference architecture in real units (checked at save).
The weight loss is the mean squared error in normalised units; the log also shows the loss of
predicting the mean fit (what the weight loss would be if nothing identity-specific were learnt).

DDP (torch.distributed, gloo): every step draws the global batch of BATCH identities (which photo,
the latent sample, t, ε) from a generator keyed by (SEED, step); rank k takes its slice and scales
its loss by world size / BATCH, so DDP's averaged gradient is the global batch's mean gradient and
N processes train the same model as one, to float rounding. `--ddp-check` shows it at small scale.
Checkpoints every 3 minutes in <scratch>/hyper/ckpt.pt; rerunning resumes.

Outputs: samples/world/hypernetwork.safetensors (F16) and hypernetwork.json (its config, for
`lidb convert --kind hypernetwork --config`), samples/world/hyper.json (settings, loss history, and
the attribute reader's accuracy of images generated with predicted weights for the held-out
identities' photos and for training identities, DDIM 25 steps, guidance 5, 2 seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import HERE, OUT, ROOT, Every, load_checkpoint, log, resume, save_checkpoint, scratch, setup_torch, write_json

torch = setup_torch()

import terms  # noqa: E402

sys.path.insert(0, str(ROOT / "converters" / "python" / "reference"))
from hypernetwork import Hypernetwork, clip_preprocessing, make_config  # noqa: E402

SEED = 14_621
STEPS = int(os.environ.get("LIDB_WORLD_HYPER_STEPS", "2000"))
BATCH = 16
LR = 1e-3
WARMUP = 100
WEIGHT_DECAY = 1e-2
ENCODER_LR_SCALE = 0.1       # the pretrained encoder (encoder.py) adapts more slowly than the decoder learns
DENOISE_WEIGHT = 100.0       # the denoising loss (~0.04) carries the identity; the weight loss regularises (see README)
PROCESSES = 2
ENCODER = dict(type="clip-vision", image_size=64, patch_size=8, hidden_size=96, num_hidden_layers=4,
               num_attention_heads=4, intermediate_size=192, hidden_act="quick_gelu", layer_norm_eps=1e-5, tokens="all")
DECODER = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, iterations=4, layer_norm_eps=1e-5)
CLIP_MEAN = np.asarray(clip_preprocessing(64)["image_mean"], np.float32)
CLIP_STD = np.asarray(clip_preprocessing(64)["image_std"], np.float32)


def outputs():
    return [OUT / "hypernetwork.safetensors", OUT / "hypernetwork.json", OUT / "hyper.json"]


def config(layers: list) -> dict:
    return make_config(ENCODER, DECODER, clip_preprocessing(64),
                       dict(rank=terms.RANK, a=terms.DOWN_DIM, b=terms.UP_DIM, alpha=terms.ALPHA,
                            basis={"generator": "lidb-basis-1", "seed": terms.BASIS_SEED}),
                       "paper", "sd1", [(l["name"], l["out"], l["in"]) for l in layers])


def pixels(images: np.ndarray):
    """uint8 [N, 64, 64, 3] → the hypernetwork's input (CLIP normalisation; 64×64 needs no resize)."""
    x = (images.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def prepare_data() -> dict:
    """Photos, latent posteriors and fitted factors of every fitted identity (cached)."""
    path = scratch() / "hyper" / "data.pt"
    ck = load_checkpoint(path)
    if ck is not None:
        return ck
    import fits as fits_stage
    from space import identity_sets

    fits = torch.load(scratch() / "fits" / "fits.pt", map_location="cpu", weights_only=False)
    train, _ = identity_sets()
    _, _, vae, _, scaling = fits_stage.load_models()
    photos, means, stds = [], [], []
    for n, i in enumerate(fits["identities"]):
        p = fits_stage.identity_photos(train[i])
        m, s = fits_stage.encode(vae, p)
        photos.append(p)
        means.append(m)
        stds.append(s)
        if n % 128 == 127:
            log(f"prepared {n + 1}/{len(fits['identities'])} identities")
    data = {"identities": fits["identities"], "layers": fits["layers"], "photos": np.stack(photos),
            "mean": torch.stack(means), "std": torch.stack(stds), "scaling": scaling,
            "downs": fits["downs"], "ups": fits["ups"]}
    save_checkpoint(path, data)
    return data


class Normalised:
    """The scales s_d, s_u and the per-element fit statistics in normalised units."""

    def __init__(self, data: dict):
        d = torch.cat([x.reshape(len(x), -1) for x in data["downs"]], 1)
        u = torch.cat([x.reshape(len(x), -1) for x in data["ups"]], 1)
        self.s_d = float(d.pow(2).mean().sqrt())
        self.s_u = float(u.pow(2).mean().sqrt())
        # The weight loss of always predicting the mean fit, in normalised units.
        nd, nu = d / self.s_d, u / self.s_u
        self.mean_baseline = float(torch.cat([nd - nd.mean(0), nu - nu.mean(0)], 1).pow(2).mean())


def fold(model: Hypernetwork, s_d: float, s_u: float) -> dict:
    """The model's weights with the normalisation folded in (real-unit factors in and out)."""
    s = model.cfg["subject"]
    r, a, b = s["rank"], s["a"], s["b"]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    w = state["weight_in.weight"]
    w[:, : r * a] /= s_d
    w[:, r * a:] /= s_u
    for i, (_, _, nd, _) in enumerate(model.dims):
        for suffix in ("weight", "bias"):
            t = state[f"heads.{i}.{suffix}"]
            t[:nd] *= s_d
            t[nd:] *= s_u
    return state


def batch_draws(step: int, data: dict, count: int):
    """The global batch of one step: [(identity row, photo index, latent, t, ε)]."""
    g = torch.Generator().manual_seed(SEED * 1_000_003 + step)
    rows = torch.randint(0, len(data["identities"]), (count,), generator=g).tolist()
    out = []
    for row in rows:
        j = int(torch.randint(0, data["mean"].shape[1], (1,), generator=g))
        m, s = data["mean"][row, j], data["std"][row, j]
        z = (m + s * torch.randn(m.shape, generator=g)) * data["scaling"]
        t = int(torch.randint(0, 1000, (1,), generator=g))
        eps = torch.randn(z.shape, generator=g)
        out.append((row, j, z, t, eps))
    return out


def worker(args) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import fits as fits_stage
    from space import FIT_PROMPT

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = Path(args.run_dir) if args.run_dir else scratch() / "hyper"
    run_dir.mkdir(parents=True, exist_ok=True)
    steps, batch = args.steps, args.batch
    if batch % world:
        raise SystemExit(f"hyper: the global batch {batch} does not split over {world} processes")
    if rank == 0:
        data = prepare_data()            # made once (the launcher normally has made it already)
    dist.barrier()
    if rank != 0:
        data = prepare_data()
    norm = Normalised(data)
    layers = data["layers"]
    cfg = config(layers)
    torch.manual_seed(SEED)
    model = Hypernetwork(cfg)
    enc = load_checkpoint(scratch() / "encoder" / "encoder.pt")
    if enc is None:
        raise SystemExit("hyper: the pretrained image encoder (<scratch>/encoder/encoder.pt) is missing; "
                         "run the encoder stage first (make world, or converters/world/encoder.py)")
    model.image_encoder.load_state_dict(enc["encoder"])
    unet, te, _, tok, _ = fits_stage.load_models()
    mods = terms.install(unet, te, layers, terms.bases(layers), 1)
    sched = fits_stage.noise_scheduler()
    ids_tok = tok(FIT_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ddp = DistributedDataParallel(model)
    enc_params = list(model.image_encoder.parameters())
    enc_ids = {id(p) for p in enc_params}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in enc_ids], "lr": LR},
                             {"params": enc_params, "lr": LR * ENCODER_LR_SCALE}], LR, weight_decay=WEIGHT_DECAY)
    lr_at = lambda s: min(1.0, (s + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ck_path = run_dir / "ckpt.pt"
    step, history = resume(ck_path, model, opt, lr_sched)
    if step and rank == 0:
        log(f"resumed hyper at step {step}")
    fd = [x / norm.s_d for x in data["downs"]]
    fu = [x / norm.s_u for x in data["ups"]]
    count = sum(d[0].numel() + u[0].numel() for d, u in zip(fd, fu))   # factor values per sample
    every = Every(180)
    per = batch // world
    t0, acc = time.time(), {"w": 0.0, "d": 0.0, "g": 0.0, "n": 0}
    while step < steps:
        draws = batch_draws(step, data, batch)[rank * per:(rank + 1) * per]
        rows = [d[0] for d in draws]
        x = pixels(data["photos"][rows, [d[1] for d in draws]])
        pred = ddp(x)
        wl = sum((p_d - fd[k][rows]).pow(2).sum() + (p_u - fu[k][rows]).pow(2).sum()
                 for k, (p_d, p_u) in enumerate(pred))
        wl = wl / count                                            # summed over this rank's samples
        terms.set_override(mods, [(p_d * norm.s_d, p_u * norm.s_u) for p_d, p_u in pred])
        z = torch.stack([d[2] for d in draws])
        t = torch.tensor([d[3] for d in draws])
        eps = torch.stack([d[4] for d in draws])
        h = te(ids_tok.expand(len(draws), -1))[0]
        out = unet(sched.add_noise(z, eps, t), t, h).sample
        dl = (out - eps).pow(2).mean(dim=(1, 2, 3)).sum()
        terms.set_override(mods, None)
        loss = (wl + DENOISE_WEIGHT * dl) * (world / batch)
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        step += 1
        stats = torch.tensor([wl.item(), dl.item()])
        dist.all_reduce(stats)
        acc["w"] += stats[0].item() / batch
        acc["d"] += stats[1].item() / batch
        acc["g"] += float(gn)
        acc["n"] += 1
        if step % 25 == 0 or step == steps:
            n = acc["n"]
            rec = {"step": step, "weight_loss": round(acc["w"] / n, 5), "denoising_loss": round(acc["d"] / n, 5),
                   "grad_norm": round(acc["g"] / n, 4), "lr": round(opt.param_groups[0]["lr"], 7)}
            history.append(rec)
            eta = (time.time() - t0) / n * (steps - step)
            if rank == 0:
                log(f"hyper step {step}/{steps}: weight loss {rec['weight_loss']:.4f} (mean-fit baseline "
                    f"{norm.mean_baseline:.4f}), denoising {rec['denoising_loss']:.4f}, grad norm {rec['grad_norm']:.3f} "
                    f"({(time.time() - t0) / n:.2f} s/step, {world} process(es), ETA {eta / 60:.1f} min)")
            t0, acc = time.time(), {"w": 0.0, "d": 0.0, "g": 0.0, "n": 0}
        flag = torch.tensor([1 if every() or step == steps else 0])
        dist.broadcast(flag, 0)                   # every rank agrees on when to checkpoint
        if flag.item() and rank == 0:
            save_checkpoint(ck_path, {"model": model.state_dict(), "opt": opt.state_dict(), "sched": lr_sched.state_dict(),
                                      "step": step, "history": history})
    if rank == 0:
        save_checkpoint(run_dir / "final.pt", {"model": model.state_dict(), "cfg": cfg, "s_d": norm.s_d, "s_u": norm.s_u,
                                               "mean_baseline": norm.mean_baseline, "history": history, "steps": steps,
                                               "processes": world})
        log(f"hyper: trained {steps} steps on {world} process(es)")
    dist.destroy_process_group()


def export(run_dir: Path, evaluate_too: bool = True) -> None:
    """Folds the scales in, checks the fold, writes the hypernetwork files and hyper.json."""
    from safetensors.torch import save_file

    final = torch.load(run_dir / "final.pt", map_location="cpu", weights_only=False)
    cfg = final["cfg"]
    model = Hypernetwork(cfg)
    model.load_state_dict(final["model"])
    model.eval()
    folded = Hypernetwork(cfg)
    folded.load_state_dict(fold(model, final["s_d"], final["s_u"]))
    folded.eval()
    data = prepare_data()
    x = pixels(data["photos"][:4, 0])
    with torch.no_grad():
        a = model(x)
        b = folded(x)
    err = max(float((pd * final["s_d"] - qd).abs().max() / (qd.abs().max() + 1e-30)) for (pd, _), (qd, _) in zip(a, b))
    err = max(err, max(float((pu * final["s_u"] - qu).abs().max() / (qu.abs().max() + 1e-30)) for (_, pu), (_, qu) in zip(a, b)))
    assert err < 1e-4, f"folding the normalisation changed the prediction by {err}"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in folded.state_dict().items()}
    tmp = OUT / ".hypernetwork.safetensors.tmp"
    save_file(state, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, OUT / "hypernetwork.safetensors")
    write_json(OUT / "hypernetwork.json", cfg)
    table = {
        "description": "The world's hypernetwork (converters/world/hyper.py): trained on per-identity LiDB fits "
                       "(fits.py) with a weight-space loss plus the denoising loss of the predicted weights.",
        "settings": {"steps": final["steps"], "global_batch": BATCH, "lr": LR, "warmup": WARMUP, "schedule": "cosine to 0.1",
                     "weight_decay": WEIGHT_DECAY, "denoise_weight": DENOISE_WEIGHT, "processes": final["processes"],
                     "image_encoder": f"pretrained by encoder.py (samples/world/encoder.json), lr x {ENCODER_LR_SCALE}",
                     "identities": len(data["identities"]), "encoder": ENCODER, "decoder": DECODER,
                     "normalisation": {"s_down": final["s_d"], "s_up": final["s_u"]},
                     "parameters": int(sum(p.numel() for p in model.parameters())),
                     "file_bytes": (OUT / "hypernetwork.safetensors").stat().st_size,
                     "fold_max_relative_error": err},
        "weight_loss_mean_fit_baseline": round(final["mean_baseline"], 5),
        "history": final["history"],
    }
    if evaluate_too:
        table["generation"] = accuracy(folded, data)
    write_json(OUT / "hyper.json", table)
    log(f"hyper: wrote samples/world/hypernetwork.safetensors ({table['settings']['file_bytes']} bytes); "
        + (f"held-out {table['generation']['heldout']['identity_attribute_accuracy']}, training identities "
           f"{table['generation']['training']['identity_attribute_accuracy']}, base "
           f"{table['generation']['base_class_prompt']['identity_attribute_accuracy']}" if evaluate_too else ""))


def accuracy(model: Hypernetwork, data: dict) -> dict:
    """Reader accuracy of "a photo of sks face" images with predicted weights merged into the
    pipeline: held-out identities (their committed photos) and 24 training identities (a fitted photo)."""
    from PIL import Image

    import evaluate
    from reader import load_reader, read_attributes
    from space import CANONICAL_PROMPT, CLASS, CONTEXT, IDENTITY, identity_sets

    train, heldout = identity_sets()
    pipe = evaluate.load_pipeline()
    target = terms.MergedInto(pipe, data["layers"])
    seeds = [0, 1]
    ni = len(IDENTITY)
    reader = load_reader()

    def run(photos: np.ndarray, truths: list, prompt: str, predict: bool, seed0: int):
        images = []
        with torch.no_grad():
            pred = model(pixels(photos)) if predict else None
        for n in range(len(photos)):
            with target.merged([(d[n], u[n]) for d, u in pred] if predict else None):
                images.append(evaluate.generate(pipe, [prompt] * len(seeds), [seed0 + 10 * n + s for s in seeds]))
        images = np.concatenate(images)
        truth = np.repeat(np.asarray(truths), len(seeds), axis=0)
        read = read_attributes(reader, images)
        p = read[:, :ni]
        return images, {"images": len(images), "identity_attribute_accuracy": round(float((p == truth).mean()), 4),
                        "photo_style_accuracy": round(float((read[:, ni + list(CONTEXT).index("style")] == 0).mean()), 4),
                        "per_attribute": {k: round(float((p[:, j] == truth[:, j]).mean()), 4) for j, k in enumerate(IDENTITY)}}

    held_photos = np.stack([np.asarray(Image.open(OUT / "heldout" / f"{h.index:04d}.png").convert("RGB")) for h in heldout])
    held_truth = [[h.attrs[k] for k in IDENTITY] for h in heldout]
    imgs, held = run(held_photos, held_truth, CANONICAL_PROMPT, True, 9000)
    evaluate.sheet(imgs, OUT / "hyper-heldout.png", cols=12)
    _, base = run(held_photos, held_truth, f"a photo of {CLASS}", False, 9000)
    rows = list(range(0, len(data["identities"]), max(1, len(data["identities"]) // 24)))[:24]
    tr_truth = [[train[data["identities"][r]].attrs[k] for k in IDENTITY] for r in rows]
    _, tr = run(data["photos"][rows, 0], tr_truth, CANONICAL_PROMPT, True, 9500)
    return {"prompt": CANONICAL_PROMPT, "seeds_per_photo": len(seeds), "heldout": held, "training": tr,
            "base_class_prompt": base}


def launch(processes: int, extra: list) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port",
           str(29500 + os.getpid() % 1000), str(HERE / "hyper.py"), "--worker"] + extra
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIDB_WORLD_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)


def ddp_check(steps: int) -> None:
    """1 process vs 2 processes, same global batch and draws: the final weights agree to rounding."""
    base = scratch() / "hyper-ddp-check"
    results = {}
    for n in (1, 2):
        d = base / f"p{n}"
        if not (d / "final.pt").exists():
            t0 = time.time()
            launch(n, ["--steps", str(steps), "--run-dir", str(d)])
            (d / "seconds").write_text(f"{time.time() - t0:.1f}\n")
        results[n] = torch.load(d / "final.pt", map_location="cpu", weights_only=False)
    a, b = results[1]["model"], results[2]["model"]
    # A key projection's bias has zero gradient by construction (softmax ignores what it adds to
    # every score of a query), so it holds only initial values plus rounding noise that Adam's
    # normalisation amplifies differently in the two runs: the key biases (CLIP's k_proj.bias, the
    # middle third of nn.MultiheadAttention's in_proj_bias) are left out of the relative comparison.
    def compared(k, t):
        if k.endswith("k_proj.bias"):
            return None
        if k.endswith("in_proj_bias"):
            n = t.shape[0] // 3
            return torch.cat([t[:n], t[2 * n:]])
        return t

    rel = {}
    for k in a:
        ta, tb = compared(k, a[k]), compared(k, b[k])
        if ta is not None and float(ta.abs().max()) > 0:
            rel[k] = float((ta - tb).abs().max() / ta.abs().max())
    worst = max(rel.values())
    worst_abs = max(float((a[k] - b[k]).abs().max()) for k in a)
    hist = [(x["step"], x["weight_loss"], y["weight_loss"], x["denoising_loss"], y["denoising_loss"])
            for x, y in zip(results[1]["history"], results[2]["history"])]
    table = {"description": "hyper.py under torchrun with 1 and with 2 processes (gloo), the same global batch "
                            f"({BATCH}) and draws, {steps} steps from the same initialisation: the largest relative "
                            "difference of any weight tensor (max |diff| / max |w|; key-projection biases left out: their "
                            "gradient is zero by construction, so they hold rounding noise that Adam amplifies), the "
                            "largest absolute difference of any weight, and the logged losses.",
             "steps": steps, "global_batch": BATCH, "max_relative_weight_difference": worst,
             "tensors_compared": len(rel), "tensors": len(a), "max_absolute_weight_difference": worst_abs,
             "seconds": {str(n): float((base / f"p{n}" / "seconds").read_text()) for n in (1, 2)
                         if (base / f"p{n}" / "seconds").exists()},
             "losses": [{"step": s, "weight_loss": [w1, w2], "denoising_loss": [d1, d2]} for s, w1, w2, d1, d2 in hist]}
    write_json(OUT / "ddp-check.json", table)
    log(f"DDP check: max relative weight difference 1 vs 2 processes {worst:.3g} ({len(rel)} of {len(a)} tensors), "
        f"max absolute {worst_abs:.3g}, after {steps} steps")
    if worst > 1e-4:
        raise SystemExit(f"DDP check failed: {worst}")


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the world's hypernetwork")
    ap.add_argument("--worker", action="store_true", help="(under torchrun) one training process")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--run-dir", help="checkpoint folder (default <scratch>/hyper)")
    ap.add_argument("--processes", type=int, default=PROCESSES)
    ap.add_argument("--ddp-check", type=int, nargs="?", const=30, metavar="STEPS",
                    help="train STEPS (default 30) steps with 1 and with 2 processes and compare")
    ap.add_argument("--export-only", action="store_true", help="fold, write the files and evaluate the trained model")
    args = ap.parse_args()
    if args.steps < 1 or args.batch < 1 or args.processes < 1:
        raise SystemExit("--steps, --batch and --processes must be positive")
    if args.worker:
        return worker(args)
    if args.ddp_check:
        prepare_data()
        return ddp_check(args.ddp_check)
    run_dir = Path(args.run_dir) if args.run_dir else scratch() / "hyper"
    if not args.export_only:
        prepare_data()
        launch(args.processes, ["--steps", str(args.steps), "--batch", str(args.batch), "--run-dir", str(run_dir)])
    export(run_dir)


if __name__ == "__main__":
    sys.exit(main())
