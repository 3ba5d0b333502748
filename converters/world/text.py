"""Stage `text`: pretrain the world's CLIP text encoder on the captions, before the UNet.

Stable Diffusion's text encoder is a pretrained CLIP model, frozen while the UNet trains. The world
has no pretrained CLIP, so its text encoder (models.TEXT_CONFIG, CLIP's real vocabulary) first
learns to read the captions: from the hidden states of the end-of-text and padding positions
(every position from the first end-of-text token on; the UNet attends to all 77), one linear head
per attribute predicts the attribute's value or "not named". The captions are those the UNet
trains on (space.training_caption over the training identities' photos, full, partial and empty),
drawn per step from a generator keyed by (seed, step). AdamW, warm-up then cosine decay.

Checkpoints: <scratch>/text/ckpt.pt; rerunning resumes. Output: <scratch>/text/text_encoder.pt and
text/metrics.json — the heads' accuracy on captions of the held-out identities (never trained on).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Every, load_checkpoint, log, save_checkpoint, scratch, setup_torch, write_json
from space import ATTRIBUTES, CONTEXT, IDENTITY, caption, identity_sets, random_context, training_caption

torch = setup_torch()
nn = torch.nn

SEED = 14_451
STEPS = 1200
BATCH = 128
LR = 1e-3
EOS = 49407


def outputs():
    return [scratch() / "text" / "text_encoder.pt"]


class Heads(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        # Class len(values): "not named in the caption".
        self.heads = nn.ModuleDict({k: nn.Linear(width, len(v) + 1) for k, v in ATTRIBUTES.items()})

    def forward(self, hidden, ids):
        first_eos = (ids == EOS).int().argmax(1)
        pos = torch.arange(ids.shape[1])[None, :]
        mask = (pos >= first_eos[:, None]).float()[..., None]
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return {k: h(pooled) for k, h in self.heads.items()}


def targets(attr_rows, named: list) -> np.ndarray:
    """What each caption names: the value index, or len(values) when the caption does not name it."""
    out = np.zeros((len(named), len(ATTRIBUTES)), np.int64)
    for n, (row, nm) in enumerate(zip(attr_rows, named)):
        for i, (k, values) in enumerate(ATTRIBUTES.items()):
            out[n, i] = int(row[i]) if nm[k] else len(values)
    return out


def main() -> None:
    import models
    from sd import Captions

    models.quiet()
    data = np.load(scratch() / "data" / "train.npz")
    attrs = data["attrs"].astype(np.int64)
    tmp = tempfile.TemporaryDirectory()
    tokenizer = models.make_tokenizer(Path(tmp.name))
    captions = Captions(tokenizer)
    torch.manual_seed(SEED)
    te = models.make_text_encoder()
    heads = Heads(te.config.hidden_size)
    params = list(te.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, LR, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, STEPS) / STEPS)))
    path = scratch() / "text" / "ckpt.pt"
    step = 0
    ck = load_checkpoint(path)
    if ck is not None:
        te.load_state_dict(ck["te"])
        heads.load_state_dict(ck["heads"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step = ck["step"]
        log(f"resumed text encoder at step {step}")
    every = Every(180)
    keys_i, keys_c = list(IDENTITY), list(CONTEXT)
    t0 = time.time()
    while step < STEPS:
        rng = np.random.default_rng([SEED, step])
        idx = rng.integers(len(attrs), size=BATCH)
        pairs = [training_caption(dict(zip(keys_i, a[:7])), dict(zip(keys_c, a[7:])), rng, with_named=True)
                 for a in attrs[idx]]
        ids = captions.ids([p[0] for p in pairs])
        y = torch.as_tensor(targets(attrs[idx], [p[1] for p in pairs]))
        out = heads(te(ids)[0], ids)
        loss = sum(nn.functional.cross_entropy(out[k], y[:, i]) for i, k in enumerate(ATTRIBUTES))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % 100 == 0:
            log(f"text step {step}/{STEPS} loss {loss.item():.4f} ({(time.time() - t0) / 100:.3f} s/step)")
            t0 = time.time()
        if every() or step == STEPS:
            save_checkpoint(path, {"te": te.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                                   "sched": sched.state_dict(), "step": step})
    # Held-out identities' captions: every context, full and partial.
    _, heldout = identity_sets()
    rng = np.random.default_rng(SEED + 1)
    pairs, rows = [], []
    for h in heldout:
        for _ in range(40):
            ctx = random_context(rng)
            pairs.append(training_caption(h.attrs, ctx, rng, with_named=True) if rng.random() < 0.5
                         else caption(h.attrs, ctx, with_named=True))
            rows.append([h.attrs[k] for k in IDENTITY] + [ctx[k] for k in CONTEXT])
    te.eval()
    with torch.no_grad():
        ids = captions.ids([p[0] for p in pairs])
        out = heads(te(ids)[0], ids)
    y = targets(np.asarray(rows), [p[1] for p in pairs])
    acc = {k: round(float((out[k].argmax(1).numpy() == y[:, i]).mean()), 4) for i, k in enumerate(ATTRIBUTES)}
    write_json(scratch() / "text" / "metrics.json", {"heldout_captions": len(pairs), "accuracy": acc})
    final = scratch() / "text" / "text_encoder.pt"
    torch.save(te.state_dict(), final.with_name(".text_encoder.tmp.pt"))
    final.with_name(".text_encoder.tmp.pt").rename(final)
    log(f"text encoder done; heads on held-out captions: {acc}")


if __name__ == "__main__":
    sys.exit(main())
