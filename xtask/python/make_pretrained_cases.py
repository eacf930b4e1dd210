"""Parity cases of kind `pretrained` (shared/fixtures/parity/README.md) in the layouts a user meets,
beyond the two shared ones (timm's resnet18 file by path and through a Hub cache):

    python xtask/python/make_pretrained_cases.py --reference PATH/TO/DynamicMLP --out /tmp/pretrained-cases
    cargo xtask parity /tmp/pretrained-cases

- `tv-pth-resnet34`: torchvision's `resnet34`, saved as torchvision publishes its weights (a pickled
  plain `state_dict`, `torch.save`'s zip format), float32, `num_batches_tracked` included;
- `hub-branch-resnet50`: timm's `resnet50` in a Hugging Face cache laid out as huggingface_hub lays
  it out (`snapshots/<commit>/model.safetensors` a relative symlink to `blobs/<sha256>`), float16,
  asked for at a branch (`@v2`) whose commit differs from `main`'s, whose file holds other weights;
- `hub-commit-resnet18`: timm's `resnet18` asked for by a full commit hash that no ref names;
- `wrapped-sk2res2net50`: the reference's SK-Res2Net-50 (its own `models/sk2res2net.py`) saved as
  a training script wraps it (`{"state_dict": {"module.backbone.<key>": ...}, "epoch": 7}`) with a
  1000-class `fc` that must be skipped.

Weights are random (PyTorch's initialisation, BatchNorm given random affine parameters and running
statistics), rounded to float16 so they are exact in every precision; features are computed in
float64 in eval mode from float32 inputs and stored as float32. Nothing here touches the network.
"""

import argparse
import hashlib
import json
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    model.eval()  # the reference's mmdet-style train() returns None: do not chain
    return model


def features(model, pool_from, image):
    """Pooled features in float64 (the backbone without its classifier)."""
    m = model.double()
    with torch.no_grad():
        out = pool_from(m, image.double())
    model.float()
    return out.float()


def resnet_features(m, x):
    x = m.maxpool(m.act1(m.bn1(m.conv1(x)))) if hasattr(m, "act1") else m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def sk_features(m, x):
    x = m.maxpool(m.stem(x))
    for name in m.res_layers:
        x = getattr(m, name)(x)
    return torch.flatten(m.avgpool(x), 1)


def backbone_count(state_dict):
    return sum(1 for k in state_dict if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))


def write_case(out, name, case, image, feats):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    save_file({"image": image.contiguous()}, os.path.join(d, "inputs.safetensors"))
    save_file({"features": feats.contiguous()}, os.path.join(d, "expected.safetensors"))
    case = {"kind": "pretrained", **case, "inputs": "inputs.safetensors", "expected": "expected.safetensors",
            "tolerance": {"rel_l2": 3e-4}}
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
    return d


def hub_cache(case_dir, repo, revisions):
    """revisions: [(ref name or None, commit, state_dict)]; symlinks into blobs/ by SHA-256."""
    root = os.path.join(case_dir, "hub", "models--" + repo.replace("/", "--"))
    for ref, commit, state in revisions:
        tmp = os.path.join(case_dir, "tmp.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
        sha = hashlib.sha256(open(tmp, "rb").read()).hexdigest()
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
        os.replace(tmp, os.path.join(root, "blobs", sha))
        snap = os.path.join(root, "snapshots", commit)
        os.makedirs(snap, exist_ok=True)
        link = os.path.join(snap, "model.safetensors")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join("..", "..", "blobs", sha), link)
        if ref is not None:
            os.makedirs(os.path.join(root, "refs"), exist_ok=True)
            with open(os.path.join(root, "refs", ref), "w") as f:
                f.write(commit)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", help="a checkout of the official DynamicMLP repository")
    ap.add_argument("--out")
    ap.add_argument("--committed", help="write the committed case into this parity folder instead")
    args = ap.parse_args()
    if args.committed:
        committed_case(args.committed)
        return
    if not (args.reference and args.out):
        ap.error("--reference and --out are required (or --committed DIR)")
    import timm
    import torchvision

    torch.manual_seed(0)
    image = torch.randn(2, 3, 67, 53)

    # torchvision's pickled .pth, float32.
    tv = randomise(torchvision.models.resnet34(), 1)
    d = write_case(args.out, "tv-pth-resnet34", {"backbone": "resnet34", "weights": "resnet34-random.pth",
                   "loaded": backbone_count(tv.state_dict()), "skipped": ["fc.bias", "fc.weight"]},
                   image, features(tv, resnet_features, image))
    torch.save(tv.state_dict(), os.path.join(d, "resnet34-random.pth"))

    # A Hub cache with symlinks into blobs, float16, a branch that is not main.
    main_model = randomise(timm.create_model("resnet50", pretrained=False), 2)
    v2 = randomise(timm.create_model("resnet50", pretrained=False), 3)
    d = write_case(args.out, "hub-branch-resnet50", {"backbone": "resnet50", "weights": "hf:timm/resnet50.tv_in1k@v2",
                   "hf_cache": "hub", "loaded": backbone_count(v2.state_dict()), "skipped": ["fc.bias", "fc.weight"]},
                   image, features(v2, resnet_features, image))
    half = lambda m: {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    hub_cache(d, "timm/resnet50.tv_in1k", [("main", "a" * 40, half(main_model)), ("v2", "b" * 40, half(v2))])

    # A commit hash that no ref names.
    r18 = randomise(timm.create_model("resnet18", pretrained=False), 4)
    commit = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"
    d = write_case(args.out, "hub-commit-resnet18", {"backbone": "resnet18",
                   "weights": f"hf:timm/resnet18.tv_in1k@{commit}", "hf_cache": "hub",
                   "loaded": backbone_count(r18.state_dict()), "skipped": ["fc.bias", "fc.weight"]},
                   image, features(r18, resnet_features, image))
    hub_cache(d, "timm/resnet18.tv_in1k", [(None, commit, r18.state_dict())])

    # The reference's SK-Res2Net-50, wrapped and prefixed, with a 1000-class fc.
    sys.path.insert(0, args.reference)
    from models.sk2res2net import SK2Res2Net  # noqa: E402

    sk = randomise(SK2Res2Net(depth=50, num_stages=4, scales=4, base_width=26, ratio=4, avg_down_after=True,
                              deep_stem=True, avg_down=True, num_classes=1000), 5)
    d = write_case(args.out, "wrapped-sk2res2net50", {"backbone": "sk2res2net50", "weights": "sk-wrapped.pth",
                   "loaded": backbone_count(sk.state_dict()), "skipped": ["fc.bias", "fc.weight"]},
                   image, features(sk, sk_features, image))
    wrapped = {"state_dict": {"module.backbone." + k: v for k, v in sk.state_dict().items()}, "epoch": 7}
    torch.save(wrapped, os.path.join(d, "sk-wrapped.pth"))



def committed_case(out):
    """`xtask/fixtures/parity/pretrained-hub-resnet-w8`: the committed model case's backbone (the
    reference's ResNet at width 8, 1-1-1-1 basic blocks) and a 5-class fc, as a Hub cache with a
    symlink into blobs, asked for as hf:dmlp-fixtures/resnet-w8; its features are that case's own
    reference features (float64, by the official code), on its inputs.

        python xtask/python/make_pretrained_cases.py --committed xtask/fixtures/parity
    """
    from safetensors.torch import load_file

    model_case = os.path.join(out, "model-resnet-w8-dmlp-c")
    weights = load_file(os.path.join(model_case, "weights.safetensors"))
    backbone = {k: v for k, v in weights.items() if not k.startswith(("loc_net.", "loc_att."))}
    d = os.path.join(out, "pretrained-hub-resnet-w8")
    os.makedirs(d, exist_ok=True)
    expected = load_file(os.path.join(model_case, "expected.safetensors"))
    save_file({"features": expected["features"].contiguous()}, os.path.join(d, "expected.safetensors"))
    commit = "5eed0000000000000000000000000000000000aa"
    hub_cache(d, "dmlp-fixtures/resnet-w8", [("main", commit, backbone)])
    case = {
        "kind": "pretrained",
        "computed_by": "the official Dynamic MLP code via model-resnet-w8-dmlp-c, by xtask/python/make_pretrained_cases.py --committed",
        "backbone": {"type": "resnet", "block": "basic", "layers": [1, 1, 1, 1], "width": 8},
        "weights": "hf:dmlp-fixtures/resnet-w8",
        "hf_cache": "hub",
        "inputs": "../model-resnet-w8-dmlp-c/inputs.safetensors",
        "expected": "expected.safetensors",
        "loaded": backbone_count(backbone),
        "skipped": ["fc.bias", "fc.weight"],
        "tolerance": {"rel_l2": 1e-4},
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)


if __name__ == "__main__":
    main()
