"""Stage `reader`: the attribute reader — a small CNN that reads every attribute from a 64×64 photo.

Trained on the rendered training photos (data/train.npz; training identities only, all styles,
backgrounds and hats) with blur and noise augmentation, so that it also reads the softer images a
diffusion model makes. Measured on fresh photos (data/fresh.npz: new photo seeds of training
identities, and the held-out identities, which it never saw).

Commits:
    samples/world/reader.safetensors   the weights (F16)
    samples/world/reader.json          the architecture (the heads and their classes)
    samples/world/reader-accuracy.json per-attribute accuracy on the fresh photos

Usage from other stages: `load_reader()` → model; `read_attributes(model, uint8 images [N, 64, 64, 3])`
→ int array [N, 10] in ATTRIBUTES order.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from common import Every, OUT, load_checkpoint, log, save_checkpoint, scratch, setup_torch, write_json
from space import ATTRIBUTES, IDENTITY

torch = setup_torch()
nn = torch.nn

HEADS = {k: len(v) for k, v in ATTRIBUTES.items()}
SEED = 14_201
STEPS = 2400
BATCH = 64
LR = 2e-3
CKPT = "reader/ckpt.pt"


class Reader(nn.Module):
    """conv 3→16 (s2) → 32 (s2) → 32 → 64 (s2) → 64 → 4×4 average pool → 128 → one linear head per attribute."""

    def __init__(self):
        super().__init__()

        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, 1), *block(32, 64, 2),
                                      *block(64, 64, 1), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                      nn.Linear(64 * 16, 128), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(128, n) for k, n in HEADS.items()})

    def forward(self, x):
        h = self.features(x)
        return {k: head(h) for k, head in self.heads.items()}


def to_input(images) -> "torch.Tensor":
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def augment(x, g):
    """Per image: Gaussian blur (σ 0…1.2 px) with p = 0.5, brightness ×0.93…1.07, noise σ 0…0.05."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 1.2
    blur = torch.rand(n, generator=g) < 0.5
    r = torch.arange(-2, 3, dtype=torch.float32)
    out = x.clone()
    for i in torch.nonzero(blur).flatten().tolist():
        s = max(float(sigma[i]), 0.05)
        k = torch.exp(-r**2 / (2 * s * s))
        k = k / k.sum()
        img = out[i:i + 1].reshape(3, 1, 64, 64)
        img = torch.nn.functional.conv2d(torch.nn.functional.pad(img, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
        img = torch.nn.functional.conv2d(torch.nn.functional.pad(img, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
        out[i] = img.reshape(3, 64, 64)
    bright = 0.93 + 0.14 * torch.rand(n, 1, 1, 1, generator=g)
    out = (out + 1) * bright - 1
    out = out + torch.randn(out.shape, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) * 0.05)
    return out.clamp(-1, 1)


def load_reader():
    from safetensors.torch import load_file

    model = Reader()
    state = {k: v.float() for k, v in load_file(str(OUT / "reader.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"reader.safetensors: missing {missing}, unexpected {unexpected}")
    return model.eval()


@torch.no_grad()
def read_attributes(model, images, batch: int = 256) -> np.ndarray:
    rows = []
    for i in range(0, len(images), batch):
        out = model(to_input(images[i:i + batch]))
        rows.append(torch.stack([out[k].argmax(1) for k in ATTRIBUTES], 1).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, len(ATTRIBUTES)), np.int64)


def accuracy_table(pred: np.ndarray, truth: np.ndarray) -> dict:
    return {k: round(float((pred[:, i] == truth[:, i]).mean()), 4) for i, k in enumerate(ATTRIBUTES)}


def outputs():
    return [OUT / "reader.safetensors", OUT / "reader.json", OUT / "reader-accuracy.json"]


def main() -> None:
    data = np.load(scratch() / "data" / "train.npz")
    images, attrs = data["images"], data["attrs"].astype(np.int64)
    torch.manual_seed(SEED)
    model = Reader()
    opt = torch.optim.AdamW(model.parameters(), LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=STEPS, pct_start=0.1)
    ckpt_path = scratch() / CKPT
    step = 0
    ck = load_checkpoint(ckpt_path)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step = ck["step"]
        log(f"resumed reader at step {step}")
    every = Every(180)
    t0 = time.time()
    model.train()
    while step < STEPS:
        rng = np.random.default_rng([SEED, step])
        idx = rng.integers(len(images), size=BATCH)
        g = torch.Generator().manual_seed(SEED * 100_003 + step)
        x = augment(to_input(images[idx]), g)
        y = torch.as_tensor(attrs[idx])
        out = model(x)
        loss = sum(nn.functional.cross_entropy(out[k], y[:, i]) for i, k in enumerate(ATTRIBUTES))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 100 == 0:
            log(f"reader step {step}/{STEPS} loss {loss.item():.4f} ({(time.time() - t0) / 100:.3f} s/step)")
            t0 = time.time()
        if every() or step == STEPS:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(),
                                        "sched": sched.state_dict(), "step": step})
    from safetensors.torch import save_file

    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()
               if v.dtype.is_floating_point}, str(OUT / "reader.safetensors"))
    write_json(OUT / "reader.json", {"architecture": Reader.__doc__, "input": "RGB 64×64, x / 127.5 − 1, NCHW",
                                     "heads": {k: list(v) for k, v in ATTRIBUTES.items()},
                                     "identity_attributes": list(IDENTITY)})
    model = load_reader()   # measure the committed (F16) weights
    fresh = np.load(scratch() / "data" / "fresh.npz")
    pred = read_attributes(model, fresh["images"])
    truth = fresh["attrs"].astype(np.int64)
    held = fresh["identity"] < 0
    table = {
        "description": "Attribute reader accuracy on fresh rendered photos (photo seeds never used in training), "
                       "per attribute. 'training_identities': new photos of training identities; "
                       "'heldout_identities': photos of the held-out identities (never seen); 'all': both.",
        "photos": {"training_identities": int((~held).sum()), "heldout_identities": int(held.sum())},
        "all": accuracy_table(pred, truth),
        "training_identities": accuracy_table(pred[~held], truth[~held]),
        "heldout_identities": accuracy_table(pred[held], truth[held]),
    }
    table["minimum"] = min(table["all"].values())
    write_json(OUT / "reader-accuracy.json", table)
    log(f"reader accuracy: {json.dumps(table['all'])}")
    if table["minimum"] < 0.98:
        log(f"WARNING: an attribute is below 98 % ({table['minimum']})")


if __name__ == "__main__":
    sys.exit(main())
