"""PyTorch peer of `cargo xtask gpu-check`'s training steps, on the same device in the same run.

The same work as dmlp's step: an image-only classifier (ResNet-50 or SK-Res2Net-101 features,
as `bench_model.py` builds them, then a 2048 → 1000 linear layer), mixup with one λ and
permutation, label-smoothed cross-entropy (0.1), backward, SGD (momentum 0.9, weight decay 1e-4),
at batch B × S². f32 with TF32 off, and AMP bf16 (`torch.autocast`, f32 master weights). The
device is synchronised inside the timer. Then the forward with the loss and the backward timed
apart (median of three), as dmlp's check does. With `--profile`, one more step under
`torch.profiler`: the kernels by device time (on the CPU, the ops by CPU time), as dmlp's CUPTI
profile lists them. Prints one JSON object on its last line.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_model import ResNet50Features, SK2Res2NetFeatures


def smoothed_loss(logits, targets, smoothing=0.1):
    log_probs = F.log_softmax(logits.float(), dim=1)
    off = smoothing / (logits.shape[1] - 1)
    q = torch.full_like(log_probs, off)
    q.scatter_(1, targets[:, None], 1.0 - smoothing)
    return -(q * log_probs).sum(1).mean()


def kernel_profile(step, sync, device, top):
    """One step under torch.profiler: device time (µs → ms) and launches per kernel name."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        sync()
    kernels = []
    for event in prof.key_averages():
        if cuda and event.device_type != DeviceType.CUDA:
            continue
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            kernels.append({"name": event.key, "launches": event.count, "device_ms": us / 1e3})
    kernels.sort(key=lambda k: -k["device_ms"])
    return {
        "busy_ms": sum(k["device_ms"] for k in kernels),
        "launches": sum(k["launches"] for k in kernels),
        "kernels": kernels[:top],
    }


def time_config(name, precision, args, device):
    torch.manual_seed(0)
    features = ResNet50Features() if name == "resnet50" else SK2Res2NetFeatures()
    model = nn.Sequential(features, nn.Linear(2048, 1000)).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = (torch.arange(args.batch, device=device) * 7) % 1000
    perm = torch.randperm(args.batch, device=device)
    lam = 0.7
    autocast = precision == "bf16"

    def step():
        mixed = lam * images + (1 - lam) * images[perm]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(mixed)
        loss = lam * smoothed_loss(logits, targets) + (1 - lam) * smoothed_loss(logits, targets[perm])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    done = 0
    loss = None
    while done < args.steps:
        loss = step()
        done += 1
        if time.perf_counter() - start > args.budget_s:
            break
    sync()
    elapsed = time.perf_counter() - start
    # Where a step's time goes, as dmlp's gpu-check measures it: the forward with the loss and
    # the backward, each timed apart with the device synchronised (median of three).
    forward, backward = [], []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
        phase_loss = smoothed_loss(logits, targets)
        sync()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        phase_loss.backward()
        sync()
        forward.append(t1 - t0)
        backward.append(time.perf_counter() - t1)
    forward_s, backward_s = sorted(forward)[1], sorted(backward)[1]
    row = {
        "model": name,
        "precision": precision,
        "batch": args.batch,
        "size": args.size,
        "steps": done,
        "step_s": elapsed / done,
        "images_per_s": args.batch * done / elapsed,
        "forward_s": forward_s,
        "backward_s": backward_s,
        "rest_s": elapsed / done - forward_s - backward_s,
        "last_loss": float(loss.detach()) if loss is not None else None,
    }
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.profile:
        row["profile"] = kernel_profile(step, sync, device, args.profile_top)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args()
    device = torch.device(args.device)
    # f32 means f32: no TF32 in matrix products or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in ("resnet50", "sk2res2net101"):
        for precision in ("f32", "bf16"):
            try:
                rows.append(time_config(name, precision, args, device))
            except Exception as e:  # an out-of-memory is a result too
                rows.append({"model": name, "precision": precision, "error": repr(e)})
    info = {"torch_version": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    print(json.dumps({**info, "steps": rows}))


if __name__ == "__main__":
    main()
