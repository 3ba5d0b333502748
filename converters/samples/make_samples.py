"""Writes the small sample files under samples/ that the quick start uses.

Run from the repository root with the pinned venv (see converters/setup_venv.sh):

    python converters/samples/make_samples.py

samples/tiny-clip-text.safetensors
    A tiny CLIP text encoder (hidden 64, 2 layers, 4 heads, vocabulary 512)
    saved by transformers' `save_pretrained` as one safetensors file. Its
    weights are random numbers from a fixed seed, so it is the shape of a real
    checkpoint without being useful as a model.

The output is deterministic: weights come from numpy's PCG64 (torch's own
initialisers differ between CPU kernels), and a re-run writes identical bytes.
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "samples"


def make_text_encoder() -> Path:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=512, max_position_embeddings=77, projection_dim=64,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    model = CLIPTextModel(config).eval()
    rng = np.random.default_rng(2026)
    with torch.no_grad():
        for _, p in sorted(model.state_dict().items()):
            values = rng.standard_normal(p.numel()).astype(np.float32) * np.float32(0.02)
            p.copy_(torch.from_numpy(values).reshape(p.shape))
    target = OUT / "tiny-clip-text.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(Path(tmp) / "model.safetensors", target)
    return target


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for path in [make_text_encoder()]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size} bytes  sha256 {digest}")


if __name__ == "__main__":
    main()
