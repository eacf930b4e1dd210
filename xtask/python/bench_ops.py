"""PyTorch peer of `cargo xtask bench ops`: the same work, timed the same way.

conv2d forward + backward over ResNet-50's convolutions at batch 8 (the same shape list as
xtask/src/bench_ops.rs), BatchNorm's training pass on (8, 256, 56, 56), a ResNet-50 training step
(forward, cross-entropy, backward) at batch 8 × 224², and a tiny ResNet (basic blocks [1, 1, 1, 1],
width 16) at batch 32 × 32². Prints one JSON object on the last line.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_model import BasicBlock, Bottleneck, ResNetFeatures


def resnet50_convs():
    convs, cin, size = [(3, 64, 7, 2, 3, 224, 1)], 64, 56
    for stage, blocks in enumerate([3, 4, 6, 3]):
        planes = 64 << stage
        stride = 1 if stage == 0 else 2
        out = size // stride
        convs += [(cin, planes, 1, 1, 0, size, 1), (planes, planes, 3, stride, 1, size, 1),
                  (planes, planes * 4, 1, 1, 0, out, 1), (cin, planes * 4, 1, stride, 0, size, 1),
                  (planes * 4, planes, 1, 1, 0, out, blocks - 1), (planes, planes, 3, 1, 1, out, blocks - 1),
                  (planes, planes * 4, 1, 1, 0, out, blocks - 1)]
        cin, size = planes * 4, out
    return convs


def timed(f, iters):
    f()
    times = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    seconds = flops = 0.0
    for cin, cout, k, s, p, size, count in resnet50_convs():
        if count == 0:
            continue
        x = torch.randn(8, cin, size, size, requires_grad=True)
        w = (torch.randn(cout, cin, k, k) * 0.1).requires_grad_()
        out = (size + 2 * p - k) // s + 1

        def step():
            F.conv2d(x, w, stride=s, padding=p).sum().backward()
            x.grad = None
            w.grad = None

        t = timed(step, 1)
        seconds += t * count
        flops += 3 * 2 * 8 * cout * out * out * cin * k * k * count

    bn = nn.BatchNorm2d(256).train()
    xb = torch.randn(8, 256, 56, 56, requires_grad=True)

    def bn_step():
        bn(xb).sum().backward()
        xb.grad = None

    def network(block, layers, width, batch, size, iters):
        net = ResNetFeatures(block, layers, width).train()
        fc = nn.Linear(net.num_features, 10)
        images = torch.randn(batch, 3, size, size)
        targets = torch.arange(batch) % 10

        def step():
            net.zero_grad(set_to_none=True)
            fc.zero_grad(set_to_none=True)
            F.cross_entropy(fc(net(images)), targets).backward()

        return timed(step, iters)

    result = {
        "torch_version": torch.__version__,
        "conv_fwd_bwd_gflops": flops / seconds / 1e9,
        "batch_norm_step_s": timed(bn_step, 3),
        "resnet50_step_s": network(Bottleneck, (3, 4, 6, 3), 64, 8, 224, args.iters),
        "tiny_resnet_step_s": network(BasicBlock, (1, 1, 1, 1), 16, 32, 32, max(args.iters, 5)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
