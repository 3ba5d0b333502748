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
import sys
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "converters" / "fixtures"))
from reference_models import tiny_clip_text_model  # noqa: E402
OUT = ROOT / "samples"


def make_text_encoder() -> Path:
    model = tiny_clip_text_model(
        2026, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=512, projection_dim=64,
    )
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
