"""Stage `export`: write the trained pipeline as a diffusers folder, samples/world/pipeline/.

The VAE of vae.py, the EMA text encoder and UNet of sd.py, CLIP's tokenizer files, SD 1.5's
scheduler (PNDM, as SD 1.x folders ship), all weights F16 safetensors (saved by diffusers'
save_pretrained). The VAE config records the scaling factor of latents.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import OUT, log, scratch, setup_torch

torch = setup_torch()
TARGET = OUT / "pipeline"


def outputs():
    return [TARGET / "model_index.json", TARGET / "unet" / "diffusion_pytorch_model.safetensors",
            TARGET / "vae" / "diffusion_pytorch_model.safetensors", TARGET / "text_encoder" / "model.safetensors"]


def main() -> None:
    import models
    from latents import load_vae

    models.quiet()
    final = torch.load(scratch() / "sd" / "final.pt", map_location="cpu")
    vae = load_vae()
    vae.register_to_config(scaling_factor=round(float(final["scaling_factor"]), 6))
    te, unet = models.make_text_encoder(), models.make_unet()
    te.load_state_dict(final["te"])
    unet.load_state_dict(final["unet"])
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = models.make_tokenizer(Path(tmp))
        models.save_pipeline(TARGET, vae.eval(), unet.eval(), te.eval(), tokenizer)
    sizes = {p.relative_to(TARGET).as_posix(): p.stat().st_size for p in sorted(TARGET.rglob("*")) if p.is_file()}
    log(f"wrote {TARGET} ({sum(sizes.values()):,} bytes): {sizes}")


if __name__ == "__main__":
    sys.exit(main())
