"""The tiny SD 1-architecture pipeline of the sample world: configurations and construction.

- VAE: diffusers AutoencoderKL, blocks (16, 32, 64) → scale factor 4 (64×64 pixels ↔ 16×16×4
  latents), one ResNet per block, SD's mid-block attention.
- UNet: diffusers UNet2DConditionModel, blocks (32, 64, 64), one layer per block, cross-attention
  at every level (all down blocks CrossAttnDownBlock2D, all up blocks CrossAttnUpBlock2D, SD's
  cross-attention mid block), so every attention projection the `paper` target set names exists
  at every resolution.
- Text encoder: transformers CLIPTextModel, width 64, 3 layers, 4 heads, CLIP's real vocabulary
  (49,408 tokens, samples/clip-tokenizer) and 77 positions, SD 1.x's special tokens.
- Scheduler: SD 1.5's (PNDM; scaled_linear 0.00085–0.012, 1,000 steps, epsilon, clip_sample false).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIP_TOKENIZER = ROOT / "samples" / "clip-tokenizer"

VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                  block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, act_fn="silu", sample_size=64,
                  scaling_factor=1.0)
UNET_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
                   down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                   cross_attention_dim=64, attention_head_dim=2, norm_num_groups=16, act_fn="silu", flip_sin_to_cos=True,
                   freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5)
TEXT_CONFIG = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, vocab_size=49408,
                   max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64, layer_norm_eps=1e-5,
                   bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
# SD 1.5's scheduler_config.json (PNDM), including its "clip_sample": false, which a DDIM scheduler
# made from this config inherits (DDIM's own default clips x0 to [-1, 1], wrong for latents).
SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None,
                        prediction_type="epsilon", clip_sample=False)


def quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def write_tokenizer_folder(tok: Path) -> None:
    """An SD 1.x tokenizer folder with CLIP's real vocabulary (the slow files CLIPTokenizer and lidb read)."""
    tok.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(CLIP_TOKENIZER / name, tok / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (tok / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (tok / "tokenizer_config.json").write_text(json.dumps(
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
         "tokenizer_class": "CLIPTokenizer"}, indent=2, sort_keys=True) + "\n")


def make_tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    tok = tmp / "tokenizer"
    write_tokenizer_folder(tok)
    return CLIPTokenizer.from_pretrained(tok, local_files_only=True)


def make_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SCHEDULER_CONFIG)


def save_pipeline(target: Path, vae, unet, text_encoder, tokenizer) -> None:
    """A diffusers StableDiffusionPipeline folder, F16 safetensors, with the slow tokenizer files."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=make_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = target.with_name("." + target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    write_tokenizer_folder(tmp / "tokenizer")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
