"""Using lidb files from diffusers (needs torch, diffusers and peft; the rest of the package does not).

    from diffusers import StableDiffusionPipeline
    import lidb.diffusers

    pipe = lidb.diffusers.pipeline_from_base("sd15.lidb")          # or any diffusers pipeline of that base
    lidb.diffusers.apply_subject(pipe, "alice.lidb", weight=1.0)    # through the PEFT LoRA export
    image = pipe("a photo of sks face", num_inference_steps=20).images[0]

``apply_subject`` checks that every target layer exists in the pipeline with the subject's shape,
turns the subject into a PEFT LoRA state dict (``Subject.peft_state_dict``: one rank-R LoRA per
layer, scale 1) and loads it with ``pipe.load_lora_weights`` as an adapter; ``fuse=True`` fuses
it into the weights (the equivalent of ``lidb merge``).
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Union

from .base import read_base
from .subject import Subject, read_subject

__all__ = ["apply_subject", "pipeline_from_base", "subject_lora_state_dict"]


def subject_lora_state_dict(subject: Union[str, Subject], weight: float = 1.0):
    """The subject's PEFT LoRA state dict as torch tensors."""
    import torch

    s = read_subject(subject) if isinstance(subject, str) else subject
    return {k: torch.from_numpy(v.copy()) for k, v in s.peft_state_dict(weight).items()}


def _module_weights(pipe):
    out = {}
    for prefix, module in (("unet.", getattr(pipe, "unet", None)), ("text_encoder.", getattr(pipe, "text_encoder", None))):
        if module is None:
            continue
        for k, v in module.state_dict().items():
            k = k.replace(".base_layer.", ".")
            if prefix == "text_encoder." and not k.startswith("text_model."):
                k = "text_model." + k
            out[prefix + k] = tuple(v.shape)
    return out


def apply_subject(pipe, subject: Union[str, Subject], weight: float = 1.0, adapter_name: Optional[str] = None,
                  fuse: bool = False):
    """Loads a subject into a diffusers Stable Diffusion pipeline as a LoRA adapter. Returns the
    adapter name. Raises ``ValueError`` naming the layers that do not fit the pipeline."""
    s = read_subject(subject) if isinstance(subject, str) else subject
    shapes = _module_weights(pipe)
    problems = []
    for l in s.layers:
        got = shapes.get(l.name + ".weight")
        if got is None:
            problems.append(f"{l.name}: not in the pipeline")
        elif tuple(got[:2]) != (l.out, l.in_) or len(got) != 2:
            problems.append(f"{l.name}: pipeline has {list(got)}, subject has [{l.out}, {l.in_}]")
    if problems:
        raise ValueError("the subject does not fit this pipeline: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    name = adapter_name or (s.info.get("name") if isinstance(s.info, dict) else None) or "lidb_subject"
    pipe.load_lora_weights(subject_lora_state_dict(s, weight), adapter_name=name)
    if fuse:
        pipe.fuse_lora(lora_scale=1.0, adapter_names=[name])
    return name


def pipeline_from_base(path: str, pipeline_class=None, **kwargs):
    """A diffusers pipeline made from a base file (written to a temporary diffusers folder)."""
    if pipeline_class is None:
        from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

        b = read_base(path, verify=False)
        pipeline_class = StableDiffusionInpaintPipeline if b.variant == "inpainting" else StableDiffusionPipeline
    else:
        b = read_base(path, verify=False)
    with b, tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "pipeline")
        b.save_diffusers(folder)
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        pipe = pipeline_class.from_pretrained(folder, local_files_only=True, **kwargs)
        return pipe
