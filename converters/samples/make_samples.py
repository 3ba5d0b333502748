"""Writes the random-weight sample files under samples/ that the tests, benchmarks and the README's tour use.

Run from the repository root with the pinned venv (converters/setup_venv.sh) and a built lidb:

    python converters/samples/make_samples.py [PATH/TO/lidb]

Every model here has random weights from a fixed seed (numpy PCG64): the shapes and the code paths
are those of real checkpoints, the images they make are noise. The UNet and VAE weights are scaled
by 1/√fan_in so that activations keep their scale and the noise is visible.

samples/tiny-sd/
    A diffusers StableDiffusionPipeline folder (safetensors, F16) with the SD 1.x architecture at
    toy width: UNet blocks (32, 32, 64, 64) with 2 layers per block and cross-attention like SD 1.5
    (128 attention projections), a 2-layer CLIP text encoder of width 32 with CLIP's real
    vocabulary (samples/clip-tokenizer: 49,408 tokens), a VAE with blocks (32, 32, 64, 64), and
    SD 1.5's scheduler configuration. Saved by diffusers' save_pretrained.
samples/face.jpg
    A cartoon face drawn with PIL (ellipses and lines, no real person), 384×448, JPEG quality 92,
    stored rotated with EXIF Orientation 6 so that viewers (and lidb) turn it upright.
samples/tiny-hyper.safetensors + samples/tiny-hyper.json
    A tiny hypernetwork for tiny-sd (the PyTorch reference of spec/hypernetwork.md, random weights),
    predicting the `paper` target set of tiny-sd.
samples/lora-peft.safetensors
    A rank-4 PEFT LoRA on tiny-sd's UNet attention and text-encoder attention, as
    StableDiffusionPipeline.save_lora_weights writes it (random factors).
samples/subject-hyper.lidb, samples/subject-lora.lidb
    Subject files made by lidb from the two above (`lidb personalize`, `lidb subject import`),
    when a lidb binary is given.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "converters" / "fixtures"))
sys.path.insert(0, str(ROOT / "converters" / "python"))
OUT = ROOT / "samples"
SEED = 2026

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reference_models import seeded_, tiny_clip_text_model  # noqa: E402

SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)


def write_tokenizer_folder(tok: Path) -> None:
    """The files of an SD 1.x tokenizer folder, with CLIP's real vocabulary (samples/clip-tokenizer)."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(OUT / "clip-tokenizer" / name, tok / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (tok / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (tok / "tokenizer_config.json").write_text(json.dumps(
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
         "tokenizer_class": "CLIPTokenizer"}, indent=2, sort_keys=True) + "\n")


def variance_preserving_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights that keep activations at unit scale (so the images are visible noise, not
    grey): every matrix or kernel N(0, 1/fan_in) from numpy's PCG64, norms at weight 1, biases 0."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            if p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                values = rng.standard_normal(p.numel()).astype(np.float32) / np.float32(np.sqrt(fan_in))
                p.copy_(torch.from_numpy(values).reshape(p.shape))
            elif name.endswith("weight") and "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    return model


def build_pipeline():
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    vocab = json.loads((OUT / "clip-tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    text_encoder = tiny_clip_text_model(SEED + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, vocab_size=len(vocab), projection_dim=32,
                                        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(SEED)
    unet = variance_preserving_(UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, act_fn="silu", flip_sin_to_cos=True,
        freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5).eval(), SEED)
    vae = variance_preserving_(AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, act_fn="silu", sample_size=128, scaling_factor=0.18215).eval(), SEED + 2)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer"
        tok.mkdir()
        write_tokenizer_folder(tok)
        tokenizer = CLIPTokenizer.from_pretrained(tok, local_files_only=True)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def make_pipeline(pipe) -> Path:
    target = OUT / "tiny-sd"
    if target.exists():
        shutil.rmtree(target)
    pipe.to(torch.float16).save_pretrained(target, safe_serialization=True)
    pipe.to(torch.float32)
    # transformers 5 saves only the fast tokenizer's tokenizer.json (3.5 MB); an SD tokenizer folder
    # has the slow files, which CLIPTokenizer and lidb read.
    tok = target / "tokenizer"
    (tok / "tokenizer.json").unlink(missing_ok=True)
    write_tokenizer_folder(tok)
    return target


def make_face() -> Path:
    from PIL import Image, ImageDraw

    w, h = 384, 448
    img = Image.new("RGB", (w, h), (196, 214, 230))
    d = ImageDraw.Draw(img)
    for y in range(h):  # background gradient
        d.line([(0, y), (w, y)], fill=(170 + y * 40 // h, 196 + y * 20 // h, 225 - y * 30 // h))
    d.rectangle([120, 330, 264, 448], fill=(70, 90, 140))            # shirt
    d.rectangle([168, 290, 216, 345], fill=(226, 184, 150))          # neck
    d.ellipse([92, 70, 292, 330], fill=(236, 196, 160), outline=(150, 110, 90), width=2)   # face
    d.pieslice([84, 40, 300, 220], 180, 360, fill=(92, 58, 38))      # hair
    d.ellipse([80, 170, 104, 230], fill=(230, 188, 152))             # ears
    d.ellipse([280, 170, 304, 230], fill=(230, 188, 152))
    for cx in (152, 232):                                            # eyes
        d.ellipse([cx - 20, 178, cx + 20, 202], fill=(250, 250, 250), outline=(60, 40, 30), width=2)
        d.ellipse([cx - 8, 182, cx + 8, 198], fill=(70, 110, 60))
        d.ellipse([cx - 3, 187, cx + 3, 193], fill=(10, 10, 10))
        d.arc([cx - 24, 156, cx + 24, 180], 200, 340, fill=(80, 50, 35), width=4)  # brows
    d.polygon([(192, 200), (180, 250), (204, 250)], fill=(220, 170, 140))          # nose
    d.arc([150, 240, 234, 296], 20, 160, fill=(170, 60, 60), width=5)              # mouth
    # Stored rotated 90° clockwise on disk; EXIF Orientation 6 tells readers to rotate it back.
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    target = OUT / "face.jpg"
    stored.save(target, "JPEG", quality=92, exif=exif.tobytes())
    return target


def make_lora(pipe) -> Path:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    cfg = lambda targets: LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=True)  # noqa: E731
    pipe.unet.add_adapter(cfg(["to_q", "to_k", "to_v", "to_out.0"]))
    inject_adapter_in_model(cfg(["q_proj", "k_proj", "v_proj", "out_proj"]), pipe.text_encoder, "default")
    rng = np.random.default_rng(SEED + 7)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in sorted(module.named_parameters()):
                if "lora_" in name:
                    p.copy_(torch.from_numpy(rng.standard_normal(p.numel()).astype(np.float32) * 0.05).reshape(p.shape))
    target = OUT / "lora-peft.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder), safe_serialization=True)
        shutil.copyfile(Path(tmp) / "pytorch_lora_weights.safetensors", target)
    return target


def make_hypernetwork() -> list:
    """The tiny hypernetwork (PyTorch reference of spec/hypernetwork.md) for tiny-sd's `paper` table:
    a CLIP-vision encoder on 64-px images (patch 8, width 64, 2 layers), a 2-layer decoder of width 64
    refining for 4 iterations, the paper's subject configuration (rank 1, a = 100, b = 50, clamped
    to tiny-sd's layers). Weights: N(0, 0.02²) from numpy's PCG64, layer norms at weight 1, bias 0."""
    from safetensors import safe_open

    sys.path.insert(0, str(ROOT / "converters" / "python" / "reference"))
    from hypernetwork import Hypernetwork, clip_preprocessing, make_config, targets_from_tensors

    rows = []
    for comp, file in (("unet", "unet/diffusion_pytorch_model.safetensors"), ("text_encoder", "text_encoder/model.safetensors")):
        names = []
        with safe_open(str(OUT / "tiny-sd" / file), "pt") as f:
            for k in f.keys():
                k2 = "text_model." + k if comp == "text_encoder" and not k.startswith("text_model.") else k
                names.append((f"{comp}.{k2}", list(f.get_slice(k).get_shape())))
        rows += sorted(names, key=lambda r: r[0].encode())
    layers = targets_from_tensors(rows, "paper")
    cfg = make_config(
        dict(type="clip-vision", image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, hidden_act="quick_gelu", layer_norm_eps=1e-5, tokens="all"),
        dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, iterations=4, layer_norm_eps=1e-5),
        clip_preprocessing(64),
        dict(rank=1, a=100, b=50, alpha=1.0, basis={"generator": "lidb-basis-1", "seed": SEED}),
        "paper", "sd1", layers)
    torch.manual_seed(SEED + 11)
    model = seeded_(Hypernetwork(cfg).eval(), SEED + 11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    weights, config = OUT / "tiny-hyper.safetensors", OUT / "tiny-hyper.json"
    model.save(str(weights), str(config))
    return [weights, config]


def make_subjects(lidb: str) -> list:
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "tiny-sd.lidb")
        subprocess.run([lidb, "convert", str(OUT / "tiny-sd"), "-o", base], check=True, capture_output=True)
        subprocess.run([lidb, "subject", "import", str(OUT / "lora-peft.safetensors"), "--base", base,
                        "-o", str(OUT / "subject-lora.lidb")], check=True, capture_output=True)
        made.append(OUT / "subject-lora.lidb")
        if (OUT / "tiny-hyper.safetensors").exists():
            hyper = os.path.join(tmp, "tiny-hyper.lidb")
            subprocess.run([lidb, "convert", str(OUT / "tiny-hyper.safetensors"), "--kind", "hypernetwork", "--config",
                            str(OUT / "tiny-hyper.json"), "-o", hyper], check=True, capture_output=True)
            subprocess.run([lidb, "personalize", "--hypernet", hyper, "--base", base, "--image", str(OUT / "face.jpg"),
                            "--trigger", "sks", "--class", "face", "--name", "sample-face",
                            "-o", str(OUT / "subject-hyper.lidb")], check=True, capture_output=True)
            made.append(OUT / "subject-hyper.lidb")
    return made


def main() -> None:
    OUT.mkdir(exist_ok=True)
    torch.set_num_threads(2)
    pipe = build_pipeline()
    made = [make_pipeline(pipe), make_face(), make_lora(pipe)]
    made += make_hypernetwork()
    if len(sys.argv) > 1:
        made += make_subjects(sys.argv[1])
    for path in made:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            print(f"{f.relative_to(ROOT)}  {f.stat().st_size} bytes  sha256 {digest[:16]}")


if __name__ == "__main__":
    main()
