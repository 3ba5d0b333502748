"""diffusers side of the generation benchmark: StableDiffusionPipeline (f32, CPU, 2 threads) with
the Euler scheduler, timed per UNet step (classifier-free guidance: batch 2) and for the VAE
decode; saves the image for the comparison with lidb's.

    python diffusers_generate.py PIPELINE_DIR --steps 20 --size 512 --seed 42 --prompt P --out image.png  → JSON
"""
import argparse
import json
import time

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("pipeline")
p.add_argument("--steps", type=int, default=20)
p.add_argument("--size", type=int, default=512)
p.add_argument("--seed", type=int, default=42)
p.add_argument("--cfg", type=float, default=7.5)
p.add_argument("--prompt", default="a photo of an astronaut riding a horse")
p.add_argument("--out")
p.add_argument("--bf16", action="store_true", help="run under torch.autocast('cpu', dtype=torch.bfloat16)")
a = p.parse_args()
torch.set_num_threads(2)
t_start = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(a.pipeline, safety_checker=None, requires_safety_checker=False)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
load = time.perf_counter() - t_start

marks = []


def on_step_end(pipeline, step, timestep, kwargs):
    marks.append(time.perf_counter())
    return kwargs


with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
    t0 = time.perf_counter()
    latents = pipe(a.prompt, num_inference_steps=a.steps, guidance_scale=a.cfg, height=a.size, width=a.size,
                   generator=torch.Generator().manual_seed(a.seed), output_type="latent",
                   callback_on_step_end=on_step_end).images
    t1 = time.perf_counter()
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    t2 = time.perf_counter()
steps = [marks[0] - t0] + [marks[i] - marks[i - 1] for i in range(1, len(marks))]
if a.out:
    pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(a.out)
print(json.dumps({"load_s": load, "denoise_s": t1 - t0, "unet_steps_s": steps, "vae_decode_s": t2 - t1,
                  "total_s": time.perf_counter() - t_start}))
