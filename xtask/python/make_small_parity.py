"""Small parity cases for the repository's own test data (xtask/fixtures/parity), computed by the
official Dynamic MLP code, so that `cargo test` checks parity on any clone.

    python xtask/python/make_small_parity.py --reference PATH/TO/DynamicMLP --out xtask/fixtures/parity

PATH/TO/DynamicMLP is a checkout of the paper's official repository (its `models/` and `utils.py`
are imported from there; nothing of it is copied here). The cases follow the format of
shared/fixtures/parity/README.md, made the same way: random weights rounded to float16 (stored as
F16), float32 inputs, references computed in float64 and stored as float32.

The shared cases use the paper's sizes (2048-wide features, ResNet-50); these are the same
functions at sizes that fit in the repository (about 1.3 MB together):
- `encoding`: copied from the shared fixtures by the caller (it is a JSON of numbers);
- `fusion-c-small`: FCNet (`loc_net`, 256 wide as in the reference) + FusionModule
  (`loc_att`, Dynamic MLP-C, mlp_d 16, mlp_h 8, mlp_n 2) on 64-wide features;
- `model-resnet-w8-dmlp-c`: the reference's `ResNet` class at width 8 (its own `BasicBlock`,
  `_make_layer` and `forward`; only the stem and stage widths, hard-coded to 64 in the reference,
  are set to 8, 16, 32, 64, and `loc_att` takes the 64-wide pooled features) with 1-1-1-1 basic
  blocks, on two images of an odd size;
- `train-step-head-small`: three SGD steps of `loc_net` + `loc_att` + `fc` on pooled features,
  with mixup and label smoothing exactly as `train.py` applies them (the reference's
  `LabelSmoothingLoss`, `torch.optim.SGD(momentum=0.9, weight_decay=1e-4)`), dropout disabled;
- `train-step-head-adamw-small`: the same three steps from the same weights and batch with
  `torch.optim.AdamW(lr=1e-3, weight_decay=0.05)` (the supplement's transformer optimiser).
All of them read one weights file.
"""

import argparse
import copy
import json
import os
import sys
import types

import torch
import torch.nn as nn
from safetensors.torch import save_file

WIDTH = 8
FEATURES = WIDTH * 8  # basic blocks: the pooled width is the last stage's planes
MLP_D, MLP_H, MLP_N = 16, 8, 2
CIN = 6
CLASSES = 5


def reference_modules(path):
    sys.path.insert(0, path)
    import models.dynamic_mlp as dynamic_mlp  # noqa: E402
    import models.resnet_dynamic_mlp as resnet_dynamic_mlp  # noqa: E402
    import utils  # noqa: E402

    return dynamic_mlp, resnet_dynamic_mlp, utils


def small_resnet(resnet_dynamic_mlp, dynamic_mlp):
    """The reference's ResNet at width 8: its __init__ with 64, 128, 256, 512 replaced."""
    R = resnet_dynamic_mlp
    args = types.SimpleNamespace(mlp_cin=CIN, mlp_d=MLP_D, mlp_h=MLP_H, mlp_n=MLP_N, mlp_type="c")
    model = R.ResNet.__new__(R.ResNet)
    nn.Module.__init__(model)
    model._norm_layer = nn.BatchNorm2d
    model.inplanes = WIDTH
    model.dilation = 1
    model.groups = 1
    model.base_width = 64
    model.conv1 = nn.Conv2d(3, WIDTH, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(WIDTH)
    model.relu = nn.ReLU(inplace=True)
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    block = R.BasicBlock
    model.layer1 = model._make_layer(block, WIDTH, 1)
    model.layer2 = model._make_layer(block, WIDTH * 2, 1, stride=2)
    model.layer3 = model._make_layer(block, WIDTH * 4, 1, stride=2)
    model.layer4 = model._make_layer(block, WIDTH * 8, 1, stride=2)
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.fc = nn.Linear(FEATURES, CLASSES)
    model.loc_net = dynamic_mlp.FCNet(num_inputs=CIN, num_classes=MLP_D, num_filts=256)
    model.loc_att = dynamic_mlp.get_dynamic_mlp(FEATURES, args)
    return model


def randomise(model, gen):
    """Random weights (BatchNorm with random affine and running statistics), rounded to float16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def state(model, prefixes=None):
    out = {}
    for k, v in model.state_dict().items():
        if prefixes and not k.startswith(prefixes):
            continue
        out[k] = v.detach().clone().half() if v.is_floating_point() else v.detach().clone()
    return out


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


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True, help="a checkout of the official DynamicMLP repository")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2022)
    a = ap.parse_args()
    dynamic_mlp, resnet_dynamic_mlp, utils = reference_modules(a.reference)
    gen = torch.Generator().manual_seed(a.seed)
    model = small_resnet(resnet_dynamic_mlp, dynamic_mlp)
    randomise(model, gen)
    weights = state(model)
    weights_dir = os.path.join(a.out, "model-resnet-w8-dmlp-c")
    fusion = {"type": "dynamic_mlp_c", "mlp_d": MLP_D, "mlp_h": MLP_H, "mlp_n": MLP_N}
    computed = "the official Dynamic MLP code (models/, utils.py), float64, by xtask/python/make_small_parity.py"

    # The whole model, eval mode, on two 40x36 images.
    image = torch.randn(2, 3, 40, 36, generator=gen)
    loc = torch.randn(2, CIN, generator=gen).clamp(-1, 1)
    m64 = model.double().eval()
    with torch.no_grad():
        x = m64.maxpool(m64.relu(m64.bn1(m64.conv1(image.double()))))
        x = m64.layer4(m64.layer3(m64.layer2(m64.layer1(x))))
        features = torch.flatten(m64.avgpool(x), 1)
        loc_features = m64.loc_net(loc.double())
        fused = m64.loc_att(features.clone(), loc_features)
        logits = m64(image.double(), loc.double())
        assert torch.allclose(logits, m64.fc(fused))
    write_case(
        a.out,
        "model-resnet-w8-dmlp-c",
        {
            "kind": "model",
            "computed_by": computed,
            "backbone": {"type": "resnet", "block": "basic", "layers": [1, 1, 1, 1], "width": WIDTH},
            "fusion": fusion,
            "metadata": "geo_temporal",
            "num_classes": CLASSES,
            "weights": "weights.safetensors",
            "inputs": "inputs.safetensors",
            "expected": "expected.safetensors",
            "tolerance": {"rel_l2": 1e-4},
        },
        {
            "weights.safetensors": weights,
            "inputs.safetensors": {"image": image, "loc": loc},
            "expected.safetensors": f32(
                {"logits": logits, "features": features, "loc_features": loc_features, "fused": fused}
            ),
        },
    )

    # loc_net + loc_att alone, eval mode, on 4 feature vectors.
    feats = torch.randn(4, FEATURES, generator=gen)
    loc4 = torch.randn(4, CIN, generator=gen).clamp(-1, 1)
    with torch.no_grad():
        loc_features = m64.loc_net(loc4.double())
        fused = m64.loc_att(feats.double().clone(), loc_features)
    rel = os.path.relpath(os.path.join(weights_dir, "weights.safetensors"), os.path.join(a.out, "fusion-c-small"))
    write_case(
        a.out,
        "fusion-c-small",
        {
            "kind": "fusion",
            "computed_by": computed,
            "metadata": "geo_temporal",
            "fusion": fusion,
            "image_features_dim": FEATURES,
            "weights": rel,
            "unused_weight_keys": "ignore",
            "inputs": "inputs.safetensors",
            "expected": "expected.safetensors",
            "tolerance": {"rel_l2": 1e-4},
        },
        {
            "inputs.safetensors": {"image_features": feats, "loc": loc4},
            "expected.safetensors": f32({"loc_features": loc_features, "fused": fused}),
        },
    )

    # Three training steps of the head, as train.py takes them (mixup with a given λ and perm).
    untrained = copy.deepcopy(model)
    head = nn.ModuleDict({"loc_net": model.loc_net, "loc_att": model.loc_att, "fc": model.fc}).double().train()
    no_dropout(head)
    b = 6
    feats = torch.randn(b, FEATURES, generator=gen)
    loc6 = torch.randn(b, CIN, generator=gen).clamp(-1, 1)
    target = torch.randint(0, CLASSES, (b,), generator=gen)
    perm = torch.randperm(b, generator=gen)
    lam, lr, steps = 0.7, 0.05, 3
    criterion = utils.LabelSmoothingLoss(classes=CLASSES, smoothing=0.1)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    x = lam * feats.double() + (1 - lam) * feats.double()[perm]
    l = lam * loc6.double() + (1 - lam) * loc6.double()[perm]

    def train_head(head, optimizer):
        """`steps` steps as train.py takes them; the loss of each before its update."""
        losses = []
        for _ in range(steps):
            out = head["fc"](head["loc_att"](x.clone(), head["loc_net"](l)))
            loss = lam * criterion(out, target) + (1 - lam) * criterion(out, target[perm])
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return losses

    losses = train_head(head, optimizer)
    watched = ("loc_att.", "fc.", "loc_net.class_emb.", "loc_net.feats.0.")
    after = {f"after.{k}": v for k, v in head.state_dict().items() if k.startswith(watched)}
    rel = os.path.relpath(os.path.join(weights_dir, "weights.safetensors"), os.path.join(a.out, "train-step-head-small"))
    sgd_case = {
        "kind": "train_step",
        "computed_by": computed,
        "backbone": None,
        "fusion": fusion,
        "metadata": "geo_temporal",
        "num_classes": CLASSES,
        "weights": rel,
        "unused_weight_keys": "ignore",
        "inputs": "inputs.safetensors",
        "expected": "expected.safetensors",
        "mixup_lambda": lam,
        "label_smoothing": 0.1,
        "dropout": "disabled",
        "steps": steps,
        "optimizer": {"kind": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False},
        "tolerance": {"losses_max_abs": 1e-5, "rel_l2": 1e-4},
    }
    write_case(
        a.out,
        "train-step-head-small",
        sgd_case,
        {
            "inputs.safetensors": {"image_features": feats, "loc": loc6, "target": target, "perm": perm},
            "expected.safetensors": f32({"losses": torch.tensor(losses), **after}),
        },
    )

    # The same steps with PyTorch's AdamW (the supplement's transformer recipe: decoupled weight
    # decay 0.05), from the same weights and batch.
    head = nn.ModuleDict({"loc_net": untrained.loc_net, "loc_att": untrained.loc_att, "fc": untrained.fc}).double().train()
    no_dropout(head)
    adamw = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}
    losses = train_head(head, torch.optim.AdamW(head.parameters(), **adamw))
    after = {f"after.{k}": v for k, v in head.state_dict().items() if k.startswith(watched)}
    name = "train-step-head-adamw-small"
    here = os.path.join(a.out, name)
    adamw_case = {
        **sgd_case,
        "weights": os.path.relpath(os.path.join(weights_dir, "weights.safetensors"), here),
        "inputs": os.path.relpath(os.path.join(a.out, "train-step-head-small", "inputs.safetensors"), here),
        "optimizer": {"kind": "adamw", "lr": adamw["lr"], "betas": list(adamw["betas"]), "eps": adamw["eps"],
                      "weight_decay": adamw["weight_decay"]},
    }
    write_case(
        a.out,
        name,
        adamw_case,
        {"expected.safetensors": f32({"losses": torch.tensor(losses), **after})},
    )


if __name__ == "__main__":
    main()
