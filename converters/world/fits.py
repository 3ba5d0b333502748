"""Stage `fits`: per-identity LiDB fits on the world pipeline (HyperDreamBooth's weight pre-optimisation).

    python converters/world/fits.py                  # every group, then --merge
    python converters/world/fits.py --shard 2/4      # only groups g with g % 4 == 1 (run shards anywhere)
    python converters/world/fits.py --merge          # combine the groups into fits.pt and fits.json

The first IDENTITIES training identities each get PHOTOS canonical photos ("a photo of" style, the
grey background, no hat — the context of the held-out photos a user would give) from their own
seeded stream, and a LiDB term on every `paper` layer (rank 1, a = 100, b = 50, alpha 1, bases from
lidb-basis-1 with BASIS_SEED; terms.py) trained on space.FIT_PROMPT ("a photo of sks face, on a grey
background": the background is named so that the trigger takes the face, not the background) with the objective of
diffusers' DreamBooth-LoRA script and `lidb finetune` (spec/finetune.md): latent = VAE posterior
sample × scaling factor, t ~ U{0 … 999}, ε ~ N(0, I), DDPMScheduler.add_noise, ε-prediction, MSE.
GROUP identities train together in one batch, each sample through its own identity's terms
(terms.BatchedLiDB); the loss is the sum of the per-identity losses and AdamW works per element, so
an identity's fit does not depend on the group it is in (no gradient clipping: a global norm would
couple them). Every draw of identity i at step s comes from a generator keyed by (SEED, i, s): the
photo, the latent sample, t and ε. down_train starts from one kaiming-uniform draw per layer, the
same for every identity, up_train at zero (the spec's initialisation; terms.init_down says why).

Before and after training each identity's denoising loss is measured on EVAL_PAIRS fixed
(photo, latent sample, t, ε) draws. Each finished group is a file in <scratch>/fits/groups/ (a
restart skips finished groups). --merge writes <scratch>/fits/fits.pt (factors [identities, …] per
layer, the layer table, losses) and samples/world/fits.json: the losses, and the attribute reader's
accuracy of images generated with the first ACCURACY_IDENTITIES fits merged into the pipeline
(DDIM 25 steps, guidance 5, 2 seeds) next to the base with the class prompt, and how often "a photo
of sks face, on a pink background" is read pink with the fit merged in (editability).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from common import OUT, log, scratch, setup_torch, write_json

torch = setup_torch()

import terms  # noqa: E402
from data import HELDOUT_CONTEXT, photo  # noqa: E402
from space import CANONICAL_PROMPT, CLASS, CONTEXT, FIT_PROMPT, IDENTITY, identity_sets  # noqa: E402

SEED = 14_611
IDENTITIES = 512
GROUP = 32
PHOTOS = 4
STEPS = 80
LR = 5e-3
WEIGHT_DECAY = 1e-2
EVAL_PAIRS = 8
STREAM_FITS = 606
ACCURACY_IDENTITIES = 48


def outputs():
    return [scratch() / "fits" / "fits.pt", OUT / "fits.json"]


def load_models():
    """The committed world pipeline (F16 on disk) in float32: unet, text encoder, vae, tokenizer, scaling."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    import models

    models.quiet()
    p = OUT / "pipeline"
    unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", torch_dtype=torch.float32).eval()
    te = CLIPTextModel.from_pretrained(p, subfolder="text_encoder", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(p, subfolder="vae", torch_dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(p, subfolder="tokenizer", local_files_only=True)
    return unet, te, vae, tok, float(vae.config.scaling_factor)


def noise_scheduler():
    from diffusers import DDPMScheduler

    import models

    return DDPMScheduler(**{k: v for k, v in models.SCHEDULER_CONFIG.items()
                            if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type",
                                     "trained_betas")})


def identity_photos(identity) -> tuple:
    """PHOTOS canonical photos of a training identity: uint8 [PHOTOS, 64, 64, 3]."""
    imgs = [photo(identity, STREAM_FITS, k, dict(HELDOUT_CONTEXT))[0] for k in range(PHOTOS)]
    return np.stack(imgs)


def encode(vae, images: np.ndarray):
    """Posterior mean and std of uint8 images [N, 64, 64, 3]."""
    with torch.no_grad():
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        d = vae.encode(x).latent_dist
        return d.mean, d.std


def draws(key: tuple, mean, std, scaling: float, count: int = 1):
    """count draws (photo index, latent, t, ε) from a generator keyed by `key`; mean/std [PHOTOS, 4, h, w]."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))
    out = []
    for _ in range(count):
        j = int(torch.randint(0, mean.shape[0], (1,), generator=g))
        z = (mean[j] + std[j] * torch.randn(mean[j].shape, generator=g)) * scaling
        t = int(torch.randint(0, 1000, (1,), generator=g))
        eps = torch.randn(z.shape, generator=g)
        out.append((j, z, t, eps))
    return out


def denoising_losses(unet, te, mods, ids_tok, sched, batch: list, ids=None):
    """Per-sample MSE of ε-prediction; batch = [(z, t, ε)], ids = per-sample identity in the group (or None: base)."""
    z = torch.stack([b[0] for b in batch])
    t = torch.tensor([b[1] for b in batch])
    eps = torch.stack([b[2] for b in batch])
    terms.use(mods, ids)
    h = te(ids_tok.expand(len(batch), -1))[0]
    pred = unet(sched.add_noise(z, eps, t), t, h).sample
    return (pred - eps).pow(2).mean(dim=(1, 2, 3))


def fit_group(g: int, train, unet, te, vae, scaling, mods, sched, ids_tok) -> dict:
    first = g * GROUP
    members = list(range(first, min(first + GROUP, IDENTITIES)))
    n = len(members)
    photos = [identity_photos(train[i]) for i in members]
    enc = [encode(vae, p) for p in photos]
    for li, m in enumerate(mods):
        m.down.data = terms.init_down(n, m.down_aux.shape[0], SEED, li)
        m.up.data = torch.zeros(n, m.up_aux.shape[1], terms.RANK)
    params = [p for m in mods for p in (m.down, m.up)]
    opt = torch.optim.AdamW(params, LR, weight_decay=WEIGHT_DECAY)
    ids = torch.arange(n)
    eval_sets = [draws((SEED + 1, i), *enc[k], scaling, EVAL_PAIRS) for k, i in enumerate(members)]

    def evaluate():
        with torch.no_grad():
            out = []
            for p in range(EVAL_PAIRS):
                batch = [(eval_sets[k][p][1], eval_sets[k][p][2], eval_sets[k][p][3]) for k in range(n)]
                out.append(denoising_losses(unet, te, mods, ids_tok, sched, batch, ids))
            return torch.stack(out).mean(0).numpy()

    before = evaluate()
    losses = np.zeros((n, STEPS), np.float32)
    t0 = time.time()
    for s in range(STEPS):
        batch = []
        for k, i in enumerate(members):
            _, z, t, eps = draws((SEED, i, s), *enc[k], scaling)[0]
            batch.append((z, t, eps))
        per = denoising_losses(unet, te, mods, ids_tok, sched, batch, ids)
        opt.zero_grad()
        per.sum().backward()
        opt.step()
        losses[:, s] = per.detach().numpy()
        if (s + 1) % 20 == 0:
            log(f"  group {g}: step {s + 1}/{STEPS}, mean loss of the last 20 {losses[:, s - 19:s + 1].mean():.4f} "
                f"({(time.time() - t0) / (s + 1):.2f} s/step for {n} identities)")
    after = evaluate()
    return {"identities": members, "downs": [m.down.detach().clone() for m in mods],
            "ups": [m.up.detach().clone() for m in mods], "train_losses": losses, "eval_before": before,
            "eval_after": after}


def group_path(g: int):
    return scratch() / "fits" / "groups" / f"group-{g:04d}.pt"


def run_shard(index: int, count: int) -> None:
    from common import save_checkpoint

    train, _ = identity_sets()
    assert len(train) >= IDENTITIES
    unet, te, vae, tok, scaling = load_models()
    layers = terms.layer_table(unet, te)
    basis = terms.bases(layers)
    mods = terms.install(unet, te, layers, basis, GROUP)
    sched = noise_scheduler()
    ids_tok = tok(FIT_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    groups = [g for g in range((IDENTITIES + GROUP - 1) // GROUP) if g % count == index]
    todo = [g for g in groups if not group_path(g).exists()]
    log(f"shard {index + 1}/{count}: {len(groups)} groups of {GROUP} identities, {len(todo)} to do; "
        f"{len(layers)} layers, fingerprint {terms.fingerprint(layers)[:16]}")
    t0 = time.time()
    for n, g in enumerate(todo):
        res = fit_group(g, train, unet, te, vae, scaling, mods, sched, ids_tok)
        save_checkpoint(group_path(g), res)
        done = n + 1
        eta = (time.time() - t0) / done * (len(todo) - done)
        log(f"group {g} done: eval loss {res['eval_before'].mean():.4f} -> {res['eval_after'].mean():.4f}; "
            f"{done}/{len(todo)}, ETA {eta / 60:.1f} min")


def accuracy(fits: dict) -> dict:
    """Reader accuracy of generated "a photo of sks face" images with each of the first identities'
    fits merged into the pipeline, and of the base with "a photo of face"."""
    import evaluate
    from reader import load_reader, read_attributes

    train, _ = identity_sets()
    pipe = evaluate.load_pipeline()
    target = terms.MergedInto(pipe, fits["layers"])
    seeds = [0, 1]
    truth, fitted, pink, base = [], [], [], []
    for i in range(ACCURACY_IDENTITIES):
        with target.merged([(d[i], u[i]) for d, u in zip(fits["downs"], fits["ups"])]):
            fitted.append(evaluate.generate(pipe, [CANONICAL_PROMPT] * len(seeds), [7000 + 10 * i + s for s in seeds]))
            pink.append(evaluate.generate(pipe, [PINK_PROMPT] * len(seeds), [7500 + 10 * i + s for s in seeds]))
        base.append(evaluate.generate(pipe, [f"a photo of {CLASS}"] * len(seeds), [7000 + 10 * i + s for s in seeds]))
        truth += [[train[i].attrs[k] for k in IDENTITY]] * len(seeds)
    reader = load_reader()
    truth = np.asarray(truth)
    ni = len(IDENTITY)

    def ident(images):
        pred = read_attributes(reader, np.concatenate(images))[:, :ni]
        return {"identity_attribute_accuracy": round(float((pred == truth).mean()), 4),
                "per_attribute": {k: round(float((pred[:, j] == truth[:, j]).mean()), 4) for j, k in enumerate(IDENTITY)}}

    evaluate.sheet(np.concatenate(fitted[:24]), scratch() / "fits" / "fitted.png", cols=12)
    bg = read_attributes(reader, np.concatenate(pink))[:, ni + list(CONTEXT).index("background")]
    return {"images": int(len(truth)), "fitted": ident(fitted), "base_class_prompt": ident(base),
            "pink_background": {"prompt": PINK_PROMPT, "images": int(len(bg)),
                                "background_accuracy": round(float((bg == CONTEXT["background"].index("pink")).mean()), 4)}}


PINK_PROMPT = f"{CANONICAL_PROMPT}, on a pink background"


def merge() -> None:
    paths = [group_path(g) for g in range((IDENTITIES + GROUP - 1) // GROUP)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"fits --merge: {len(missing)} groups not fitted yet ({', '.join(missing[:4])} …); "
                         "run the shards first")
    parts = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    unet, te, _, _, _ = load_models()
    layers = terms.layer_table(unet, te)
    fits = {"identities": [i for p in parts for i in p["identities"]], "layers": layers,
            "fingerprint": terms.fingerprint(layers),
            "subject": {"rank": terms.RANK, "a": terms.DOWN_DIM, "b": terms.UP_DIM, "alpha": terms.ALPHA,
                        "basis_seed": terms.BASIS_SEED},
            "downs": [torch.cat([p["downs"][k] for p in parts]) for k in range(len(layers))],
            "ups": [torch.cat([p["ups"][k] for p in parts]) for k in range(len(layers))],
            "train_losses": np.concatenate([p["train_losses"] for p in parts]),
            "eval_before": np.concatenate([p["eval_before"] for p in parts]),
            "eval_after": np.concatenate([p["eval_after"] for p in parts]),
            "settings": {"seed": SEED, "steps": STEPS, "lr": LR, "weight_decay": WEIGHT_DECAY, "photos": PHOTOS,
                         "group": GROUP, "photo_stream": STREAM_FITS, "prompt": FIT_PROMPT}}
    from common import save_checkpoint

    save_checkpoint(scratch() / "fits" / "fits.pt", fits)
    acc = accuracy(fits)
    before, after = fits["eval_before"], fits["eval_after"]
    table = {
        "description": "Per-identity LiDB fits (converters/world/fits.py): the first training identities, PHOTOS canonical "
                       "photos each, a LiDB term per `paper` layer trained on FIT_PROMPT (the photos' grey background named). Denoising loss on "
                       "EVAL_PAIRS fixed (photo, t, noise) draws per identity before (the base) and after; the attribute "
                       "reader on images generated with the fits merged in (DDIM 25 steps, guidance 5): identity attributes with "
                       "'a photo of sks face', the background with PINK_PROMPT (whether the fit keeps it editable).",
        "settings": {**fits["settings"], "identities": len(fits["identities"]), "layers": len(layers),
                     "subject": fits["subject"], "targets_fingerprint": fits["fingerprint"],
                     "trained_parameters_per_identity": int(sum(d.shape[1] * d.shape[2] + u.shape[1] * u.shape[2]
                                                                for d, u in zip(fits["downs"], fits["ups"])))},
        "denoising_loss": {"before_mean": round(float(before.mean()), 5), "after_mean": round(float(after.mean()), 5),
                           "relative_reduction": round(float(1 - after.mean() / before.mean()), 4),
                           "identities_improved": round(float((after < before).mean()), 4)},
        "generation": acc,
    }
    write_json(OUT / "fits.json", table)
    log(f"fits: loss {before.mean():.4f} -> {after.mean():.4f}; identity accuracy fitted "
        f"{acc['fitted']['identity_attribute_accuracy']} vs base {acc['base_class_prompt']['identity_attribute_accuracy']}")


def main() -> None:
    ap = argparse.ArgumentParser(description="Per-identity LiDB fits on the world pipeline")
    ap.add_argument("--shard", help="i/n: fit only groups g with g %% n == i-1")
    ap.add_argument("--merge", action="store_true", help="combine finished groups into fits.pt and fits.json")
    args = ap.parse_args()
    if args.merge:
        return merge()
    if args.shard:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise SystemExit(f"--shard: expected i/n (e.g. 1/4), got {args.shard!r}")
        if not 1 <= i <= n:
            raise SystemExit(f"--shard: need 1 <= i <= n, got {args.shard!r}")
        return run_shard(i - 1, n)
    run_shard(0, 1)
    merge()


if __name__ == "__main__":
    sys.exit(main())
