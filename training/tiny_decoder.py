"""Distil a tiny decoder (diffusers ``AutoencoderTiny``, the TAESD layout) from a model's VAE.

    python -m training.tiny_decoder --model pretrained_models/studio-demo          # writes MODEL/vae_tiny
    python -m training.tiny_decoder --model MODEL --steps 4000 --channels 64 --resume

The decoder is distilled as a function: its input is any scaled latent z (what the UNet
denoises) and its target is the model's own VAE decoding of that z. The latents are the
VAE's encodings of procedural paintings, their flat scribbles and smooth colour fields at
the model's native size, and noised copies z + sigma n (sigma up to ``--noise``), since
stroke guidance and previews decode predicted latents that are rarely clean. Loss: L1 on
random latent crops (and their 8x image crops) plus an L1 term between 8x8 block-mean
colours. The encoder (image -> z, same layout) is distilled beside it on the clean items,
so the saved folder is a complete ``AutoencoderTiny``. Checkpoints (safetensors + JSON)
go to ``--checkpoint-dir``; ``--resume`` continues the last one. The result is checked the
way the app checks any tiny decoder (:func:`core.tiny_decoder.agreement`), and its PSNR
against the VAE on held-out paintings is written to ``vae_tiny/distill.json``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.cli import OneLineParser
from core.errors import StudioError
from core.latent_rgb import colour_fields

from . import procedural as P
from .checkpoint import resume_step, save_checkpoint
from .make_dataset import item_scene
from .train import load_vae, run_cli

DATA_SEED = 404  # dataset seed of the distillation images (the demo model trained on seed 0)
HELDOUT_SEED = 405


def render_images(count: int, size: int, seed: int) -> np.ndarray:
    """(count, size, size, 3) uint8: paintings, every fourth their flat scribble instead."""
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        scene, style, _ = item_scene(seed, i)
        out[i] = P.render_scribble(scene, size) if i % 4 == 3 else P.render_painting(scene, size, style)
    return out


@torch.no_grad()
def make_pairs(vae: torch.nn.Module, images: torch.Tensor, noise: float, seed: int, batch: int = 8
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, VAE(z), clean) for images in [-1, 1]: z scaled latents, two in three noised."""
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    generator = torch.Generator().manual_seed(seed)
    zs, targets, clean = [], [], []
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        z = (vae.encode(x).latent_dist.mean - shift) * scale
        sigma = torch.rand(len(z), 1, 1, 1, generator=generator) * noise
        keep = (torch.arange(start, start + len(z)) % 3 == 0).view(-1, 1, 1, 1)
        sigma = torch.where(keep, torch.zeros_like(sigma), sigma)
        z = z + sigma * torch.randn(z.shape, generator=generator)
        zs.append(z)
        targets.append(vae.decode(z / scale + shift).sample.clamp(-1, 1))
        clean.append(sigma.flatten() == 0)
    return torch.cat(zs), torch.cat(targets), torch.cat(clean)


def block_colours(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of images in [-1, 1], as [0, 1]."""
    mse = float(((a - b) / 2).pow(2).mean())
    return 10 * math.log10(1 / max(mse, 1e-10))


def build_tiny(channels: int, latent_channels: int, blocks: int):
    from diffusers import AutoencoderTiny

    widths = (channels,) * blocks
    return AutoencoderTiny(encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                           latent_channels=latent_channels, num_encoder_blocks=(1,) + (3,) * (blocks - 1),
                           num_decoder_blocks=(3,) * (blocks - 1) + (1,))


def distil(model: Path, out: Path, *, steps: int, channels: int, images: int, crop: int, batch_size: int,
           lr: float, noise: float, colour_weight: float, checkpoint_dir: Path, resume: bool,
           checkpoint_every: int, seed: int = 0, log=print) -> dict:
    vae = load_vae(model).eval().requires_grad_(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(vae.config.sample_size)
    blocks = int(round(math.log2(factor))) + 1
    if crop % factor or crop > size:
        raise StudioError(f"--crop {crop} must be a multiple of {factor} and at most the model's {size} px.")
    torch.manual_seed(seed)
    tiny = build_tiny(channels, int(vae.config.latent_channels), blocks)
    started = time.perf_counter()
    pixels = torch.from_numpy(render_images(images, size, DATA_SEED)).permute(0, 3, 1, 2).float() / 127.5 - 1
    pixels = torch.cat([pixels, colour_fields(max(1, images // 8), size, seed) * 2 - 1])
    z, target, clean = make_pairs(vae, pixels, noise, seed)
    log(f"tiny decoder: {len(z)} latents encoded and decoded in {time.perf_counter() - started:.0f} s")
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=lr, weight_decay=0.0)
    start = resume_step(checkpoint_dir, "tiny", tiny, optimizer, resume, log)
    generator = torch.Generator().manual_seed(seed + start)
    lat = crop // factor
    h, w = z.shape[-2:]
    tiny.train()
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(z), (batch_size,), generator=generator)
        tops = torch.randint(h - lat + 1, (batch_size,), generator=generator)
        lefts = torch.randint(w - lat + 1, (batch_size,), generator=generator)
        zc = torch.stack([z[i, :, t:t + lat, l:l + lat] for i, t, l in zip(idx, tops, lefts)])
        tc = torch.stack([target[i, :, t * factor:(t + lat) * factor, l * factor:(l + lat) * factor]
                          for i, t, l in zip(idx, tops, lefts)])
        pc = torch.stack([pixels[i, :, t * factor:(t + lat) * factor, l * factor:(l + lat) * factor]
                          for i, t, l in zip(idx, tops, lefts)])
        decoded = tiny.decoder(zc)
        loss = F.l1_loss(decoded, tc) + colour_weight * F.l1_loss(block_colours(decoded), block_colours(tc))
        keep = clean[idx]
        if bool(keep.any()):  # the encoder learns the VAE's clean latents of the true images
            loss = loss + F.l1_loss(tiny.encoder(pc[keep]), zc[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"tiny decoder: step {step + 1}/{steps} loss {loss.item():.4f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(checkpoint_dir, "tiny", step + 1, {"tiny": tiny}, {}, optimizer, {"steps": steps})
    tiny.eval()
    report = evaluate(tiny, vae, size, min(64, images))
    report.update({"steps": steps, "channels": channels, "images": len(z), "crop": crop, "noise": noise,
                   "parameters": sum(p.numel() for p in tiny.parameters()),
                   "decoder_parameters": sum(p.numel() for p in tiny.decoder.parameters()),
                   "seconds": round(time.perf_counter() - started, 1), "model": str(model)})
    out.mkdir(parents=True, exist_ok=True)
    tiny.save_pretrained(out, safe_serialization=True)
    (out / "distill.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"tiny decoder: PSNR against the VAE {report['psnr_vs_vae']:.1f} dB on held-out paintings; "
        f"written to {out}")
    return report


@torch.no_grad()
def evaluate(tiny: torch.nn.Module, vae: torch.nn.Module, size: int, count: int) -> dict:
    """PSNR of the tiny decoder against the VAE's decoding, and of both against the paintings."""
    from core.tiny_decoder import agreement

    pixels = torch.from_numpy(render_images(count, size, HELDOUT_SEED)).permute(0, 3, 1, 2).float() / 127.5 - 1
    z, target, _ = make_pairs(vae, pixels, 0.0, 0)
    small = torch.cat([tiny.decode(z[i:i + 8]).sample.clamp(-1, 1) for i in range(0, len(z), 8)])
    return {"psnr_vs_vae": psnr(small, target), "vae_psnr_vs_images": psnr(target, pixels),
            "tiny_psnr_vs_images": psnr(small, pixels), "agreement_mean_error": agreement(tiny, vae),
            "heldout_images": count}


def main(argv: Sequence[str] | None = None) -> None:
    p = OneLineParser(prog="python -m training.tiny_decoder", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="SD folder (or VAE folder) to distil from")
    p.add_argument("--out", type=Path, help="output folder (default MODEL/vae_tiny)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--channels", type=int, default=32, help="width of every block (TAESD: 64)")
    p.add_argument("--images", type=int, default=600, help="paintings and scribbles to distil on")
    p.add_argument("--crop", type=int, default=128, help="training crop in pixels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--noise", type=float, default=0.5, help="largest sigma of the noised latents")
    p.add_argument("--colour-weight", type=float, default=1.0)
    p.add_argument("--checkpoint-dir", type=Path, help="default runs/tiny-decoder/<model folder name>")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or args.model / "vae_tiny"
    checkpoints = args.checkpoint_dir or Path("runs") / "tiny-decoder" / args.model.resolve().name
    distil(args.model, out, steps=args.steps, channels=args.channels, images=args.images, crop=args.crop,
           batch_size=args.batch_size, lr=args.lr, noise=args.noise, colour_weight=args.colour_weight,
           checkpoint_dir=checkpoints, resume=args.resume, checkpoint_every=args.checkpoint_every)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m training.tiny_decoder`` (one-line errors: :func:`training.train.run_cli`)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
