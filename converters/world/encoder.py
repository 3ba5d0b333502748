"""Stage `encoder`: the hypernetwork's image encoder, pretrained on the training identities' photos.

    python converters/world/encoder.py

HyperDreamBooth's hypernetwork starts from a pretrained image encoder (a CLIP ViT-H), which already
tells faces apart; only the decoder and the encoder's adaptation are learnt from the fits. The
world has no pretrained encoder, so this stage makes one: the hypernetwork's own CLIP-vision ViT
(hyper.ENCODER: 64×64 input, 8×8 patches, width 96, 4 layers) is trained from scratch to read the
seven identity attributes from canonical photos ("a photo of" style, grey background, no hat — what
the hypernetwork is given), supervised by the attribute words of the photos' captions: the
post-layer-norm tokens are averaged and one linear head per attribute classifies. Photos: PHOTOS
per training identity from their own stream (ENCODER_STREAM; not the fits' photos), for all 2,400
training identities. No held-out identity is trained on; their committed photos measure the
encoder (samples/world/encoder.json, next to fresh photos of training identities).

hyper.py loads the encoder's weights into the hypernetwork before its own training (the heads are
dropped). Checkpoints every 3 minutes in <scratch>/encoder/ckpt.pt; rerunning resumes; every batch
comes from a generator keyed by the step.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from common import OUT, Every, log, resume, save_checkpoint, scratch, setup_torch, write_json

torch = setup_torch()

from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

SEED = 14_631
ENCODER_STREAM = 808
PHOTOS = 6
FRESH_PHOTOS = 1
STEPS = 2500
BATCH = 64
LR = 1e-3
WARMUP = 100
WEIGHT_DECAY = 1e-2


def outputs():
    return [scratch() / "encoder" / "encoder.pt", OUT / "encoder.json"]


def make_encoder():
    import hyper

    e = hyper.ENCODER
    return CLIPVisionModel(CLIPVisionConfig(
        attention_dropout=0.0, hidden_size=e["hidden_size"], intermediate_size=e["intermediate_size"],
        num_hidden_layers=e["num_hidden_layers"], num_attention_heads=e["num_attention_heads"], num_channels=3,
        image_size=e["image_size"], patch_size=e["patch_size"], hidden_act=e["hidden_act"],
        layer_norm_eps=e["layer_norm_eps"]))


class Classifier(torch.nn.Module):
    """The encoder and one linear head per identity attribute on its mean post-layer-norm token."""

    def __init__(self):
        super().__init__()
        from space import IDENTITY

        self.encoder = make_encoder()
        width = self.encoder.config.hidden_size
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(v)) for v in IDENTITY.values())

    def forward(self, x):
        h = self.encoder(pixel_values=x).last_hidden_state
        norm = self.encoder.vision_model.post_layernorm if hasattr(self.encoder, "vision_model") else self.encoder.post_layernorm
        h = norm(h).mean(1)
        return [head(h) for head in self.heads]


def photos(identities, stream: int, count: int):
    from data import HELDOUT_CONTEXT, photo
    from space import IDENTITY

    imgs, labels = [], []
    for n, ident in enumerate(identities):
        for k in range(count):
            imgs.append(photo(ident, stream, k, dict(HELDOUT_CONTEXT))[0])
            labels.append([ident.attrs[a] for a in IDENTITY])
        if n % 400 == 399:
            log(f"rendered {n + 1}/{len(identities)} identities")
    return np.stack(imgs), np.asarray(labels)


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> dict:
    import hyper
    from space import IDENTITY

    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(images), 256):
            preds.append(torch.stack([o.argmax(1) for o in model(hyper.pixels(images[s:s + 256]))], 1).numpy())
    model.train()
    p = np.concatenate(preds)
    return {"photos": int(len(p)), "mean": round(float((p == labels).mean()), 4),
            "per_attribute": {k: round(float((p[:, j] == labels[:, j]).mean()), 4) for j, k in enumerate(IDENTITY)}}


def main() -> None:
    import hyper
    from PIL import Image
    from space import IDENTITY, identity_sets

    run = scratch() / "encoder"
    run.mkdir(parents=True, exist_ok=True)
    train, heldout = identity_sets()
    data_path = run / "photos.npz"
    if data_path.exists():
        d = np.load(data_path)
        images, labels, fresh, fresh_labels = d["images"], d["labels"], d["fresh"], d["fresh_labels"]
    else:
        images, labels = photos(train, ENCODER_STREAM, PHOTOS)
        fresh, fresh_labels = photos(train[::10], ENCODER_STREAM + 1, FRESH_PHOTOS)
        np.savez(data_path, images=images, labels=labels, fresh=fresh, fresh_labels=fresh_labels)
    torch.manual_seed(SEED)
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), LR, weight_decay=WEIGHT_DECAY)
    lr_at = lambda s: min(1.0, (s + 1) / WARMUP) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ck_path = run / "ckpt.pt"
    step, history = resume(ck_path, model, opt, sched)
    if step:
        log(f"resumed encoder at step {step}")
    labels_t = torch.from_numpy(labels).long()
    every, t0, acc = Every(180), time.time(), [0.0, 0.0, 0]
    while step < STEPS:
        g = torch.Generator().manual_seed(SEED * 1_000_003 + step)
        rows = torch.randint(0, len(images), (BATCH,), generator=g)
        x = hyper.pixels(images[rows.numpy()])
        if bool(torch.rand((), generator=g) < 0.5):     # the faces are symmetric up to the rotation
            x = x.flip(3)
        outs = model(x)
        y = labels_t[rows]
        loss = sum(torch.nn.functional.cross_entropy(o, y[:, j]) for j, o in enumerate(outs)) / len(outs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        acc[0] += loss.item()
        acc[1] += float(np.mean([(o.argmax(1) == y[:, j]).float().mean().item() for j, o in enumerate(outs)]))
        acc[2] += 1
        if step % 100 == 0 or step == STEPS:
            rec = {"step": step, "loss": round(acc[0] / acc[2], 4), "batch_accuracy": round(acc[1] / acc[2], 4)}
            history.append(rec)
            log(f"encoder step {step}/{STEPS}: loss {rec['loss']:.4f}, batch accuracy {rec['batch_accuracy']:.3f} "
                f"({(time.time() - t0) / acc[2]:.2f} s/step, ETA {(time.time() - t0) / acc[2] * (STEPS - step) / 60:.1f} min)")
            t0, acc = time.time(), [0.0, 0.0, 0]
        if every() or step == STEPS:
            save_checkpoint(ck_path, {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                      "step": step, "history": history})
    held = np.stack([np.asarray(Image.open(OUT / "heldout" / f"{h.index:04d}.png").convert("RGB")) for h in heldout])
    held_labels = np.asarray([[h.attrs[a] for a in IDENTITY] for h in heldout])
    table = {
        "description": "The hypernetwork's image encoder pretrained to read the identity attributes from canonical photos "
                       "(converters/world/encoder.py); hyper.py starts from it. Accuracy of its classification heads.",
        "settings": {"seed": SEED, "photos_per_identity": PHOTOS, "identities": len(train), "steps": STEPS, "batch": BATCH,
                     "lr": LR, "warmup": WARMUP, "schedule": "cosine to 0.05", "weight_decay": WEIGHT_DECAY,
                     "augmentation": "horizontal flip of the whole batch with p = 0.5", "encoder": hyper.ENCODER},
        "accuracy": {"heldout_photos": accuracy(model, held, held_labels),
                     "fresh_training_photos": accuracy(model, fresh, fresh_labels),
                     "training_photos": accuracy(model, images[::7], labels[::7])},
        "history": history,
    }
    save_checkpoint(run / "encoder.pt", {"encoder": model.encoder.state_dict(), "steps": STEPS})
    write_json(OUT / "encoder.json", table)
    log(f"encoder: held-out photos {table['accuracy']['heldout_photos']['mean']}, fresh training photos "
        f"{table['accuracy']['fresh_training_photos']['mean']}")


if __name__ == "__main__":
    sys.exit(main())
