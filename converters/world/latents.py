"""Stage `latents`: encode the rendered training photos with the trained VAE.

Writes <scratch>/latents.npz: mean and std (F16, [N, 4, 16, 16]) of every photo's latent
distribution, and the scaling factor 1 / std(latent samples) that the pipeline's VAE config records
(SD's 0.18215 is the same quantity for its VAE), so the UNet trains on unit-variance latents.
Also logs the attribute reader's accuracy on VAE reconstructions of fresh photos (the ceiling
for generated images) into <scratch>/vae/reconstruction-accuracy.json.
"""

from __future__ import annotations

import sys

import numpy as np

from common import log, scratch, setup_torch, write_json

torch = setup_torch()
SEED = 14_401


def outputs():
    return [scratch() / "latents.npz"]


def load_vae():
    import models

    models.quiet()
    vae = models.make_vae()
    vae.load_state_dict(torch.load(scratch() / "vae" / "vae.pt", map_location="cpu"))
    return vae.eval()


def reconstruction_accuracy(vae) -> None:
    import evaluate
    from common import OUT
    from reader import load_reader, read_attributes

    if not (OUT / "reader.safetensors").exists():
        log("no attribute reader yet: reconstruction accuracy not measured")
        return
    fresh = np.load(scratch() / "data" / "fresh.npz")
    images, truth = fresh["images"][::3], fresh["attrs"][::3].astype(np.int64)
    with torch.no_grad():
        rec = []
        for i in range(0, len(images), 128):
            x = torch.as_tensor(images[i:i + 128]).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
            rec.append(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    rec = np.concatenate(rec)
    table = {"photos": len(images), **evaluate.score(read_attributes(load_reader(), rec), truth),
             "mean_abs_error_8bit": round(float(np.abs(rec.astype(np.float32) - images).mean()), 3)}
    write_json(scratch() / "vae" / "reconstruction-accuracy.json", table)
    log(f"reader on VAE reconstructions: {table}")


def main() -> None:
    vae = load_vae()
    images = np.load(scratch() / "data" / "train.npz")["images"]
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 128):
            x = torch.as_tensor(images[i:i + 128]).permute(0, 3, 1, 2).float() / 127.5 - 1
            d = vae.encode(x).latent_dist
            means.append(d.mean.half().numpy())
            stds.append(d.std.half().numpy())
            if i % 6400 == 0:
                log(f"encoded {i}/{len(images)}")
    mean, std = np.concatenate(means), np.concatenate(stds)
    rng = np.random.default_rng(SEED)
    sample = mean.astype(np.float32) + std.astype(np.float32) * rng.standard_normal(mean.shape, dtype=np.float32)
    scaling = float(1.0 / sample.std())
    tmp = scratch() / ".latents.tmp.npz"
    np.savez(tmp, mean=mean, std=std, scaling_factor=np.float64(scaling))
    tmp.rename(scratch() / "latents.npz")
    reconstruction_accuracy(vae)
    log(f"latents {mean.shape}, std of samples {sample.std():.4f}, mean posterior std {std.astype(np.float32).mean():.4f}, "
        f"scaling factor {scaling:.5f}")


if __name__ == "__main__":
    sys.exit(main())
