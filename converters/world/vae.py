"""Stage `vae`: train the world's AutoencoderKL (models.VAE_CONFIG) on the rendered training photos.

Loss: mean |x − x̂| + mean (x − x̂)² + KL_WEIGHT · mean KL (per latent element). Most steps use
random 32×32 crops at offsets that are multiples of 4 (the VAE is convolutional; a crop costs a
quarter of a whole photo), the last FULL_STEPS whole 64×64 photos, so the mid-block attention sees
the 16×16 latent grid it works on. AdamW, constant LR after a warm-up, gradient norm clipped at 1.

Checkpoints: <scratch>/vae/ckpt.pt every few minutes; rerunning resumes. Output: <scratch>/vae/vae.pt
(the trained state dict, F32) and the reconstruction error on fresh photos in vae/metrics.json.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from common import Every, load_checkpoint, log, save_checkpoint, scratch, setup_torch, write_json

torch = setup_torch()

SEED = 14_301
CROP_STEPS = 2000
FULL_STEPS = 300
BATCH = 24
LR = 2e-3
KL_WEIGHT = 1e-5


def outputs():
    return [scratch() / "vae" / "vae.pt"]


def batch_at(images, step: int):
    rng = np.random.default_rng([SEED, step])
    idx = rng.integers(len(images), size=BATCH)
    x = images[idx]
    if step < CROP_STEPS:
        oy, ox = rng.integers(0, 9, size=2) * 4
        x = x[:, oy:oy + 32, ox:ox + 32]
    x = torch.as_tensor(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x


def main() -> None:
    import models

    models.quiet()
    images = np.load(scratch() / "data" / "train.npz")["images"]
    torch.manual_seed(SEED)
    vae = models.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), LR, weight_decay=0.0)
    total = CROP_STEPS + FULL_STEPS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * (0.2 if s >= total - 150 else 1.0))
    path = scratch() / "vae" / "ckpt.pt"
    step = 0
    ck = load_checkpoint(path)
    if ck is not None:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step = ck["step"]
        log(f"resumed vae at step {step}")
    every = Every(180)
    vae.train()
    t0, seen = time.time(), 0
    while step < total:
        x = batch_at(images, step)
        g = torch.Generator().manual_seed(SEED * 100_003 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        l2 = (rec - x).pow(2).mean()
        kl = post.kl().mean() / post.mean[0].numel()
        loss = l1 + l2 + KL_WEIGHT * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += 1
        if step % 50 == 0:
            log(f"vae step {step}/{total} l1 {l1.item():.4f} l2 {l2.item():.5f} kl {kl.item():.2f} "
                f"({(time.time() - t0) / seen:.2f} s/step)")
            t0, seen = time.time(), 0
        if every() or step == total:
            save_checkpoint(path, {"model": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "step": step})
    vae.eval()
    fresh = np.load(scratch() / "data" / "fresh.npz")["images"][:512]
    with torch.no_grad():
        x = torch.as_tensor(fresh).permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 64]).latent_dist.mean).sample for i in range(0, len(x), 64)])
        err = (rec.clamp(-1, 1) - x).abs().mean().item() * 127.5
    metrics = {"fresh_photos": len(fresh), "mean_abs_error_8bit": round(err, 3)}
    write_json(scratch() / "vae" / "metrics.json", metrics)
    torch.save(vae.state_dict(), scratch() / "vae" / ".vae.tmp.pt")
    (scratch() / "vae" / ".vae.tmp.pt").rename(scratch() / "vae" / "vae.pt")
    log(f"vae done: {json.dumps(metrics)}")


if __name__ == "__main__":
    sys.exit(main())
