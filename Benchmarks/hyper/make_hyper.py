"""Random-weight hypernetwork of benchmark size (spec/hypernetwork.md): a ViT-H/14-sized CLIP-vision
encoder (width 1280, 32 layers, 16 heads, MLP 5120, patch 14, 224 px) and a decoder predicting the
200-layer `paper` table of SD 1.5 (Tests/SubjectTests/Fixtures/sd15-tensors.json), plus one
preprocessed input.

    python make_hyper.py WORKDIR   → WORKDIR/{hyper.safetensors, hyper.json, pixels.safetensors}
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "converters", "python", "reference"))
from hypernetwork import Hypernetwork, clip_preprocessing, make_config, targets_from_tensors  # noqa: E402

ENCODER = dict(type="clip-vision", image_size=224, patch_size=14, hidden_size=1280, num_hidden_layers=32,
               num_attention_heads=16, intermediate_size=5120, hidden_act="gelu", layer_norm_eps=1e-5, tokens="all")
DECODER = dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048, iterations=4, layer_norm_eps=1e-5)
SUBJECT = dict(rank=1, a=100, b=50, alpha=1.0, basis={"generator": "lidb-basis-1", "seed": 1234})


def config():
    with open(os.path.join(ROOT, "Tests", "SubjectTests", "Fixtures", "sd15-tensors.json")) as f:
        rows = json.load(f)["tensors"]
    layers = targets_from_tensors(rows, "paper")
    assert len(layers) == 200, len(layers)
    return make_config(ENCODER, DECODER, clip_preprocessing(224), SUBJECT, "paper", "sd1", layers)


def build(cfg, state=None):
    """The reference module without running transformers' weight init (slow at this size)."""
    with torch.device("meta"):
        model = Hypernetwork(cfg)
    model = model.to_empty(device="cpu")
    if state is not None:
        model.load_state_dict(state)
    emb = model.image_encoder.embeddings if hasattr(model.image_encoder, "embeddings") else model.image_encoder.vision_model.embeddings
    if hasattr(emb, "position_ids"):
        emb.position_ids.copy_(torch.arange(emb.position_ids.shape[-1]).expand(emb.position_ids.shape))
    return model.eval()


def main():
    work = sys.argv[1]
    os.makedirs(work, exist_ok=True)
    cfg = config()
    torch.manual_seed(0)
    model = build(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.copy_((1 + 0.1 * torch.randn(p.shape)) if name.endswith("weight") else 0.1 * torch.randn(p.shape))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.shape[-1]
                p.copy_(torch.randn(p.shape) / fan_in ** 0.5)
    model.save(os.path.join(work, "hyper.safetensors"), os.path.join(work, "hyper.json"))
    pixels = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(1))
    save_file({"pixel_values": pixels}, os.path.join(work, "pixels.safetensors"))


if __name__ == "__main__":
    main()
