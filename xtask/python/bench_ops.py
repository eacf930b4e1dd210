"""PyTorch peer of `cargo xtask bench ops`: the same work, timed the same way.

conv2d forward (alone, and with backward) over the convolution shapes xtask/src/bench_ops.rs
passes (`--shapes`, JSON `[[in, out, kernel, stride, padding, size, count], ...]`) at batch 8, one
time per shape; BatchNorm's training pass on (8, 256, 56, 56), a ResNet-50 training step (forward,
cross-entropy, backward) at batch 8 × 224², and a tiny ResNet (basic blocks [1, 1, 1, 1], width 16)
at batch 32 × 32². Prints one JSON object on the last line.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_model import BasicBlock, Bottleneck, ResNetFeatures


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
    parser.add_argument("--shape-iters", type=int, default=3)
    parser.add_argument("--shapes", required=True, help="JSON list of [in, out, k, stride, pad, size, count]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    conv_shape_s, conv_shape_forward_s = [], []
    for cin, cout, k, s, p, size, _count in json.loads(args.shapes):
        x = torch.randn(8, cin, size, size, requires_grad=True)
        w = (torch.randn(cout, cin, k, k) * 0.1).requires_grad_()
        out = (size + 2 * p - k) // s + 1

        def forward():
            with torch.no_grad():
                F.conv2d(x, w, stride=s, padding=p)

        def step():
            F.conv2d(x, w, stride=s, padding=p).sum().backward()
            x.grad = None
            w.grad = None

        # As on the Rust side: tiny shapes take a median of at least 21 runs.
        tiny = 3 * 2 * 8 * cout * out * out * cin * k * k < 1e8
        iters = max(args.shape_iters, 21) if tiny else args.shape_iters
        conv_shape_forward_s.append(timed(forward, iters))
        conv_shape_s.append(timed(step, iters))

    bn = nn.BatchNorm2d(256).train()
    xb = torch.randn(8, 256, 56, 56, requires_grad=True)

    def bn_step():
        bn(xb).sum().backward()
        xb.grad = None

    xg = torch.randn(8, 3136, 512, requires_grad=True)

    def gelu_step():
        F.gelu(xg).sum().backward()
        xg.grad = None

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
        "conv_shape_s": conv_shape_s,
        "conv_shape_forward_s": conv_shape_forward_s,
        "batch_norm_step_s": timed(bn_step, 3),
        "gelu_step_s": timed(gelu_step, 3),
        "resnet50_step_s": network(Bottleneck, (3, 4, 6, 3), 64, 8, 224, args.iters),
        "tiny_resnet_step_s": network(BasicBlock, (1, 1, 1, 1), 16, 32, 32, max(args.iters, 5)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
