"""Small parity cases for the transformer backbones (xtask/fixtures/parity), computed by timm and
the official Dynamic MLP code, so that `cargo test` checks Swin and PVT v2 on any clone.

    python xtask/python/make_transformer_parity.py --reference PATH/TO/DynamicMLP --out xtask/fixtures/parity

Needs `torch` and `timm` (PyPI); PATH/TO/DynamicMLP is a checkout of the paper's official
repository (its `FCNet` and `get_dynamic_mlp` build `loc_net` and `loc_att`). The format is
shared/fixtures/parity/README.md's, made as there: random weights rounded to float16, float32
inputs, references computed in float64 and stored as float32. The cases cover what the shared
`parity-transformers/` cases do not:
- `model-swin-odd-window5-dmlp-a`: a 3-stage Swin on 44x44 images, patch 4 (an 11x11 grid, odd
  for patch merging), window 5 (maps of 11 and 6 padded to whole windows under the shift mask,
  and a 3x3 last stage where the window shrinks to the map, unshifted), depths 2-1-2, heads
  1-2-4, MLP ratio 2, Dynamic MLP-A on top;
- `model-pvt-v2-li-dmlp-b`: the linear PVT v2 (keys and values average-pooled to 7x7, here from
  maps smaller than 7, so the pooling windows overlap) on 60x44 images, Dynamic MLP-B;
- `train-step-swin-adamw`: three AdamW steps (lr 1e-3, weight decay 0.05: the supplement's
  transformer optimiser at a rate that moves the weights measurably) of a Swin + Dynamic MLP-C with mixup and label smoothing as the
  reference's train.py applies them.
- `model-pvt-v1-dmlp-c` (with `--pvt PATH/TO/PVT`, a checkout of whai362/PVT): the PVT
  authors' own `PyramidVisionTransformer` (classification/pvt.py) laid out for 64x64 images,
  run on 80x72 images, so every stage's position embedding is resized bilinearly, and the class
  token joins the last stage; Dynamic MLP-C on top.
The cases share one `loc_net` (FCNet, 256 wide as in the reference: 1 MB of the 1.2 MB a case
would weigh), stored once in `transformer-loc-net.safetensors` beside the cases; each case's
`weights` lists that file and its own.
"""

import argparse
import json
import os
import sys
import types

import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

CIN = 6
CLASSES = 7


def reference_modules(path):
    sys.path.insert(0, path)
    import models.dynamic_mlp as dynamic_mlp  # noqa: E402
    import utils  # noqa: E402

    return dynamic_mlp, utils


class Fused(nn.Module):
    """timm backbone → pooled features → loc_att(features, loc_net(loc)) → fc, with the
    reference's modules and names (`loc_net`, `loc_att`, `fc`)."""

    def __init__(self, backbone, dynamic_mlp, mlp_type, mlp_d, mlp_h, mlp_n):
        super().__init__()
        self.backbone = backbone
        width = backbone.num_features
        args = types.SimpleNamespace(mlp_cin=CIN, mlp_d=mlp_d, mlp_h=mlp_h, mlp_n=mlp_n, mlp_type=mlp_type)
        self.loc_net = dynamic_mlp.FCNet(num_inputs=CIN, num_classes=mlp_d, num_filts=256)
        self.loc_att = dynamic_mlp.get_dynamic_mlp(width, args)
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, image, loc):
        features = self.backbone.forward_head(self.backbone.forward_features(image), pre_logits=True)
        loc_features = self.loc_net(loc)
        fused = self.loc_att(features.clone(), loc_features)
        return {"features": features, "loc_features": loc_features, "fused": fused, "logits": self.fc(fused)}


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for t in model.parameters():
            t.copy_(t.half().float())


LOC_NET_FILE = "transformer-loc-net.safetensors"
SHARED_WEIGHTS = ["../" + LOC_NET_FILE, "weights.safetensors"]


def weights_of(model):
    """The state_dict without `loc_net` (shared), the backbone's keys at the root as dmlp names
    them; non-persistent buffers (relative_position_index, attn_mask) are not in it."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("backbone.")
        if k.startswith(("head.", "loc_net.")):
            continue  # timm's own classifier is unused (pre_logits); loc_net is shared
        out[k] = v.detach().clone().half() if v.is_floating_point() else v.detach().clone()
    return out


def share_loc_net(model, loc_net):
    """Sets the model's loc_net to the shared one."""
    with torch.no_grad():
        for name, t in model.loc_net.state_dict().items():
            t.copy_(loc_net[name].float())


def f32(tensors):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}


def write_case(out, name, case, tensors):
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    for file, values in tensors.items():
        save_file(values, os.path.join(folder, file))
    with open(os.path.join(folder, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
        f.write("\n")


def model_case(a, gen, dynamic_mlp, name, backbone_cfg, backbone, fusion, image_hw, backbone_by=None):
    model = Fused(backbone, dynamic_mlp, fusion["type"][-1], fusion["mlp_d"], fusion["mlp_h"], fusion["mlp_n"])
    randomise(model, gen)
    share_loc_net(model, a.loc_net)
    weights = weights_of(model)
    image = torch.randn(2, 3, *image_hw, generator=gen)
    loc = torch.randn(2, CIN, generator=gen).clamp(-1, 1)
    m64 = model.double().eval()
    with torch.no_grad():
        expected = m64(image.double(), loc.double())
    write_case(
        a.out,
        name,
        {
            "kind": "model",
            "computed_by": f"{backbone_by or 'timm ' + timm.__version__} and the official Dynamic MLP code, "
            "float64, by xtask/python/make_transformer_parity.py",
            "backbone": backbone_cfg,
            "fusion": fusion,
            "metadata": "geo_temporal",
            "num_classes": CLASSES,
            "weights": SHARED_WEIGHTS,
            "unused_weight_keys": "error",
            "inputs": "inputs.safetensors",
            "expected": "expected.safetensors",
            "tolerance": {"rel_l2": 3e-4},
        },
        {
            "weights.safetensors": weights,
            "inputs.safetensors": {"image": image, "loc": loc},
            "expected.safetensors": f32(expected),
        },
    )
    return model


def swin(cfg):
    return timm.models.swin_transformer.SwinTransformer(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        window_size=cfg["window_size"],
        embed_dim=cfg["embed_dim"],
        depths=tuple(cfg["depths"]),
        num_heads=tuple(cfg["num_heads"]),
        mlp_ratio=cfg.get("mlp_ratio", 4.0),
        drop_path_rate=0.0,
        num_classes=0,
    )


def pvt_v1_case(a, gen, dynamic_mlp):
    """The PVT authors' own v1 (classification/pvt.py), Dynamic MLP-C on top."""
    sys.path.insert(0, os.path.join(a.pvt, "classification"))
    import warnings

    warnings.filterwarnings("ignore")
    import pvt as pvt_v1  # noqa: E402
    from functools import partial

    pvt_cfg = {
        "type": "pvt", "img_size": 64, "patch_size": 4, "embed_dims": [8, 16, 24, 32], "depths": [1, 2, 1, 1],
        "num_heads": [1, 2, 3, 4], "sr_ratios": [4, 2, 2, 1], "mlp_ratios": [4, 4, 2, 2],
    }
    backbone = pvt_v1.PyramidVisionTransformer(
        img_size=64, patch_size=4, embed_dims=pvt_cfg["embed_dims"], num_heads=pvt_cfg["num_heads"],
        mlp_ratios=pvt_cfg["mlp_ratios"], qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        depths=pvt_cfg["depths"], sr_ratios=pvt_cfg["sr_ratios"], num_classes=0,
    )
    backbone.num_features = pvt_cfg["embed_dims"][-1]
    backbone.forward_head = lambda x, pre_logits=True: x
    model_case(a, gen, dynamic_mlp, "model-pvt-v1-dmlp-c", pvt_cfg, backbone,
               {"type": "dynamic_mlp_c", "mlp_d": 16, "mlp_h": 8, "mlp_n": 2}, (80, 72),
               backbone_by="the PVT authors' classification/pvt.py (whai362/PVT)")


def botnet(cfg, resize_tables=False):
    """BoTNet as dmlp reconstructs it: torchvision's ResNet (its `Bottleneck`, names and stem)
    whose last stage has timm's `BottleneckAttn` as `self_attn` in place of `conv2`. With
    `resize_tables`, each relative table is resized linearly (`F.interpolate`) to the map it
    meets and the 2x2 pool rounds up: dmlp's own choices where timm asserts the map size."""
    import math

    import torch.nn.functional as F
    from timm.layers.bottleneck_attn import BottleneckAttn, rel_logits_1d
    from torchvision.models.resnet import Bottleneck, conv1x1

    width, layers, heads, img = cfg["width"], cfg["layers"], cfg["heads"], cfg["img_size"]

    def resized(table, rows):
        if table.shape[0] == rows:
            return table
        return F.interpolate(table.t()[None], size=rows, mode="linear", align_corners=False)[0].t()

    def pos_embed_forward(self, q):
        b, hw, _ = q.shape
        h, w = self.runtime_hw
        q = q.reshape(b, h, w, -1)
        rel_w = rel_logits_1d(q, resized(self.width_rel, 2 * w - 1), permute_mask=(0, 1, 3, 2, 4))
        q = q.transpose(1, 2)
        rel_h = rel_logits_1d(q, resized(self.height_rel, 2 * h - 1), permute_mask=(0, 3, 1, 4, 2))
        return (rel_h + rel_w).reshape(b, hw, hw)

    class AttnBlock(nn.Module):
        def __init__(self, inplanes, planes, stride, side):
            super().__init__()
            self.conv1 = conv1x1(inplanes, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.self_attn = BottleneckAttn(planes, planes, feat_size=(side, side), stride=stride, num_heads=heads)
            if resize_tables and stride == 2:
                self.self_attn.pool = nn.AvgPool2d(2, 2, ceil_mode=True)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * 4)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or inplanes != planes * 4:
                self.downsample = nn.Sequential(conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            attn = self.self_attn
            if resize_tables:
                _, _, h, w = out.shape
                attn.pos_embed.height, attn.pos_embed.width = h, w
                attn.pos_embed.runtime_hw = (h, w)
                attn.pos_embed.forward = types.MethodType(pos_embed_forward, attn.pos_embed)
            out = self.relu(self.bn2(attn(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class BotNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes, side = width, math.ceil(math.ceil(img / 2) / 2)
            for i, n in enumerate(layers):
                planes = width << i
                last = i == len(layers) - 1
                blocks = []
                for j in range(n):
                    stride = 2 if i > 0 and j == 0 else 1
                    if last:
                        blocks.append(AttnBlock(inplanes, planes, stride, side if j == 0 else math.ceil(side / 2)))
                    else:
                        ds = None
                        if stride != 1 or inplanes != planes * 4:
                            ds = nn.Sequential(conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4))
                        blocks.append(Bottleneck(inplanes, planes, stride, ds))
                    inplanes = planes * 4
                if 0 < i < len(layers) - 1:
                    side = math.ceil(side / 2)
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.num_features = inplanes

        def forward_features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(len(layers)):
                x = getattr(self, f"layer{i + 1}")(x)
            return x

        def forward_head(self, x, pre_logits=True):
            return x.mean((2, 3))

    return BotNet()


def randomise_batch_norm(model, gen):
    """Random running statistics, so that evaluation-mode BatchNorm is checked too."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_((0.1 * torch.randn(m.running_mean.shape, generator=gen)).half().float())
                m.running_var.copy_((0.5 + torch.rand(m.running_var.shape, generator=gen)).half().float())


def botnet_cases(a, gen, dynamic_mlp):
    """BoTNet (dmlp's reconstruction) from torchvision's blocks and timm's BottleneckAttn: at the
    size its tables are laid out for (timm's own computation), and at a larger size where dmlp
    resizes them (the same model with the tables interpolated)."""
    cfg = {"type": "botnet", "layers": [1, 1, 1, 2], "width": 8, "heads": 2, "img_size": 64}
    by = f"torchvision's Bottleneck and timm {timm.__version__}'s BottleneckAttn"
    for name, resize, hw, fusion in (
        ("model-botnet-dmlp-c", False, (64, 64), "c"),
        ("model-botnet-resized-tables-dmlp-b", True, (96, 80), "b"),
    ):
        backbone = botnet(cfg, resize_tables=resize)
        randomise_batch_norm(backbone, gen)
        model_case(a, gen, dynamic_mlp, name, cfg, backbone,
                   {"type": f"dynamic_mlp_{fusion}", "mlp_d": 16, "mlp_h": 8, "mlp_n": 2}, hw, backbone_by=by)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True, help="a checkout of the official DynamicMLP repository")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2023)
    ap.add_argument("--pvt", help="a checkout of whai362/PVT (for the PVT v1 case)")
    a = ap.parse_args()
    dynamic_mlp, utils = reference_modules(a.reference)
    gen = torch.Generator().manual_seed(a.seed)
    loc_net = dynamic_mlp.FCNet(num_inputs=CIN, num_classes=16, num_filts=256)
    randomise(loc_net, gen)
    a.loc_net = {k: v.detach().clone().half() for k, v in loc_net.state_dict().items()}
    save_file({f"loc_net.{k}": v for k, v in a.loc_net.items()}, os.path.join(a.out, LOC_NET_FILE))

    swin_odd = {
        "type": "swin", "img_size": 44, "patch_size": 4, "window_size": 5, "embed_dim": 8,
        "depths": [2, 1, 2], "num_heads": [1, 2, 4], "mlp_ratio": 2.0,
    }
    model_case(a, gen, dynamic_mlp, "model-swin-odd-window5-dmlp-a", swin_odd, swin(swin_odd),
               {"type": "dynamic_mlp_a", "mlp_d": 16, "mlp_h": 8, "mlp_n": 2}, (44, 44))

    pvt_li = {
        "type": "pvt_v2", "embed_dims": [8, 16, 24, 32], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 3, 4],
        "sr_ratios": [8, 4, 2, 1], "mlp_ratios": [4, 4, 2, 2], "linear": True,
    }
    pvt = timm.models.pvt_v2.PyramidVisionTransformerV2(
        depths=tuple(pvt_li["depths"]), embed_dims=tuple(pvt_li["embed_dims"]), num_heads=tuple(pvt_li["num_heads"]),
        sr_ratios=tuple(pvt_li["sr_ratios"]), mlp_ratios=tuple(pvt_li["mlp_ratios"]), linear=True, num_classes=0,
    )
    model_case(a, gen, dynamic_mlp, "model-pvt-v2-li-dmlp-b", pvt_li, pvt,
               {"type": "dynamic_mlp_b", "mlp_d": 16, "mlp_h": 8, "mlp_n": 2}, (60, 44))

    # Two AdamW steps through a Swin, mixup and label smoothing as train.py applies them.
    swin_step = {
        "type": "swin", "img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 8,
        "depths": [2, 2], "num_heads": [2, 4],
    }
    fusion = {"type": "dynamic_mlp_c", "mlp_d": 16, "mlp_h": 8, "mlp_n": 2}
    model = Fused(swin(swin_step), dynamic_mlp, "c", 16, 8, 2)
    randomise(model, gen)
    share_loc_net(model, a.loc_net)
    weights = weights_of(model)
    b = 4
    image = torch.randn(b, 3, 32, 32, generator=gen)
    loc = torch.randn(b, CIN, generator=gen).clamp(-1, 1)
    target = torch.randint(0, CLASSES, (b,), generator=gen)
    perm = torch.randperm(b, generator=gen)
    lam, steps = 0.6, 3
    adamw = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}
    m64 = model.double().train()
    for m in m64.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    criterion = utils.LabelSmoothingLoss(classes=CLASSES, smoothing=0.1)
    optimizer = torch.optim.AdamW(m64.parameters(), **adamw)
    x = lam * image.double() + (1 - lam) * image.double()[perm]
    l = lam * loc.double() + (1 - lam) * loc.double()[perm]
    losses = []
    for _ in range(steps):
        out = m64(x, l)["logits"]
        loss = lam * criterion(out, target) + (1 - lam) * criterion(out, target[perm])
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    watched = (
        "patch_embed.proj.weight", "layers.0.blocks.1.attn.relative_position_bias_table",
        "layers.0.blocks.1.attn.qkv.weight", "layers.0.blocks.0.mlp.fc1.bias", "layers.1.downsample.reduction.weight",
        "layers.1.blocks.0.norm1.weight", "norm.bias", "loc_att.conv3.weight", "fc.weight",
    )
    state = {k.removeprefix("backbone."): v for k, v in m64.state_dict().items()}
    after = {f"after.{k}": state[k] for k in watched}
    write_case(
        a.out,
        "train-step-swin-adamw",
        {
            "kind": "train_step",
            "computed_by": f"timm {timm.__version__} and the official Dynamic MLP code (utils.LabelSmoothingLoss), "
            "float64, by xtask/python/make_transformer_parity.py",
            "backbone": swin_step,
            "fusion": fusion,
            "metadata": "geo_temporal",
            "num_classes": CLASSES,
            "weights": SHARED_WEIGHTS,
            "unused_weight_keys": "error",
            "inputs": "inputs.safetensors",
            "expected": "expected.safetensors",
            "mixup_lambda": lam,
            "label_smoothing": 0.1,
            "dropout": "disabled",
            "steps": steps,
            "optimizer": {"kind": "adamw", "lr": adamw["lr"], "betas": list(adamw["betas"]), "eps": adamw["eps"],
                          "weight_decay": adamw["weight_decay"]},
            "tolerance": {"losses_max_abs": 1e-5, "rel_l2": 1e-4},
        },
        {
            "weights.safetensors": weights,
            "inputs.safetensors": {"image": image, "loc": loc, "target": target, "perm": perm},
            "expected.safetensors": f32({"losses": torch.tensor(losses), **after}),
        },
    )

    # Last, so the cases above keep their random draws.
    if a.pvt:
        pvt_v1_case(a, gen, dynamic_mlp)
    botnet_cases(a, gen, dynamic_mlp)


if __name__ == "__main__":
    main()
