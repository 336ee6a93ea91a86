"""Train the bundled upscaler: a Real-ESRGAN Compact network (spandrel's ``Compact``) on procedural paintings.

    python -m training.upscaler                                   # writes pretrained_models/upscalers/studio-compact-x4.safetensors
    python -m training.upscaler --steps 4000 --resume --checkpoint-dir ~/studio-runs/upscaler

High-resolution targets are procedural paintings (every style, dataset seed 505) rendered
at 512 and 1024 px; inputs are their ``scale``-times smaller copies (area downsampling,
as the bench makes them), a fifth of them slightly blurred so soft generated images are
sharpened too. Loss: mean squared error on random crops (what PSNR measures; L1 settles
near the nearest-neighbour copy on these flat-coloured paintings). The network is the SRVGG
"Compact" layout that spandrel loads (convolutions at the input resolution, a pixel
shuffle, plus a nearest-neighbour copy of the input), so any spandrel-based tool can use the
result. It starts as that copy: He-initialised convolutions (PyTorch's default init fades
the signal through 16 layers, and such a net learned nothing but the copy) and a zero last
convolution.
Checkpoints (safetensors + JSON) go to ``--checkpoint-dir``; ``--resume`` continues the
last one. At the end the held-out PSNR and SSIM against bicubic and Lanczos are measured
(:func:`bench.bench_upscale.quality_table` at 256 -> 1024 and 128 -> 512) and written
beside the weights as ``<name>.json``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from core.cli import OneLineParser
from core.errors import StudioError
from core.upscale import BUNDLED, UPSCALERS_DIR, import_spandrel

from . import procedural as P
from .checkpoint import resume_step, save_checkpoint
from .make_dataset import item_scene
from .train import autocast, autocast_dtype, run_cli

DATA_SEED = 505  # paintings to learn from (the demo model: 0, the tiny decoder: 404)
HELDOUT_SEED = 506  # paintings the bench measures on


def render_pairs(count: int, scale: int, seed: int, sizes: Sequence[int] = (512, 1024)) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (low, high) uint8 pairs: a painting and its area-downsampled copy."""
    pairs = []
    for i in range(count):
        scene, style, _ = item_scene(seed, i)
        high = P.render_painting(scene, sizes[i % len(sizes)], style)
        low = cv2.resize(high, (high.shape[1] // scale, high.shape[0] // scale), interpolation=cv2.INTER_AREA)
        pairs.append((low, high))
    return pairs


def build_compact(feat: int, convs: int, scale: int, he_init: bool = False) -> torch.nn.Module:
    """spandrel's Compact; ``he_init``: He-normal convolutions for its PReLUs and a zero last one."""
    import_spandrel()
    from spandrel.architectures.Compact import Compact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=convs, upscale=scale)
    if he_init:
        convs_ = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in convs_:
            torch.nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
            torch.nn.init.zeros_(conv.bias)
        torch.nn.init.zeros_(convs_[-1].weight)
    return net


def batch(pairs: list[tuple[np.ndarray, np.ndarray]], size: int, scale: int, count: int,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned crops: (count, 3, size, size) inputs and (count, 3, size*s, size*s) targets in [0, 1]."""
    lows, highs = [], []
    for _ in range(count):
        low, high = pairs[int(rng.integers(len(pairs)))]
        y, x = int(rng.integers(low.shape[0] - size + 1)), int(rng.integers(low.shape[1] - size + 1))
        lo = low[y:y + size, x:x + size]
        if rng.random() < 0.2:  # soft inputs, as decoded generations are
            lo = cv2.GaussianBlur(lo, (0, 0), float(rng.uniform(0.3, 0.9)))
        lows.append(lo)
        highs.append(high[y * scale:(y + size) * scale, x * scale:(x + size) * scale])
    def t(a: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255.0
    return t(lows), t(highs)


def train(out: Path, *, steps: int, feat: int, convs: int, scale: int, images: int, crop: int, batch_size: int,
          lr: float, checkpoint_dir: Path, resume: bool, checkpoint_every: int, precision: str, seed: int = 0,
          log=print) -> dict:
    if crop < 16 or crop > 512 // scale:
        raise StudioError(f"--crop {crop} must be 16..{512 // scale} input pixels.")
    torch.manual_seed(seed)
    net = build_compact(feat, convs, scale, he_init=True)
    started = time.perf_counter()
    pairs = render_pairs(images, scale, DATA_SEED)
    log(f"upscaler: {len(pairs)} paintings rendered in {time.perf_counter() - started:.0f} s")
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    start = resume_step(checkpoint_dir, "upscaler", net, optimizer, resume, log)
    rng = np.random.default_rng([seed, start])
    dtype = autocast_dtype(torch.device("cpu"), precision)
    net.train()
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        low, high = batch(pairs, crop, scale, batch_size, rng)
        with autocast(torch.device("cpu"), dtype):
            pred = net(low)
        loss = F.mse_loss(pred.float(), high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)  # a deep plain CNN at this rate spikes without it
        optimizer.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"upscaler: step {step + 1}/{steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f} s)")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(checkpoint_dir, "upscaler", step + 1, {"upscaler": net}, {}, optimizer, {"steps": steps})
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(out))
    from bench.bench_upscale import quality_table

    report = {"architecture": "RealESRGAN Compact (spandrel)", "scale": scale, "feat": feat, "convs": convs,
              "parameters": sum(p.numel() for p in net.parameters()), "steps": steps, "images": images,
              "crop": crop, "batch_size": batch_size, "lr": lr, "loss": "mse", "data_seed": DATA_SEED,
              "train_seconds": round(time.perf_counter() - started, 1),
              "heldout": quality_table(out, count=24, seed=HELDOUT_SEED)}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"upscaler: written to {out}; held-out PSNR {json.dumps(report['heldout'])}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    p = OneLineParser(prog="python -m training.upscaler", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=UPSCALERS_DIR / f"{BUNDLED}.safetensors")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--feat", type=int, default=48, help="channels of every convolution")
    p.add_argument("--convs", type=int, default=16, help="body convolutions")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--images", type=int, default=600, help="paintings to learn from")
    p.add_argument("--crop", type=int, default=48, help="input crop in pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16", "auto"), default="no")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("runs") / "upscaler")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("steps", "feat", "convs", "images", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise StudioError(f"--{name.replace('_', '-')} must be at least 1.")
    train(args.out, steps=args.steps, feat=args.feat, convs=args.convs, scale=args.scale, images=args.images,
          crop=args.crop, batch_size=args.batch_size, lr=args.lr, checkpoint_dir=args.checkpoint_dir,
          resume=args.resume, checkpoint_every=args.checkpoint_every, precision=args.mixed_precision)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m training.upscaler`` (one-line errors: :func:`training.train.run_cli`)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
