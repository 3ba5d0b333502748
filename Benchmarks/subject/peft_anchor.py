"""PEFT anchor for the subject benchmark: a rank-1 LoRA on the 128 attention projections of an
SD 1.5-size UNet (diffusers folder), merged into and unmerged from the weights by PEFT, timed.

    python peft_anchor.py UNET_DIR [--repeat N]   → prints one JSON object
"""
import json
import sys
import time

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

unet_dir = sys.argv[1]
repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
torch.manual_seed(0)
unet = UNet2DConditionModel.from_pretrained(unet_dir).eval()
unet.add_adapter(LoraConfig(r=1, lora_alpha=1, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
with torch.no_grad():
    for m in layers:
        for p in m.lora_B.values():
            p.weight.normal_(0, 0.02)
before = {id(m): m.base_layer.weight.detach().clone() for m in layers}
merge, unmerge = [], []
with torch.no_grad():
    for _ in range(repeat):
        t0 = time.perf_counter()
        for m in layers:
            m.merge()
        merge.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for m in layers:
            m.unmerge()
        unmerge.append(time.perf_counter() - t0)
changed = total = 0
for m in layers:
    w = m.base_layer.weight.detach()
    changed += int((w != before[id(m)]).sum())
    total += w.numel()
med = lambda v: sorted(v)[len(v) // 2] * 1000
print(json.dumps({"layers": len(layers), "weights_touched": total, "merge_ms": med(merge), "unmerge_ms": med(unmerge),
                  "changed_after_merge_unmerge": changed, "threads": torch.get_num_threads()}))
