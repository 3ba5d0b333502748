"""Writes an SD 1.5-size pipeline with random weights as a diffusers folder (about 4.3 GB of f32),
the input of the base benchmark. The real SD 1.5 configurations; random values from torch's
initialisers (seeded), which is all a conversion benchmark needs.

    python make_sd15.py OUT_DIR
"""
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

out = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))
torch.manual_seed(0)
os.makedirs(out, exist_ok=True)
UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
).save_pretrained(os.path.join(out, "unet"))
AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
).save_pretrained(os.path.join(out, "vae"))
CLIPTextModel(CLIPTextConfig(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    vocab_size=49408, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)).save_pretrained(os.path.join(out, "text_encoder"))
PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
              steps_offset=1, set_alpha_to_one=False).save_pretrained(os.path.join(out, "scheduler"))
# The tiny test tokenizer stands in for CLIP's (the benchmark measures weights, not text).
shutil.copytree(os.path.join(repo, "Tests/BaseTests/Fixtures/sd1/diffusers-safetensors/tokenizer"),
                os.path.join(out, "tokenizer"), dirs_exist_ok=True)
with open(os.path.join(out, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
               "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
               "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}, f)
