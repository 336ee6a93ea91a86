"""Train a small CLIP on captioned paintings, for image prompts that work offline.

    python -m training.clip --data DATASET --out pretrained_models/studio-clip
    python -m training.clip --data DATASET --out OUT --steps 6000 --resume      # continue

The model is transformers' ``CLIPModel`` (a ViT image tower and a text transformer with
one shared embedding space), only small: 64 px images in 8 px patches, 128-wide towers,
a few MB of safetensors. It is saved as a complete transformers CLIP folder (config,
weights, tokenizer, image processor), so the studio loads it exactly like
``openai/clip-vit-base-patch32``. The tokenizer is the demo model's (``--tokenizer``),
whose vocabulary covers every caption of the procedural grammar.

Objective: CLIP's symmetric contrastive loss (InfoNCE over a batch, learned temperature).
Augmentations are the ones image-prompt guidance needs the towers to be robust to: random
crops of 40-100% of the side (the guidance embeds random cutouts), horizontal flips, and
for half the batch a soft copy (downsampled to 16-40 px and back), since the guidance
embeds predicted clean images seen through the fast latent->RGB map (one pixel per latent).
Colours are never jittered: a caption's colour words must stay true.

Checkpoints (safetensors + JSON) go to ``--checkpoint-dir``; ``--resume`` continues the last
one. At the end the model is checked zero-shot on held-out paintings rendered from dataset
seed 505 (never trained on): style and time of day are predicted by the nearest of the
prompts "a <style> painting" / "a painting <at time>", and image->caption retrieval
top-1 among 256; the figures go to ``OUT/clip.json``.
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

from core.cli import OneLineParser
from core.clip_model import MEAN, STD, ClipGuide
from core.errors import StudioError

from . import procedural as P
from .checkpoint import resume_step, save_checkpoint
from .data import find_records
from .make_dataset import item_scene
from .train import run_cli

HELDOUT_SEED = 505  # dataset seed of the zero-shot check (the demo model: 0, bench: 303)
STYLE_PROMPTS = {"watercolor": "a watercolor painting", "oil": "an oil painting", "poster": "a flat poster painting",
                 "pointillism": "a pointillist painting", "ink": "an ink sketch"}
TIME_PROMPTS = {"day": "a painting on a sunny day", "sunset": "a painting at sunset", "night": "a painting at night"}


def build_clip(vocab_size: int, bos: int, eos: int, pad: int, image_size: int = 64, patch: int = 8,
               width: int = 128, layers: int = 4, text_layers: int = 3, projection: int = 128):
    """A small randomly initialised ``CLIPModel``."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=text_layers,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=pad, projection_dim=projection)
    vision = dict(image_size=image_size, patch_size=patch, hidden_size=width, intermediate_size=4 * width,
                  num_hidden_layers=layers, num_attention_heads=4, num_channels=3, projection_dim=projection)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)
    return CLIPModel(config)


def save_clip(model, tokenizer, out: Path) -> Path:
    """A complete transformers CLIP folder: config, safetensors weights, tokenizer, image processor."""
    from transformers import CLIPImageProcessor

    size = int(model.config.vision_config.image_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(MEAN), image_std=list(STD)).save_pretrained(out)
    return out


def build_tiny_clip(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised CLIP of a few kB in a folder (for tests of the mechanics)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = build_clip(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       image_size=16, width=32, layers=1, text_layers=1, projection=16)
    return save_clip(model, tokenizer, out)


def load_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8, each image resized with area averaging."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise StudioError(f"{path}: not a readable image")
        rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        out[i] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    return out


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> CLIP's normalised input."""
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float [0, 1] (B, 3, size, size): random crop, flip, soft half."""
    x = images.float() / 255
    b = len(x)
    scale = 0.4 + 0.6 * torch.rand(b, generator=g)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - scale)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - scale)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = scale
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    soft = torch.rand(b, generator=g) < 0.5
    if bool(soft.any()):
        low = int(torch.randint(16, 41, (1,), generator=g))
        small = F.interpolate(x[soft], size=(low, low), mode="area")
        x[soft] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def contrastive_loss(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    image = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)
    text = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
    logits = model.logit_scale.exp() * image @ F.normalize(text, dim=-1).t()
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


@torch.no_grad()
def zero_shot(model, tokenizer, size: int, count: int) -> dict:
    """Style, time-of-day and caption-retrieval accuracy on ``count`` held-out paintings."""
    model.eval()
    images, styles, times, captions = [], [], [], []
    for i in range(count):
        scene, style, text = item_scene(HELDOUT_SEED, i)
        images.append(cv2.resize(P.render_painting(scene, 256, style), (size, size), interpolation=cv2.INTER_AREA))
        styles.append(style)
        times.append(scene.time)
        captions.append(text)
    guide = ClipGuide(model, tokenizer, size, "training")
    image_emb = guide.image_features(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255)
    texts = guide.text_features

    report = {}
    for name, table, truth in (("style", STYLE_PROMPTS, styles), ("time", TIME_PROMPTS, times)):
        keys = list(table)
        pred = (image_emb @ texts([table[k] for k in keys]).t()).argmax(1)
        report[f"{name}_accuracy"] = float(np.mean([keys[int(p)] == t for p, t in zip(pred, truth)]))
        report[f"{name}_chance"] = 1 / len(keys)
    caption_emb = texts(captions)
    report["retrieval_top1"] = float((image_emb @ caption_emb.t()).argmax(1).eq(torch.arange(count)).float().mean())
    report["retrieval_chance"] = 1 / count
    return report


def train(data: Path, out: Path, tokenizer_dir: Path, *, steps: int, batch_size: int, lr: float, image_size: int,
          width: int, layers: int, checkpoint_dir: Path, resume: bool, checkpoint_every: int,
          heldout: int = 256, seed: int = 0, log=print) -> dict:
    from transformers import CLIPTokenizer

    if not any((tokenizer_dir / name).exists() for name in ("vocab.json", "tokenizer.json")):
        raise StudioError(f"{tokenizer_dir}: no vocab.json or tokenizer.json: --tokenizer takes a CLIP tokenizer folder "
                          "(the demo model's pretrained_models/studio-demo/tokenizer)")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    records = find_records(data)
    started = time.perf_counter()
    store = int(image_size * 1.5)
    pixels = load_images([r.path for r in records], store)
    tokens = tokenizer([r.text for r in records], padding="max_length", truncation=True, max_length=77,
                       return_tensors="pt")
    longest = int(tokens.attention_mask.sum(1).max())
    ids, mask = tokens.input_ids[:, :longest], tokens.attention_mask[:, :longest]
    log(f"clip: {len(records)} images of {data} loaded in {time.perf_counter() - started:.0f} s "
        f"(captions up to {longest} tokens)")
    torch.manual_seed(seed)
    model = build_clip(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       image_size=image_size, width=width, layers=layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    start = resume_step(checkpoint_dir, "clip", model, optimizer, resume, log)
    generator = torch.Generator().manual_seed(seed + start)
    warmup = min(500, steps // 10)
    model.train()
    for step in range(start, steps):
        factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup)
                                                                           / max(1, steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        idx = torch.randperm(len(records), generator=generator)[:batch_size]
        x = normalise(augment(pixels[idx], image_size, generator))
        loss = contrastive_loss(model, x, ids[idx], mask[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"clip: step {step + 1}/{steps} loss {loss.item():.4f} "
                f"temperature {1 / model.logit_scale.exp().item():.3f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(checkpoint_dir, "clip", step + 1, {"clip": model}, {}, optimizer, {"steps": steps})
    report = zero_shot(model, tokenizer, image_size, heldout)
    report.update({"steps": steps, "batch_size": batch_size, "images": len(records), "data": str(data),
                   "parameters": sum(p.numel() for p in model.parameters()), "image_size": image_size,
                   "seconds": round(time.perf_counter() - started, 1), "heldout_seed": HELDOUT_SEED,
                   "heldout": heldout})
    save_clip(model, tokenizer, out)
    (out / "clip.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"clip: zero-shot on {heldout} held-out paintings: style {report['style_accuracy']:.0%} "
        f"(chance {report['style_chance']:.0%}), time {report['time_accuracy']:.0%}, caption retrieval "
        f"{report['retrieval_top1']:.0%}; written to {out}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    p = OneLineParser(prog="python -m training.clip", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="captioned image folder (training.make_dataset)")
    p.add_argument("--out", type=Path, default=Path("pretrained_models/studio-clip"))
    p.add_argument("--tokenizer", type=Path, default=Path("pretrained_models/studio-demo/tokenizer"))
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=int, default=128, help="width of both towers")
    p.add_argument("--layers", type=int, default=4, help="image tower's layers (text: 3)")
    p.add_argument("--heldout", type=int, default=256, help="held-out paintings of the zero-shot check")
    p.add_argument("--checkpoint-dir", type=Path, help="default runs/clip/<out folder name>")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size % 8:
        p.error("--image-size must be a multiple of 8 (the patch size)")
    checkpoints = args.checkpoint_dir or Path("runs") / "clip" / args.out.resolve().name
    train(args.data, args.out, args.tokenizer, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
          image_size=args.image_size, width=args.width, layers=args.layers, checkpoint_dir=checkpoints,
          resume=args.resume, checkpoint_every=args.checkpoint_every, heldout=args.heldout)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m training.clip`` (one-line errors: :func:`training.train.run_cli`)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
