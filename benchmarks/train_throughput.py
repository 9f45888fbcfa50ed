"""Training throughput (samples/s) of the fedglioma network vs MONAI's BasicUNet with the same heads.

Both networks get instance norm (affine), LeakyReLU(0.01), transposed-convolution upsampling, the same
classification heads on the bottleneck (global + tumour-region pooling) and the same masked multi-task loss;
one step is forward + backward + AdamW on random data. MONAI is optional (``pip install --no-deps monai``);
BasicUNet always has 4 downsamplings, so it is compared at ``--depth 4`` only.

Usage::

    python benchmarks/train_throughput.py --size 64 --width 8 16 --depth 3 4 --threads 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from fedglioma.constants import TASKS
from fedglioma.model import ModelConfig, MultiTaskLoss, build_model
from fedglioma.model.net import HEAD_SIZES, ClassificationHead


class BasicUNetMultiTask(nn.Module):
    """``monai.networks.nets.BasicUNet`` (features ``w, 2w, 4w, 8w, 16w, w``) with fedglioma's heads."""

    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        w = width
        self.unet = BasicUNet(
            spatial_dims=3,
            in_channels=4,
            out_channels=1,
            features=(w, 2 * w, 4 * w, 8 * w, 16 * w, w),
            act=("LeakyReLU", {"negative_slope": 0.01, "inplace": True}),
            norm=("instance", {"affine": True}),
            upsample="deconv",
        )
        cb = 16 * w
        self.heads = nn.ModuleDict({t: ClassificationHead(2 * cb, cb, HEAD_SIZES[t], dropout) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        u = self.unet
        x0 = u.conv_0(x)
        x1 = u.down_1(x0)
        x2 = u.down_2(x1)
        x3 = u.down_3(x2)
        x4 = u.down_4(x3)  # bottleneck (B, 16w, X/16, Y/16, Z/16)
        h = u.upcat_4(x4, x3)
        h = u.upcat_3(h, x2)
        h = u.upcat_2(h, x1)
        h = u.upcat_1(h, x0)
        seg = u.final_conv(h)
        weight = F.avg_pool3d(torch.sigmoid(seg.detach()), kernel_size=16, stride=16)
        gap = x4.mean(dim=(2, 3, 4))
        tumour = (x4 * weight).sum(dim=(2, 3, 4)) / (weight.sum(dim=(2, 3, 4)) + 1e-6)
        feats = torch.cat([gap, tumour], dim=1)
        out = {"seg": seg}
        for t in TASKS:
            logits = self.heads[t](feats)
            out[t] = logits[:, 0] if HEAD_SIZES[t] == 1 else logits
        return out


def bench(model: nn.Module, size: int, batch: int, steps: int, warmup: int = 1) -> dict[str, float]:
    """Seconds per training step (fastest of ``steps``) and samples/s on random data (labels all present)."""
    loss_fn = MultiTaskLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 4, size, size, size)
    tumour = (torch.rand(batch, 1, size, size, size) > 0.9).float()
    has_seg = torch.ones(batch, dtype=torch.bool)
    labels = torch.tensor([[1.0, 1.0, 0.0, 2.0]] * batch)
    model.train()
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss, _ = loss_fn(model(x), tumour, has_seg, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    # The fastest step: the least disturbed by other load on a shared machine.
    step = min(times)
    return {
        "s_per_step": round(step, 3),
        "samples_per_s": round(batch / step, 3),
        "s_per_sample": round(step / batch, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--depth", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        import monai  # noqa: F401

        have_monai = True
    except ImportError:
        have_monai = False
    rows = []
    for w in args.width:
        for d in args.depth:
            torch.manual_seed(0)
            m = build_model(ModelConfig(width=w, depth=d, dropout=0.0))
            n = sum(p.numel() for p in m.parameters())
            rows.append(
                {"net": "fedglioma", "width": w, "depth": d, "params": n, **bench(m, args.size, args.batch, args.steps)}
            )
            print(json.dumps(rows[-1]), flush=True)
            if d == 4 and have_monai:
                torch.manual_seed(0)
                m = BasicUNetMultiTask(w)
                n = sum(p.numel() for p in m.parameters())
                rows.append(
                    {
                        "net": "monai.BasicUNet",
                        "width": w,
                        "depth": 4,
                        "params": n,
                        **bench(m, args.size, args.batch, args.steps),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    if not have_monai:
        print("monai not installed: BasicUNet skipped (pip install --no-deps monai)")


if __name__ == "__main__":
    main()
