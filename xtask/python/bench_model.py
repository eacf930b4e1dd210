"""PyTorch peer of `cargo xtask bench model`: the same work, timed the same way.

Builds the reference's Dynamic MLP-C head (FCNet + FusionModule, models/dynamic_mlp.py) and a
torchvision-layout ResNet-50 in plain PyTorch (no torchvision needed), then times forward +
backward of each exactly as the Rust side does, and prints one JSON object on the last line.
The transformers (`--only swin|pvt`, or all) are timm's own `swin_tiny_patch4_window7_224` and
`pvt_v2_b2` (needs `timm`), stochastic depth off as in dmlp's presets.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn


class FCResLayer(nn.Module):
    def __init__(self, n=256):
        super().__init__()
        self.w1 = nn.Linear(n, n)
        self.w2 = nn.Linear(n, n)
        self.dropout = nn.Dropout()

    def forward(self, x):
        y = torch.relu(self.w1(x))
        y = self.dropout(y)
        y = torch.relu(self.w2(y))
        return x + y


class FCNet(nn.Module):
    def __init__(self, cin, d, n=256):
        super().__init__()
        self.feats = nn.Sequential(nn.Linear(cin, n), nn.ReLU(), *[FCResLayer(n) for _ in range(4)])
        self.class_emb = nn.Linear(n, d, bias=False)

    def forward(self, x):
        return self.class_emb(self.feats(x))


class Basic1d(nn.Module):
    def __init__(self, i, o, bias=True):
        super().__init__()
        self.conv = nn.Sequential(nn.Linear(i, o, bias=bias))
        if not bias:
            self.conv.add_module("ln", nn.LayerNorm(o))
        self.conv.add_module("relu", nn.ReLU())

    def forward(self, x):
        return self.conv(x)


class DynamicMlpC(nn.Module):
    def __init__(self, i, o, l):
        super().__init__()
        self.i, self.o = i, o
        self.conv11 = Basic1d(i + l, i)
        self.conv12 = nn.Linear(i, i)
        self.conv21 = Basic1d(i + l, i)
        self.conv22 = nn.Linear(i, i * o)
        self.br = nn.Sequential(nn.LayerNorm(o), nn.ReLU())
        self.conv3 = Basic1d(o, o, False)

    def forward(self, x, g):
        z = torch.cat([x, g], 1)
        u = self.conv12(self.conv11(z))
        w = self.conv22(self.conv21(z)).view(-1, self.i, self.o)
        y = self.br(torch.bmm(u.unsqueeze(1), w).squeeze(1))
        return self.conv3(y)


class FusionModule(nn.Module):
    def __init__(self, inplanes=2048, d=256, h=64, n=2):
        super().__init__()
        self.conv1 = nn.Linear(inplanes, d)
        widths = [(d, d)] if n == 1 else [(d, h)] + [(h, h)] * (n - 2) + [(h, d)]
        self.conv2 = nn.ModuleList([DynamicMlpC(i, o, d) for i, o in widths])
        self.conv3 = nn.Linear(d, inplanes)
        self.norm3 = nn.LayerNorm(inplanes)

    def forward(self, x, g):
        identity = x
        x = self.conv1(x)
        for block in self.conv2:
            x = block(x, g)
        return self.norm3(self.conv3(x)) + identity


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetFeatures(nn.Module):
    """torchvision's ResNet without fc: the same layout as dmlp's ResNet (block, layers, width)."""

    def __init__(self, block=Bottleneck, layers=(3, 4, 6, 3), width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], width
        for stage, n in enumerate(layers):
            planes = width << stage
            for b in range(n):
                blocks.append(block(cin, planes, (1 if stage == 0 else 2) if b == 0 else 1))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*blocks)
        self.num_features = cin

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layers(x).mean((2, 3))


def ResNet50Features():
    return ResNetFeatures(Bottleneck, (3, 4, 6, 3), 64)


def conv_bn(cin, cout, k, s, p):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout))


class SKLayer(nn.Module):
    """The reference's selective-kernel fusion (models/sk2res2net.py): z = s*fx + (1 - s)*out."""

    def __init__(self, channels):
        super().__init__()
        hidden = max(channels // 4, 32)
        self.alpha = nn.Parameter(torch.zeros(1, 1, 1, 1))
        self.sk_proj = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                     nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, out, fx):
        a = torch.sigmoid(self.alpha)
        gv = a * out.mean((2, 3), keepdim=True) + (1 - a) * fx.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.sk_proj(gv))
        return (fx - out) * s + out


class Bottle2neck(nn.Module):
    """SK-Res2Net's block as dmlp builds it (crates/backbones/src/sk2res2net.rs, spec section 5.2)."""

    def __init__(self, cin, planes, stride, first):
        super().__init__()
        self.split = planes * 26 // 64
        width, out = self.split * 4, planes * 4
        self.first = first
        self.conv1 = conv_bn(cin, width, 1, 1, 0)
        self.convs = nn.ModuleList([conv_bn(self.split, self.split, 3, 1, 1) for _ in range(3)])
        self.sk = SKLayer(width)
        self.pool = nn.AvgPool2d(3, stride, 1) if first and stride != 1 else None
        self.conv3 = conv_bn(width, out, 1, 1, 0)
        self.downsample = None
        if stride != 1 or cin != out:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, conv_bn(cin, out, 1, 1, 0))

    def forward(self, x):
        out = torch.relu(self.conv1(x))
        splits = torch.split(out, self.split, 1)
        pieces = []
        for i, conv in enumerate(self.convs):
            y = splits[i] if i == 0 or self.first else pieces[-1] + splits[i]
            pieces.append(torch.relu(conv(y)))
        z = self.sk(out, torch.cat(pieces + [splits[3]], 1))
        if self.pool is not None:
            z = self.pool(z)
        y = self.conv3(z)
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class SK2Res2NetFeatures(nn.Module):
    """SK-Res2Net without fc: deep stem, max pool, Bottle2neck stages, global average pooling."""

    def __init__(self, layers=(3, 4, 23, 3), width=64):
        super().__init__()
        half = width // 2
        self.stem = nn.Sequential(conv_bn(3, half, 3, 2, 1), nn.ReLU(inplace=True), conv_bn(half, half, 3, 1, 1),
                                  nn.ReLU(inplace=True), conv_bn(half, width, 3, 1, 1), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], width
        for stage, n in enumerate(layers):
            planes = width << stage
            for b in range(n):
                blocks.append(Bottle2neck(cin, planes, (1 if stage == 0 else 2) if b == 0 else 1, b == 0))
                cin = planes * 4
        self.layers = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layers(self.maxpool(self.stem(x))).mean((2, 3))


def time_steps(step, iters):
    step()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--head-iters", type=int, default=5)
    parser.add_argument("--resnet-iters", type=int, default=3)
    parser.add_argument("--sk-iters", type=int, default=2)
    parser.add_argument("--transformer-iters", type=int, default=2)
    parser.add_argument("--head-batch", type=int, default=512)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--only", choices=["head", "resnet", "sk", "swin", "pvt"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    loc_net, loc_att = FCNet(6, 256), FusionModule()
    loc_net.train()
    loc_att.train()
    features = torch.randn(args.head_batch, 2048)
    loc = torch.rand(args.head_batch, 6) * 2 - 1

    def head_step():
        loc_net.zero_grad(set_to_none=True)
        loc_att.zero_grad(set_to_none=True)
        fused = loc_att(features, loc_net(loc))
        fused.sum().backward()

    resnet = ResNet50Features().train()
    images = torch.randn(args.resnet_batch, 3, args.image_size, args.image_size)

    def resnet_step():
        resnet.zero_grad(set_to_none=True)
        resnet(images).sum().backward()

    sk = SK2Res2NetFeatures().train()

    def sk_step():
        sk.zero_grad(set_to_none=True)
        sk(images).sum().backward()

    def transformer_step(name):
        import timm

        model = timm.create_model(name, num_classes=0, drop_path_rate=0.0).train()

        def step():
            model.zero_grad(set_to_none=True)
            model(images).sum().backward()

        return time_steps(step, args.transformer_iters)

    result = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "head_step_s": time_steps(head_step, args.head_iters) if args.only in (None, "head") else None,
        "resnet50_step_s": time_steps(resnet_step, args.resnet_iters) if args.only in (None, "resnet") else None,
        "sk2res2net101_step_s": time_steps(sk_step, args.sk_iters) if args.only in (None, "sk") else None,
        "swin_tiny_step_s": transformer_step("swin_tiny_patch4_window7_224") if args.only in (None, "swin") else None,
        "pvt_v2_b2_step_s": transformer_step("pvt_v2_b2") if args.only in (None, "pvt") else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
