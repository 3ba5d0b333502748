"""PyTorch side of the hypernetwork benchmark: the reference module (transformers' CLIPVisionModel,
torch.nn.TransformerDecoderLayer) on the same weights and input as `lidb bench hyper`, timed, with its
predictions saved for lidb's --check.

    python torch_hyper.py WORKDIR --repeat 3 --out ref.safetensors   → JSON
"""
import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_hyper import build  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("work")
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--out")
a = p.parse_args()
torch.set_num_threads(2)
t0 = time.perf_counter()
with open(os.path.join(a.work, "hyper.json")) as f:
    cfg = json.load(f)
model = build(cfg, load_file(os.path.join(a.work, "hyper.safetensors")))
load = time.perf_counter() - t0
pixels = load_file(os.path.join(a.work, "pixels.safetensors"))["pixel_values"][None]
times, cpu = [], []
with torch.inference_mode():
    for _ in range(a.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(pixels)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
if a.out:
    save_file({"down_train": torch.cat([d[0].reshape(-1) for d, _ in out]).contiguous(),
               "up_train": torch.cat([u[0].reshape(-1) for _, u in out]).contiguous()}, a.out)
print(json.dumps({"layers": len(out), "load_s": load, "median_s": sorted(times)[len(times) // 2], "all_s": times,
                  "cpu_s_median": sorted(cpu)[len(cpu) // 2]}))
