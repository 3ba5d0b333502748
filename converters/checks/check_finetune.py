"""Checks that `lidb finetune` learns and that its subject means the same thing in diffusers.

On the sample pipeline (samples/tiny-sd, random weights) and the sample photo: trains a subject
from scratch with `lidb finetune --eval N` (the evaluation loss of spec/finetune.md §11 before and
after training), exports it with `lidb subject export --format peft`, loads that into diffusers'
StableDiffusionPipeline with `load_lora_weights`, and recomputes the §11 evaluation loss in PyTorch
— photo preprocessing by torchvision, the VAE posterior, the generator's draws, DDPMScheduler's
add_noise, the UNet and the text encoder with the LoRA — for the base alone and with the subject.

    python converters/checks/check_finetune.py PATH/TO/lidb [--steps 60] [--resolution 64]

Fails unless the loss drops by at least --min-drop (relative) and diffusers' losses agree with
lidb's within 1e-4 relative.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
import diffusers  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from diffusers import DDPMScheduler, StableDiffusionPipeline  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from torchvision import transforms  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPE = os.path.join(ROOT, "samples", "tiny-sd")
PHOTO = os.path.join(ROOT, "samples", "face.jpg")


def evaluation_loss(pipe, resolution, count, seed, prompt):
    """spec/finetune.md §11, in PyTorch."""
    tf = transforms.Compose([transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.CenterCrop(resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    pixels = tf(ImageOps.exif_transpose(Image.open(PHOTO)).convert("RGB"))[None]   # lidb applies the EXIF orientation (spec/image.md)
    sched = DDPMScheduler.from_pretrained(PIPE, subfolder="scheduler")
    T = sched.config.num_train_timesteps
    with torch.no_grad():
        dist = pipe.vae.encode(pixels).latent_dist
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        ctx = pipe.text_encoder(ids)[0]
        g = torch.Generator().manual_seed(seed)
        losses = []
        for j in range(count):
            t = (2 * j + 1) * T // (2 * count)
            z = torch.randn(dist.mean.shape, generator=g)
            eps = torch.randn(dist.mean.shape, generator=g)
            x0 = (dist.mean + dist.std * z) * pipe.vae.config.scaling_factor
            tt = torch.tensor([t])
            noisy = sched.add_noise(x0, eps, tt)
            target = eps if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, eps, tt)
            pred = pipe.unet(noisy, tt, encoder_hidden_states=ctx).sample
            losses.append(F.mse_loss(pred, target).item())
    return sum(losses) / len(losses)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lidb")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--eval", type=int, default=8)
    p.add_argument("--min-drop", type=float, default=0.05)
    a = p.parse_args()
    torch.set_num_threads(2)
    prompt = "a photo of sks face"
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        base, subject, peft = (os.path.join(tmp, n) for n in ("base.lidb", "s.lidb", "peft.safetensors"))
        subprocess.run([a.lidb, "convert", PIPE, "--dtype", "f32", "-o", base], check=True, capture_output=True)
        r = subprocess.run([a.lidb, "finetune", "--base", base, "--image", PHOTO, "--resolution", str(a.resolution),
                            "--steps", str(a.steps), "--eval", str(a.eval), "--dtype", "f32", "-o", subject, "--timings"],
                           check=True, capture_output=True, text=True)
        t = json.loads(r.stdout.strip().splitlines()[-1])
        before, after = t["eval_loss_before"], t["eval_loss_after"]
        drop = 1 - after / before
        print(f"lidb finetune, {a.steps} steps at {a.resolution} px: evaluation loss {before:.6f} → {after:.6f} "
              f"({drop * 100:.1f} % lower), {t['step_median_s']:.3f} s/step")
        if drop < a.min_drop:
            print(f"FAIL: the loss dropped by {drop * 100:.1f} %, less than {a.min_drop * 100:.1f} %")
            failures += 1
        subprocess.run([a.lidb, "subject", "export", subject, "--format", "peft", "-o", peft], check=True, capture_output=True)
        pipe = StableDiffusionPipeline.from_pretrained(PIPE, torch_dtype=torch.float32, safety_checker=None)
        ref_before = evaluation_loss(pipe, a.resolution, a.eval, 0, prompt)
        pipe.load_lora_weights(peft)
        ref_after = evaluation_loss(pipe, a.resolution, a.eval, 0, prompt)
        for what, mine, ref in (("base", before, ref_before), ("with the subject", after, ref_after)):
            err = abs(mine - ref) / abs(ref)
            ok = err <= 1e-4
            failures += not ok
            print(f"{'ok' if ok else 'FAIL'}: evaluation loss {what}: lidb {mine:.7f}, diffusers {ref:.7f} (relative difference {err:.1e})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
