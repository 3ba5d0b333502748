"""Stage `sd`: train the world's UNet on the captions, with the text encoder of text.py and the VAE
of vae.py frozen (as Stable Diffusion trains its UNet under a frozen pretrained CLIP text encoder).

The objective is diffusers' text-to-image training: latents (VAE posterior sample × the scaling
factor of latents.py), t ~ U{0 … 999}, ε ~ N(0, I), DDPMScheduler.add_noise with SD's schedule,
ε-prediction with offset noise (0.1 · N(0, 1) per image and channel added to ε; Guttenberg 2023: with
16×16 latents the mean of N(0, I) noise is large enough to pass for the image's mean colour at the
first sampling step, so without it the background follows the seed, not the prompt), MSE weighted
by min-SNR-γ (γ = 5, Hang et al. 2023; diffusers' `--snr_gamma`), AdamW,
gradient norm clipped at 1, linear warm-up then constant LR, an EMA of the weights (the EMA is what
is exported; the UNet's EMA). Captions: space.training_caption (full, partial, or empty for guidance), drawn per
sample from a generator keyed by (seed, step), so a resumed run draws the same batches.

Checkpoints: <scratch>/sd/ckpt.pt every few minutes (UNet, EMA, optimiser, step); rerunning
resumes. Every PROBE_EVERY steps the EMA model generates one image per held-out identity and the
reader scores it (a progress probe in the log, not the committed evaluation). Output:
<scratch>/sd/final.pt (the text encoder, the UNet's EMA weights, the VAE scaling factor).
Steps: STEPS, or LIDB_WORLD_SD_STEPS.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Every, load_checkpoint, log, save_checkpoint, scratch, setup_torch
from space import CONTEXT, IDENTITY, training_caption

torch = setup_torch()

SEED = 14_501
STEPS = int(os.environ.get("LIDB_WORLD_SD_STEPS", "4500"))
BATCH = 24
LR = 8e-4
WARMUP = 200
SNR_GAMMA = 5.0
EMA_MAX = 0.998
PROBE_EVERY = 500
OFFSET_NOISE = 0.1


class Captions:
    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def ids(self, captions: list):
        rows = []
        for c in captions:
            if c not in self.cache:
                self.cache[c] = self.tok(c, padding="max_length", max_length=77, truncation=True,
                                         return_tensors="pt").input_ids[0]
            rows.append(self.cache[c])
        return torch.stack(rows)


def outputs():
    return [scratch() / "sd" / "final.pt"]


def build(tmp: Path):
    import models

    models.quiet()
    torch.manual_seed(SEED)
    te = models.make_text_encoder()
    te.load_state_dict(torch.load(scratch() / "text" / "text_encoder.pt", map_location="cpu"))
    te.requires_grad_(False)
    unet = models.make_unet()
    return models.make_tokenizer(tmp), te.eval(), unet


def probe(te_state, unet_state, scaling: float, tokenizer, step: int) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    import evaluate
    import models
    from common import OUT
    from latents import load_vae
    from reader import load_reader, read_attributes

    if not (OUT / "reader.safetensors").exists():
        return
    te, unet = models.make_text_encoder(), models.make_unet()
    te.load_state_dict(te_state)
    unet.load_state_dict(unet_state)
    vae = load_vae()
    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(unet=unet.eval(), vae=vae, text_encoder=te.eval(), tokenizer=tokenizer,
                                   scheduler=DDIMScheduler.from_config(models.SCHEDULER_CONFIG),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    rows = evaluate.eval_prompts(contexts=1)
    images = evaluate.generate(pipe, [r[0] for r in rows], [r[2] for r in rows], steps=20)
    s = evaluate.score(read_attributes(load_reader(), images), np.asarray([r[1] for r in rows]))
    evaluate.sheet(images, scratch() / "sd" / f"probe-{step:05d}.png", cols=12)
    log(f"probe at step {step}: mean {s['mean_attribute_accuracy']}, identity {s['identity_attribute_accuracy']}, "
        f"context {s['context_attribute_accuracy']}; {s['per_attribute']}")


def main() -> None:
    from diffusers import DDPMScheduler

    import models

    lat = np.load(scratch() / "latents.npz")
    mean, std, scaling = lat["mean"], lat["std"], float(lat["scaling_factor"])
    data = np.load(scratch() / "data" / "train.npz")
    attrs = data["attrs"].astype(np.int64)
    keys_i, keys_c = list(IDENTITY), list(CONTEXT)
    tmp = tempfile.TemporaryDirectory()
    tokenizer, te, unet = build(Path(tmp.name))
    captions = Captions(tokenizer)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, LR, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    noise_sched = DDPMScheduler(**{k: v for k, v in models.SCHEDULER_CONFIG.items()
                                   if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
                                            "prediction_type", "trained_betas")})
    ac = noise_sched.alphas_cumprod
    snr_all = ac / (1 - ac)
    ema_unet = copy.deepcopy(unet.state_dict())
    path = scratch() / "sd" / "ckpt.pt"
    step = 0
    ck = load_checkpoint(path)
    if ck is not None:
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        ema_unet, step = ck["ema_unet"], ck["step"]
        log(f"resumed sd at step {step}")
    every = Every(180)
    unet.train()
    t0, seen, run_loss = time.time(), 0, 0.0
    while step < STEPS:
        rng = np.random.default_rng([SEED, step])
        idx = rng.integers(len(attrs), size=BATCH)
        caps = [training_caption(dict(zip(keys_i, a[:7])), dict(zip(keys_c, a[7:])), rng) for a in attrs[idx]]
        ids = captions.ids(caps)
        g = torch.Generator().manual_seed(SEED * 100_003 + step)
        m, s = torch.from_numpy(mean[idx]).float(), torch.from_numpy(std[idx]).float()
        z = (m + s * torch.randn(m.shape, generator=g)) * scaling
        noise = torch.randn(z.shape, generator=g)
        noise = noise + OFFSET_NOISE * torch.randn(z.shape[0], z.shape[1], 1, 1, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (BATCH,), generator=g)
        noisy = noise_sched.add_noise(z, noise, t)
        with torch.no_grad():
            h = te(ids)[0]
        pred = unet(noisy, t, h).sample
        snr = snr_all[t]
        w = torch.clamp(snr, max=SNR_GAMMA) / snr
        loss = (w * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        decay = min(EMA_MAX, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema_unet[k].mul_(decay).add_(v, alpha=1 - decay)
                else:
                    ema_unet[k].copy_(v)
        seen += 1
        run_loss += loss.item()
        if step % 50 == 0:
            log(f"sd step {step}/{STEPS} loss {run_loss / seen:.4f} ({(time.time() - t0) / seen:.2f} s/step, "
                f"{len(captions.cache)} captions cached)")
            t0, seen, run_loss = time.time(), 0, 0.0
        if every() or step == STEPS:
            save_checkpoint(path, {"unet": unet.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "ema_unet": ema_unet, "step": step})
        if step % PROBE_EVERY == 0 or step == STEPS:
            probe(te.state_dict(), ema_unet, scaling, tokenizer, step)
            t0, seen, run_loss = time.time(), 0, 0.0
    final = scratch() / "sd" / "final.pt"
    torch.save({"te": te.state_dict(), "unet": ema_unet, "scaling_factor": scaling, "step": step},
               final.with_name(".final.tmp.pt"))
    final.with_name(".final.tmp.pt").rename(final)
    log("sd done")


if __name__ == "__main__":
    sys.exit(main())
