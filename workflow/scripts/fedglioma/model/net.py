"""Multi-task 3D U-Net: whole-tumour segmentation plus IDH, 1p/19q, MGMT and grade heads.

Notation for shapes: ``B`` batch, ``C`` input channels (4 modalities), ``X, Y, Z`` the network grid,
``w`` = ``ModelConfig.width``, ``d`` = ``ModelConfig.depth``, ``Cb = w * 2**d`` bottleneck channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedglioma.constants import BINARY_TASKS, GRADES, TASKS
from fedglioma.settings import ModelConfig

#: Output sizes of the classification heads (logits).
HEAD_SIZES: dict[str, int] = {**{t: 1 for t in BINARY_TASKS}, "grade": len(GRADES)}


class ConvBlock(nn.Module):
    """Two ``Conv3d(3x3x3) -> InstanceNorm3d(affine) -> LeakyReLU`` layers.

    The first convolution has stride ``stride`` (2 in the encoder downsamples).
    Shapes: ``(B, c_in, X, Y, Z) -> (B, c_out, X/stride, Y/stride, Z/stride)``.
    Normalisation layers are named ``norm1``/``norm2`` so that ``*.norm*`` selects them (FedBN-style site-local
    parameters).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        # No conv bias: instance norm removes it anyway.
        self.conv1 = nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(c_out, affine=True)
        self.conv2 = nn.Conv3d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(c_out, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


class ClassificationHead(nn.Module):
    """``Dropout -> Linear(2Cb, Cb) -> LeakyReLU -> Linear(Cb, k)``: ``(B, 2Cb) -> (B, k)`` logits."""

    def __init__(self, c_in: int, hidden: int, k: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(c_in, hidden)
        self.act = nn.LeakyReLU(0.01)
        self.fc2 = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.drop(x))))


class MultiTaskUNet(nn.Module):
    """3D U-Net encoder-decoder with a whole-tumour head and four classification heads.

    Encoder level ``i`` (``0..d``) has ``w * 2**i`` channels at ``1 / 2**i`` of the grid; downsampling is a
    stride-2 convolution, upsampling a stride-2 transposed convolution, skip connections concatenate.

    The classification heads see the bottleneck features ``f`` of shape ``(B, Cb, X/2**d, Y/2**d, Z/2**d)``
    pooled twice and concatenated to ``(B, 2Cb)``:

    - global average pooling over the grid,
    - tumour-region pooling: the average of ``f`` weighted by the predicted tumour probability, average-pooled
      down to the bottleneck grid. The probability is detached, so the classification losses do not train the
      segmentation head through the pooling weights.

    Inputs whose size is not a multiple of ``2**d`` are zero-padded at the end of each axis and the segmentation
    output is cropped back.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, d = cfg.width, cfg.depth
        chans = [w * 2**i for i in range(d + 1)]
        self.encoders = nn.ModuleList(
            [ConvBlock(cfg.in_channels, chans[0])]
            + [ConvBlock(chans[i - 1], chans[i], stride=2) for i in range(1, d + 1)]
        )
        # ups[i] / decoders[i] bring level i+1 up to level i.
        self.ups = nn.ModuleList(
            [nn.ConvTranspose3d(chans[i + 1], chans[i], kernel_size=2, stride=2, bias=False) for i in range(d)]
        )
        self.decoders = nn.ModuleList([ConvBlock(2 * chans[i], chans[i]) for i in range(d)])
        self.seg_head = nn.Conv3d(chans[0], 1, kernel_size=1)
        cb = chans[-1]
        self.heads = nn.ModuleDict({t: ClassificationHead(2 * cb, cb, HEAD_SIZES[t], cfg.dropout) for t in TASKS})
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, a=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def stride(self) -> int:
        """Total downsampling factor ``2**d``: input sizes that are multiples of it need no padding."""
        return 2**self.cfg.depth

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            x: ``(B, C, X, Y, Z)`` float images.

        Returns:
            ``seg``: ``(B, 1, X, Y, Z)`` whole-tumour logits; ``idh``, ``codeletion``, ``mgmt``: ``(B,)`` logits;
            ``grade``: ``(B, 3)`` logits for WHO grade 2/3/4.
        """
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected (B, {self.cfg.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        size = x.shape[2:]
        s = self.stride
        pad = [(-n) % s for n in size]
        if any(pad):
            # F.pad takes (last axis first) pairs (before, after).
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        skips = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        bottleneck = h
        for i in reversed(range(len(self.decoders))):
            h = self.ups[i](h)
            h = self.decoders[i](torch.cat([h, skips[i]], dim=1))
        seg = self.seg_head(h)  # (B, 1, X', Y', Z') padded grid

        prob = torch.sigmoid(seg.detach())
        if any(pad):
            # Zero weight for the padding.
            prob = prob.clone()
            prob[:, :, size[0] :] = 0
            prob[:, :, :, size[1] :] = 0
            prob[:, :, :, :, size[2] :] = 0
        weight = F.avg_pool3d(prob, kernel_size=s, stride=s)  # (B, 1, X'/s, Y'/s, Z'/s)
        gap = bottleneck.mean(dim=(2, 3, 4))  # (B, Cb)
        tumour = (bottleneck * weight).sum(dim=(2, 3, 4)) / (weight.sum(dim=(2, 3, 4)) + 1e-6)  # (B, Cb)
        feats = torch.cat([gap, tumour], dim=1)  # (B, 2Cb)

        out: dict[str, torch.Tensor] = {"seg": seg[:, :, : size[0], : size[1], : size[2]]}
        for t in TASKS:
            logits = self.heads[t](feats)
            out[t] = logits[:, 0] if HEAD_SIZES[t] == 1 else logits
        return out


def build_model(cfg: ModelConfig) -> MultiTaskUNet:
    """Build the network for ``cfg`` (weights from the current torch RNG state)."""
    return MultiTaskUNet(cfg)
