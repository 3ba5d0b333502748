"""LiDB terms on the world pipeline in PyTorch: the `paper` layer table, the frozen bases, and a
batched LiDB term in which every sample of a batch uses its own identity's factors.

A LiDB term on a linear layer W [out, in] (spec/subject.md §3) adds

    scale · up_aux · up_train · down_train · down_aux · x,      scale = alpha / rank,

with down_aux [a', in] and up_aux [out, b'] the frozen orthonormal bases that lidb-basis-1
generates from the basis seed and the layer's name (converters/python/lidb/basis.py), and the
trained factors down_train [r, a'], up_train [b', r]; a' = min(a, in), b' = min(b, out).

`BatchedLiDB` holds the trained factors of K identities, down [K, r, a'] and up [K, b', r], and a
per-sample identity index set before each forward (`use(ids)`), so one batch trains many
identities' terms at once and each identity's gradient is its own samples' gradient only.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from pathlib import Path

import numpy as np

from common import ROOT, scratch

sys.path.insert(0, str(ROOT / "converters" / "python"))
from lidb import basis as lidb_basis  # noqa: E402
from lidb.subject import LiDBTerm, Subject, SubjectLayer, targets_fingerprint, write_subject  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The world's subject shape: the paper's rank 1, a = 100, b = 50 (clamped to the tiny layers), alpha 1.
RANK, DOWN_DIM, UP_DIM, ALPHA = 1, 100, 50, 1.0
BASIS_SEED = 14_601

_UNET_ATTN = tuple(f".attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0"))
_TEXT_LAYERS = "text_encoder.text_model.encoder.layers."
_TEXT = tuple(f".self_attn.{p}_proj" for p in ("q", "k", "v", "out")) + (".mlp.fc1", ".mlp.fc2")


def in_paper_set(weight: str) -> bool:
    """The `paper` target set (spec/subject.md §2) on a base tensor name."""
    if not weight.endswith(".weight"):
        return False
    stem = weight[: -len(".weight")]
    if weight.startswith("unet."):
        return stem.endswith(_UNET_ATTN)
    return weight.startswith(_TEXT_LAYERS) and stem.endswith(_TEXT)


def layer_table(unet: nn.Module, text_encoder: nn.Module) -> list:
    """The `paper` layers in base tensor order (unet.* then text_encoder.*, each sorted by the UTF-8
    bytes of the base name, spec/base.md §1): [{name, model, module, out, in}]."""
    rows = []
    for model_name, model in (("unet", unet), ("text_encoder", text_encoder)):
        names = []
        for k, v in model.state_dict().items():
            if model_name == "unet":
                base = "unet." + k
            else:
                base = "text_encoder." + (k if k.startswith("text_model.") else "text_model." + k)
            names.append((base.encode(), base, k, tuple(v.shape)))
        names.sort()
        for _, base, k, shape in names:
            if len(shape) == 2 and in_paper_set(base):
                rows.append({"name": base[: -len(".weight")], "model": model_name, "module": k[: -len(".weight")],
                             "out": shape[0], "in": shape[1]})
    return rows


def fingerprint(layers: list) -> str:
    return targets_fingerprint([(l["name"], l["out"], l["in"]) for l in layers])


def bases(layers: list, seed: int = BASIS_SEED) -> list:
    """[(down_aux [a', in], up_aux [out, b'])] per layer, float32; cached in the scratch folder (the
    pure-Python generator takes a while)."""
    key = hashlib.sha256(f"{seed} {DOWN_DIM} {UP_DIM} {fingerprint(layers)}".encode()).hexdigest()[:16]
    path = scratch() / "fits" / f"bases-{key}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu")
    out = []
    for l in layers:
        d, u, a2, b2 = lidb_basis.layer_bases(seed, l["name"], l["out"], l["in"], DOWN_DIM, UP_DIM)
        out.append((torch.from_numpy(np.frombuffer(d, "<f4").reshape(a2, l["in"]).copy()),
                    torch.from_numpy(np.frombuffer(u, "<f4").reshape(l["out"], b2).copy())))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(out, tmp)
    tmp.rename(path)
    return out


class BatchedLiDB(nn.Module):
    """A frozen nn.Linear plus one LiDB term per identity; sample n of a batch uses identity ids[n]."""

    def __init__(self, linear: nn.Linear, down_aux, up_aux, count: int):
        super().__init__()
        self.linear = linear
        self.register_buffer("down_aux", down_aux)
        self.register_buffer("up_aux", up_aux)
        a2, b2 = down_aux.shape[0], up_aux.shape[1]
        self.down = nn.Parameter(torch.zeros(count, RANK, a2))
        self.up = nn.Parameter(torch.zeros(count, b2, RANK))
        self.ids = None
        self.override = None        # (down [N, r, a'], up [N, b', r]) per sample, e.g. a hypernetwork's prediction

    def forward(self, x):
        y = self.linear(x)
        if self.override is not None:
            down, up = self.override
        elif self.ids is not None:
            down, up = self.down[self.ids], self.up[self.ids]
        else:
            return y
        h = F.linear(x, self.down_aux)                       # [N, L, a']
        h = torch.einsum("nla,nra->nlr", h, down)            # [N, L, r]
        h = torch.einsum("nlr,nbr->nlb", h, up)              # [N, L, b']
        return y + F.linear(h, self.up_aux) * (ALPHA / RANK)


def install(unet: nn.Module, text_encoder: nn.Module, layers: list, basis: list, count: int) -> list:
    """Replaces every target nn.Linear by a BatchedLiDB for `count` identities; returns them in
    layer-table order. The models' own weights are frozen."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    mods = []
    for l, (d, u) in zip(layers, basis):
        model = unet if l["model"] == "unet" else text_encoder
        parent_path, _, child = l["module"].rpartition(".")
        parent = model.get_submodule(parent_path)
        current = parent[int(child)] if child.isdigit() else getattr(parent, child)
        assert isinstance(current, nn.Linear), l["module"]
        m = BatchedLiDB(current, d, u, count)
        if child.isdigit():
            parent[int(child)] = m
        else:
            setattr(parent, child, m)
        mods.append(m)
    return mods


def init_down(count: int, a2: int, seed: int, layer_index: int) -> torch.Tensor:
    """down_train of `count` identities for one layer: one kaiming-uniform draw (PyTorch's nn.Linear
    default, bound 1/sqrt(a')) from a generator keyed by (seed, layer), the same for every identity —
    so fitted factors differ between identities only by what they learned, which is what a
    hypernetwork can predict from a photo (a random start per identity would be noise in its targets)."""
    g = torch.Generator().manual_seed(seed * 1_009 + layer_index)
    bound = 1.0 / math.sqrt(a2)
    one = torch.empty(RANK, a2).uniform_(-bound, bound, generator=g)
    return one.expand(count, RANK, a2).clone()


def use(mods: list, ids) -> None:
    for m in mods:
        m.ids = ids


def set_override(mods: list, factors) -> None:
    """factors: [(down [N, r, a'], up [N, b', r])] per layer, or None to clear."""
    for k, m in enumerate(mods):
        m.override = None if factors is None else factors[k]


class MergedInto:
    """A diffusers pipeline's target weights, into which one identity's LiDB terms are merged for
    a `with` block (W += scale · up_aux · up · down · down_aux) and restored after it."""

    def __init__(self, pipe, layers: list):
        self.basis = bases(layers)
        self.weights = []
        for l in layers:
            model = pipe.unet if l["model"] == "unet" else pipe.text_encoder
            self.weights.append(model.get_submodule(l["module"]).weight)

    @contextlib.contextmanager
    def merged(self, factors):
        """factors: [(down [r, a'], up [b', r])] per layer, or None for the base itself."""
        saved = [w.data.clone() for w in self.weights]
        try:
            if factors is not None:
                for w, (d_aux, u_aux), (down, up) in zip(self.weights, self.basis, factors):
                    w.data += (ALPHA / RANK) * (u_aux @ up @ down @ d_aux)
            yield
        finally:
            for w, s in zip(self.weights, saved):
                w.data = s


def write_subject_file(path: Path, layers: list, downs: list, ups: list, name: str, info: dict) -> None:
    """One identity's factors (downs[l] [r, a'], ups[l] [b', r]) as a subject file, F32, basis by seed."""
    rows = []
    for l, d, u in zip(layers, downs, ups):
        term = LiDBTerm(rank=RANK, a=DOWN_DIM, b=UP_DIM, alpha=ALPHA,
                        down_train=np.ascontiguousarray(d.detach().numpy(), np.float32),
                        up_train=np.ascontiguousarray(u.detach().numpy(), np.float32))
        rows.append(SubjectLayer(name=l["name"], out=l["out"], in_=l["in"], lidb=term))
    s = Subject(layers=rows, architecture="sd1", targets="paper", seed=BASIS_SEED,
                info={"name": name, "trigger": "sks", "class": "face", **info})
    write_subject(str(path), s, dtype="f32")
