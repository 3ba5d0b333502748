"""PyTorch reference of the lidb hypernetwork (spec/hypernetwork.md), built from library modules:
transformers' CLIPVisionModel / ViTModel for the image encoder and torch.nn.TransformerDecoderLayer
for the weight decoder. It saves its weights as safetensors plus the `hyper.json` config that
`lidb convert W.safetensors --kind hypernetwork --config hyper.json -o hyper.lidb` takes.

    from hypernetwork import Hypernetwork, make_config, targets_from_tensors
    cfg = make_config(encoder=..., decoder=..., preprocessing=..., subject=..., targets=...)
    model = Hypernetwork(cfg).eval()
    layers = model(pixel_values)            # [(down_train [B, r, a'], up_train [B, b', r]), ...]
    model.save("hyper.safetensors", "hyper.json")
"""
import hashlib
import json

import torch
from torch import nn
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

SCHEMA = 1

# Image preprocessing presets (the values of transformers' CLIPImageProcessor and ViTImageProcessor).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_preprocessing(size):
    return {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}, "resample": "bicubic",
            "rescale_factor": 1 / 255, "image_mean": CLIP_MEAN, "image_std": CLIP_STD}


def vit_preprocessing(size):
    return {"size": {"height": size, "width": size}, "crop_size": None, "resample": "bilinear",
            "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


# Target sets (spec/subject.md §2), over base tensor names "<component>.<diffusers name>".
_UNET_ATTN = tuple(f".attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0"))
_TEXT_PREFIX = "text_encoder.text_model.encoder.layers."


def in_set(target_set, weight_name):
    if not weight_name.endswith(".weight"):
        return False
    stem = weight_name[: -len(".weight")]
    unet = weight_name.startswith("unet.") and stem.endswith(_UNET_ATTN)
    text_attn = weight_name.startswith(_TEXT_PREFIX) and stem.endswith(
        tuple(f".self_attn.{p}_proj" for p in ("q", "k", "v", "out")))
    text_mlp = weight_name.startswith(_TEXT_PREFIX) and stem.endswith((".mlp.fc1", ".mlp.fc2"))
    return {"unet-attn": unet, "text-attn": text_attn, "text-mlp": text_mlp,
            "paper": unet or text_attn or text_mlp}[target_set]


def targets_from_tensors(rows, target_set):
    """rows: [(base tensor name, shape)] in the base's tensor order → [(layer name, out, in)]."""
    return [(n[: -len(".weight")], s[0], s[1]) for n, s in rows
            if len(s) == 2 and s[0] > 0 and s[1] > 0 and in_set(target_set, n)]


def table_fingerprint(layers):
    text = "".join(f"{n}\t{o},{i}\n" for n, o, i in layers)
    return hashlib.sha256(text.encode()).hexdigest()


def make_config(encoder, decoder, preprocessing, subject, target_set, architecture, layers):
    """The hypernetwork's configuration as stored in its file's metadata (spec/hypernetwork.md §3)."""
    decoder = dict(decoder, weight_tokens=len(layers))
    return {
        "lidb_hypernetwork": SCHEMA,
        "encoder": encoder,
        "decoder": decoder,
        "preprocessing": preprocessing,
        "subject": subject,
        "targets": {"set": target_set, "architecture": architecture, "fingerprint": table_fingerprint(layers),
                    "layers": [{"name": n, "shape": [o, i]} for n, o, i in layers]},
    }


def layer_dims(cfg):
    """Per target layer: (a', b', r·a', b'·r) with a, b clamped to the layer."""
    s = cfg["subject"]
    r = s["rank"]
    out = []
    for l in cfg["targets"]["layers"]:
        o, i = l["shape"]
        a, b = min(s["a"], i), min(s["b"], o)
        out.append((a, b, r * a, b * r))
    return out


class Decoder(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(d["hidden_size"], d["num_heads"], d["intermediate_size"], dropout=0.0,
                                       activation="gelu", layer_norm_eps=d["layer_norm_eps"], batch_first=True,
                                       norm_first=True)
            for _ in range(d["num_layers"]))
        self.norm = nn.LayerNorm(d["hidden_size"], eps=d["layer_norm_eps"])


class Hypernetwork(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        e, d, s = cfg["encoder"], cfg["decoder"], cfg["subject"]
        common = dict(hidden_size=e["hidden_size"], intermediate_size=e["intermediate_size"],
                      num_hidden_layers=e["num_hidden_layers"], num_attention_heads=e["num_attention_heads"],
                      num_channels=3, image_size=e["image_size"], patch_size=e["patch_size"],
                      hidden_act=e["hidden_act"], layer_norm_eps=e["layer_norm_eps"])
        if e["type"] == "clip-vision":
            self.image_encoder = CLIPVisionModel(CLIPVisionConfig(attention_dropout=0.0, **common))
        elif e["type"] == "vit":
            self.image_encoder = ViTModel(ViTConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                    qkv_bias=True, **common), add_pooling_layer=False)
        else:
            raise ValueError(f"unknown encoder type {e['type']}")
        D = d["hidden_size"]
        self.dims = layer_dims(cfg)
        r, a, b = s["rank"], s["a"], s["b"]
        self.padded = r * a + b * r
        self.image_proj = nn.Linear(e["hidden_size"], D)
        self.weight_in = nn.Linear(self.padded, D)
        self.weight_pos = nn.Parameter(torch.randn(len(self.dims), D) * 0.02)
        self.decoder = Decoder(d)
        self.heads = nn.ModuleList(nn.Linear(D, nd + nu) for (_, _, nd, nu) in self.dims)

    def image_tokens(self, pixel_values):
        e = self.cfg["encoder"]
        h = self.image_encoder(pixel_values=pixel_values).last_hidden_state
        if e["type"] == "clip-vision":
            h = self.image_encoder.vision_model.post_layernorm(h) if hasattr(self.image_encoder, "vision_model") \
                else self.image_encoder.post_layernorm(h)
        # ViTModel's last_hidden_state already went through its final layernorm.
        return {"all": h, "class": h[:, :1], "patch": h[:, 1:]}[e["tokens"]]

    def pad(self, downs, ups):
        """Current estimates → [B, L, r·a + b·r]: down_train [r, a'] padded to [r, a], up_train [b', r] to [b, r]."""
        s = self.cfg["subject"]
        r, a, b = s["rank"], s["a"], s["b"]
        rows = []
        for dn, up in zip(downs, ups):
            B = dn.shape[0]
            pd = torch.zeros(B, r, a)
            pd[:, :, : dn.shape[2]] = dn
            pu = torch.zeros(B, b, r)
            pu[:, : up.shape[1], :] = up
            rows.append(torch.cat([pd.reshape(B, -1), pu.reshape(B, -1)], dim=1))
        return torch.stack(rows, dim=1)

    def forward(self, pixel_values, return_features=False):
        s = self.cfg["subject"]
        r = s["rank"]
        B = pixel_values.shape[0]
        feats = self.image_tokens(pixel_values)
        memory = self.image_proj(feats)
        downs = [torch.zeros(B, r, a) for (a, _, _, _) in self.dims]
        ups = [torch.zeros(B, b, r) for (_, b, _, _) in self.dims]
        for _ in range(self.cfg["decoder"]["iterations"]):
            x = self.weight_in(self.pad(downs, ups)) + self.weight_pos
            for layer in self.decoder.layers:
                x = layer(x, memory)
            x = self.decoder.norm(x)
            for i, (a, b, nd, nu) in enumerate(self.dims):
                delta = self.heads[i](x[:, i])
                downs[i] = downs[i] + delta[:, :nd].reshape(B, r, a)
                ups[i] = ups[i] + delta[:, nd:].reshape(B, b, r)
        out = list(zip(downs, ups))
        return (out, feats) if return_features else out

    def lidb_state_dict(self):
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def save(self, weights_path, config_path):
        save_file(self.lidb_state_dict(), weights_path)
        with open(config_path, "w") as f:
            json.dump(self.cfg, f, indent=1)
            f.write("\n")


def randomize_norms_(model, generator):
    """Layer norms start at weight 1, bias 0; give them random values so a test can see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                if name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
