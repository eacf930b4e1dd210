"""PriorsNet `priorsnet_step` parity cases computed by its authors' code (macaodha/geo_prior), in
the format of shared/fixtures/parity/README.md, for checking dmlp's PriorsNet step on cases it has
not seen (other class counts, batch sizes, step counts, learning rates, input widths):

    python xtask/python/make_priorsnet_cases.py --geo-prior PATH/TO/geo_prior --out DIR \
        [--classes 7 --batch 5 --steps 3 --lr 1e-3 --inputs 4 --seed 1]
    cargo xtask parity DIR

PATH/TO/geo_prior is a checkout of https://github.com/macaodha/geo_prior; its `geo_prior/models.py`
(`FCNet`) and `geo_prior/losses.py` (`embedding_loss`, `full_loss`) are imported from there. The
background locations are the case's input: `losses.rand_samples` is replaced by a function that
returns them, since geo_prior's own draws cannot be repeated elsewhere. Dropout is disabled, the
optimiser is PyTorch's Adam, and everything runs in float64 from float16-rounded weights.
"""

import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--geo-prior", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--inputs", type=int, default=6, choices=[4, 6])
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.geo_prior, "geo_prior"))
    import losses  # noqa: E402
    import models  # noqa: E402

    gen = torch.Generator().manual_seed(a.seed)
    net = models.FCNet(num_inputs=a.inputs, num_classes=a.classes, num_filts=256)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * (0.5 / max(1, p.shape[-1]) ** 0.5)).half().float())
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    weights = {k: v.detach().clone().half() for k, v in net.state_dict().items() if not k.startswith("user_emb")}
    net = net.double()

    def encode(n):
        lon, lat = torch.rand(n, generator=gen) * 2 - 1, torch.rand(n, generator=gen) * 2 - 1
        cols = [torch.sin(math.pi * lon), torch.sin(math.pi * lat), torch.cos(math.pi * lon), torch.cos(math.pi * lat)]
        if a.inputs == 6:
            t = torch.rand(n, generator=gen) * 2 - 1
            cols += [torch.sin(math.pi * t), torch.cos(math.pi * t)]
        return torch.stack(cols, 1).float()

    loc, background = encode(a.batch), encode(a.batch)
    target = torch.randint(0, a.classes, (a.batch,), generator=gen)
    losses.rand_samples = lambda batch_size, params, rand_type="uniform": background.double()
    params = {"num_classes": a.classes, "train_loss": "full_loss", "device": "cpu"}
    with torch.no_grad():
        probabilities = net(loc.double())
    optimizer = torch.optim.Adam(net.parameters(), lr=a.lr)
    history = []
    inds = torch.arange(a.batch)
    for _ in range(a.steps):
        loss = losses.embedding_loss(net, params, loc.double(), target, None, inds)
        history.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = {f"after.{k}": v.float().contiguous() for k, v in net.state_dict().items() if not k.startswith("user_emb")}
    os.makedirs(a.out, exist_ok=True)
    save_file(weights, os.path.join(a.out, "weights.safetensors"))
    save_file({"loc": loc, "background": background, "target": target}, os.path.join(a.out, "inputs.safetensors"))
    save_file(
        {"probabilities": probabilities.float(), "losses": torch.tensor(history, dtype=torch.float32), **after},
        os.path.join(a.out, "expected.safetensors"),
    )
    case = {
        "kind": "priorsnet_step",
        "num_inputs": a.inputs,
        "num_classes": a.classes,
        "num_filts": 256,
        "weights": "weights.safetensors",
        "inputs": "inputs.safetensors",
        "expected": "expected.safetensors",
        "loss": "full_loss",
        "pos_weight": a.classes,
        "steps": a.steps,
        "dropout": "disabled",
        "optimizer": {"kind": "adam", "lr": a.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
        "tolerance": {"rel_l2": 1e-4, "losses_max_abs": 1e-4},
    }
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
