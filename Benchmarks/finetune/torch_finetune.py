"""PyTorch side of the training-step benchmark: what a diffusers user runs for a rank-1 LoRA on
HyperDreamBooth's `paper` layers (UNet attention q/k/v/out, text-encoder attention and MLP) —
diffusers' UNet2DConditionModel and transformers' CLIPTextModel with PEFT adapters, the
DreamBooth-LoRA objective (VAE latents once, DDPM add_noise, epsilon MSE), AdamW, gradient norm
clipping at 1.0, batch 1, float32, 2 threads, no gradient checkpointing (the script's default).

    python torch_finetune.py PIPELINE_DIR PHOTO --resolution 512 --steps 3  → JSON
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

p = argparse.ArgumentParser()
p.add_argument("pipeline")
p.add_argument("photo")
p.add_argument("--resolution", type=int, default=512)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--rank", type=int, default=1)
p.add_argument("--tokenizer", default=None)
p.add_argument("--bf16", action="store_true", help="forward under torch.autocast('cpu', dtype=torch.bfloat16), loss in f32")
a = p.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
t0 = time.perf_counter()
unet = UNet2DConditionModel.from_pretrained(a.pipeline, subfolder="unet")
text = CLIPTextModel.from_pretrained(a.pipeline, subfolder="text_encoder")
vae = AutoencoderKL.from_pretrained(a.pipeline, subfolder="vae")
tok = CLIPTokenizer.from_pretrained(a.tokenizer or a.pipeline, subfolder=None if a.tokenizer else "tokenizer")
sched = DDPMScheduler.from_pretrained(a.pipeline, subfolder="scheduler")
for m in (unet, text, vae):
    m.requires_grad_(False)
unet = get_peft_model(unet, LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights=True,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
text = get_peft_model(text, LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights=True,
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
layers = sum(1 for n, _ in unet.named_modules() if n.endswith("lora_A")) + sum(1 for n, _ in text.named_modules() if n.endswith("lora_A"))
params = [q for q in list(unet.parameters()) + list(text.parameters()) if q.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
img = Image.open(a.photo).convert("RGB")
w, h = img.size
s = a.resolution / min(w, h)
img = img.resize((max(a.resolution, round(w * s)), max(a.resolution, round(h * s))), Image.BILINEAR)
left, top = (img.size[0] - a.resolution) // 2, (img.size[1] - a.resolution) // 2
img = img.crop((left, top, left + a.resolution, top + a.resolution))
x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
with torch.no_grad():
    dist = vae.encode(x).latent_dist
ids = tok("a photo of sks face", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
load = time.perf_counter() - t0
times, losses = [], []
for step in range(a.steps):
    t0 = time.perf_counter()
    latents = dist.sample() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    t = torch.randint(0, sched.config.num_train_timesteps, (1,))
    noisy = sched.add_noise(latents, noise, t)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        ctx = text(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=ctx).sample
    loss = F.mse_loss(pred.float(), noise)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t0)
    losses.append(loss.item())
print(json.dumps({"resolution": a.resolution, "layers": layers, "load_s": load, "step_median_s": sorted(times)[len(times) // 2],
                  "all_s": times, "losses": losses}))
