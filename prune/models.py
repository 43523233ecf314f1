"""ResNet-18 for CIFAR-10, its prunable layers and their multiply-accumulate counts."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

ARCH = "resnet18-cifar"
NUM_CLASSES = 10
INPUT_SHAPE = (3, 32, 32)  # channels, height, width of one image


def resnet18_cifar(num_classes: int = NUM_CLASSES) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool.

    Built exactly as huyvnphan/PyTorch_CIFAR10 builds it, so its published
    ``resnet18.pt`` state_dict and ours share keys and shapes.
    """
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def prunable_layers(model: nn.Module, include_downsample: bool = False) -> dict[str, nn.Module]:
    """The layers whose weights are pruned, by module name, in model order.

    By default the seed study's 18 tensors: the stem conv, the 16 convs of the
    basic blocks and fc. ``include_downsample`` adds the three 1x1 shortcut convs.
    """
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if "downsample" in name and not include_downsample:
            continue
        layers[name] = module
    return layers


def layer_macs(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> dict[str, int]:
    """Multiply-accumulates per image of every conv and linear layer, by module name."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_out = module.in_channels // module.groups * kh * kw
                macs[name] = int(output[0].numel() * per_out)
            else:
                macs[name] = int(module.in_features * module.out_features)

        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs
