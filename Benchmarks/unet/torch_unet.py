"""PyTorch/diffusers side of the UNet benchmark: the same evaluation as `lidb bench unet`
(inputs from torch.Generator().manual_seed(SEED): randn(batch, 4, L, L) then randn(batch, 77, ctx)),
timed, with its output saved (as f32) for lidb's --check. --bf16 runs it under CPU bf16 autocast.

    python torch_unet.py UNET_DIR --latent 64 --batch 2 --repeat 3 --out ref.safetensors  → JSON
"""
import argparse
import json
import time

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("unet")
p.add_argument("--latent", type=int, default=64)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--timestep", type=float, default=500)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--out")
p.add_argument("--bf16", action="store_true", help="run under torch.autocast('cpu', dtype=torch.bfloat16)")
a = p.parse_args()
torch.set_num_threads(2)
t0 = time.perf_counter()
unet = UNet2DConditionModel.from_pretrained(a.unet).eval()
load = time.perf_counter() - t0
g = torch.Generator().manual_seed(a.seed)
sample = torch.randn(a.batch, 4, a.latent, a.latent, generator=g)
context = torch.randn(a.batch, 77, unet.config.cross_attention_dim, generator=g)
times = []
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        out = unet(sample, torch.full((a.batch,), a.timestep), encoder_hidden_states=context).sample
        times.append(time.perf_counter() - t0)
if a.out:
    save_file({"out": out.float().contiguous()}, a.out)
print(json.dumps({"latent": a.latent, "batch": a.batch, "load_s": load, "median_s": sorted(times)[len(times) // 2], "all_s": times}))
