"""The classic U-Net of Ronneberger et al. (2015), written here because smp has no plain U-Net.

Double 3x3 convolutions (with batch norm, which the original lacked), 2x2 max-pooling on the way
down, 2x2 transposed convolutions on the way up, and skip connections by concatenation.
"""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BN -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed-conv up-sampling, concatenation with the skip, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C_out, 2H, 2W)
        return self.conv(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """Classic U-Net; input sides must be divisible by 2**depth (the registry pads for you).

    Args:
        in_channels: image channels.
        classes: output channels (logits, one per target region).
        base_channels: width of the first level; doubles at each level down.
        depth: number of pooling steps.
    """

    def __init__(
        self, in_channels: int = 3, classes: int = 1, base_channels: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1])) for i in range(depth)
        )
        self.up = nn.ModuleList(UpBlock(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]  # (B, w0, H, W)
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()  # bottleneck (B, w_depth, H / 2**depth, W / 2**depth)
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)  # (B, classes, H, W) logits
