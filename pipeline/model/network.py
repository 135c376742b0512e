"""The AN13331 CIFAR-10 network (what is deployed), and the wider teacher that distillation learns from."""
import torch
from torch import nn

from pipeline.model.shapes import INPUT_SHAPE


class ConvBlock(nn.Sequential):
    """Conv, BatchNorm, ReLU, then an optional 2x2 max pool: the note's order, which evaluation and the exported
    graph keep, so the deployed network is the note's. In training the ReLU runs after the pool instead, on a
    quarter of the elements (about a tenth of a bf16 step): the two commute exactly, forward and backward, since
    ReLU is monotonic and passes no gradient where the window's maximum is not positive."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool):
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers, *([nn.MaxPool2d(2)] if pool else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and len(self) == 4):
            return super().forward(x)
        conv, norm, relu, pool = self
        return relu(pool(norm(conv(x))))


class CifarNet(nn.Module):
    """Conv+BN+ReLU, then three Conv+BN+ReLU+MaxPool blocks, then Linear. `channels` gives the width of the four
    conv blocks; the first block keeps 32x32, the others halve it."""

    def __init__(self, channels=(32, 32, 64, 128), num_classes: int = 10):
        super().__init__()
        widths = [INPUT_SHAPE[1], *channels]
        self.features = nn.Sequential(
            *(ConvBlock(widths[i], widths[i + 1], pool=i > 0) for i in range(len(channels)))
        )
        side = INPUT_SHAPE[2] // 2 ** (len(channels) - 1)
        self.classifier = nn.Linear(channels[-1] * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TeacherNet(nn.Module):
    """Never deployed: a stem Conv+BN+ReLU, then per further width a block of two convolutions (the first
    followed by a 2x2 max pool), global max pool, Linear. The default (32, 64, 256, 256) has 2.0 M parameters."""

    def __init__(self, channels=(32, 64, 256, 256), num_classes: int = 10):
        super().__init__()
        layers, width = [*ConvBlock(INPUT_SHAPE[1], channels[0], pool=False)], channels[0]
        for out in channels[1:]:
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), *ConvBlock(out, out, pool=False)]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NETWORKS = {"cifarnet": CifarNet, "teacher": TeacherNet}
