"""Model registry: name -> constructor(input_shape, num_classes).

Every constructor takes the data set's per-example shape (C, H, W) or (D,) and the number of
classes. `build_model` fixes the initialisation by a seed alone, so W0 is the same on every
machine and never depends on (or disturbs) the process's global RNG.

The output layer of every model is named `fc`, so one ignore pattern ("fc.weight") means
"the classifier" for all of them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torchvision.models as tvm

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def _channels(input_shape: tuple[int, ...], model: str) -> int:
    if len(input_shape) != 3:
        raise ValueError(
            f"model {model!r} needs an image input shape (C, H, W), got input_shape={tuple(input_shape)}"
        )
    return int(input_shape[0])


def _init_conv_linear(module: nn.Module) -> None:
    # He (fan-in) init for ReLU nets; BatchNorm starts as the identity.
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_lottery_cifar(module: nn.Module) -> None:
    """The initialisation of the CIFAR networks of the lottery-ticket papers (open_lth's
    defaults for cifar_resnet and cifar_vgg: model_init kaiming_normal, batchnorm_init
    uniform): Conv/Linear weights He-normal (fan-in, ReLU gain); their biases keep PyTorch's
    default draw; BatchNorm scales drawn from U(0, 1), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


# ---- LeNet-300-100 ---------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (300, 100)):
        super().__init__()
        width = math.prod(input_shape)
        self.flatten = nn.Flatten()
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        _init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))


# ---- CIFAR ResNets (He et al. 2016, section 4.2) ---------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        # Projection shortcut only where the shape changes (the paper's option B).
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, input_shape: tuple[int, ...], num_classes: int, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        in_ch = _channels(input_shape, f"cifar_resnet_{depth}")
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        blocks = []
        ch = width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(ch, out_ch, stride))
                ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        _init_lottery_cifar(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---- VGG with BatchNorm for 32x32 inputs -----------------------------------------------------
# The lottery-ticket CIFAR VGGs (Frankle & Carbin 2019; open_lth's cifar_vgg): convolutions
# with biases, four 2x2 max-pools (32 -> 2), then a 2x2 average pool and one linear layer.

_VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class CifarVGG(nn.Module):
    def __init__(self, depth: int, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        ch = _channels(input_shape, f"cifar_vgg_{depth}")
        layers: list[nn.Module] = []
        for v in _VGG_CONFIGS[depth]:
            if v == "M":
                # ceil_mode: a 1x1 map stays 1x1, so inputs smaller than 32x32 still work;
                # on 32x32 it is the ordinary 2x2 max-pool.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1, bias=True), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                ch = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the 2x2 average pool on 32x32; other sizes work too
        self.fc = nn.Linear(512, num_classes)
        _init_lottery_cifar(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# ---- a small CNN with BatchNorm for 8x8 digits ------------------------------------------------
# Every structured and early-bird path in seconds on a CPU: a conv-BN-ReLU stem, one residual
# basic block (channels that meet at an add: pruning.groups coupled), a conv-BN-ReLU with a bias
# (a bias to mask with its filter), a global average pool and the classifier.


class SmallCNNBN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 8):
        super().__init__()
        if len(input_shape) == 1:  # flat features (digits: 64) read as one square image
            side = math.isqrt(int(input_shape[0]))
            if side * side != int(input_shape[0]):
                raise ValueError(f"model 'small_cnn_bn' reads flat inputs as a square image; {input_shape[0]} features are not one")
            self.image_shape: tuple[int, ...] = (1, side, side)
        else:
            _channels(input_shape, "small_cnn_bn")
            self.image_shape = tuple(int(d) for d in input_shape)
        self.conv = nn.Conv2d(self.image_shape[0], width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.block = BasicBlock(width, width, 1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        _init_lottery_cifar(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        x = self.block(self.relu(self.bn(self.conv(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---- torchvision ImageNet ResNets ------------------------------------------------------------


def _torchvision(factory: Callable[..., nn.Module], name: str) -> ModelFactory:
    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        in_ch = _channels(input_shape, name)
        model = factory(weights=None, num_classes=num_classes)
        if in_ch != 3:
            # Same stem geometry, other channel count (e.g. grayscale); torchvision's own init.
            model.conv1 = nn.Conv2d(in_ch, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model

    return build


MODELS: dict[str, ModelFactory] = {
    "mlp_300_100": lambda s, c: MLP(s, c),
    "small_cnn_bn": lambda s, c: SmallCNNBN(s, c),
    **{f"cifar_resnet_{d}": (lambda s, c, d=d: CifarResNet(d, s, c)) for d in (20, 32, 44, 56, 110)},
    **{f"cifar_vgg_{d}": (lambda s, c, d=d: CifarVGG(d, s, c)) for d in (11, 16, 19)},
    "resnet18": _torchvision(tvm.resnet18, "resnet18"),
    "resnet50": _torchvision(tvm.resnet50, "resnet50"),
}


def _factory(name: str) -> ModelFactory:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None


def _check_args(input_shape: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    return shape


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int,
                bn_scale_init: float | None = None) -> nn.Module:
    """Build `name` on CPU with an initialisation that depends on `seed` only.

    `bn_scale_init`: None keeps each model's own BatchNorm scales (U(0, 1) for the lottery CIFAR
    networks, open_lth's choice); a number fills every BatchNorm scale with it after the draw
    (0.5: network slimming and the early-bird reference code). Filling after the draw leaves
    every other parameter's value as the default init gives it, so W0 differs in the scales only.
    The global RNG is forked, so the caller's RNG state is neither read nor changed.
    """
    factory = _factory(name)
    shape = _check_args(input_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        with torch.device("cpu"):
            model = factory(shape, int(num_classes))
    if bn_scale_init is not None:
        fill_bn_scales(model, float(bn_scale_init))
    return model


def fill_bn_scales(model: nn.Module, value: float) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not norms:
        raise ValueError(f"bn_scale_init: {value} is given, but the model has no BatchNorm layer to fill")
    with torch.no_grad():
        for m in norms:
            m.weight.fill_(value)


def meta_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model's structure on the `meta` device: shapes and names without any storage."""
    factory = _factory(name)
    shape = _check_args(input_shape, num_classes)
    with torch.device("meta"):
        return factory(shape, int(num_classes))


def model_shapes(name: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape (state_dict order), without allocating the weights."""
    model = meta_model(name, input_shape, num_classes)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}
