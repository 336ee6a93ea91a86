"""Train a small Stable Diffusion format text-to-image model on a folder of captioned images.

    python -m training.train --data data/paintings --out pretrained_models/studio-demo \\
        --resolution 256 --steps 3000 --batch-size 16

Stages (each resumable with ``--resume`` from ``OUT/checkpoints/``):

A. VAE: ``AutoencoderKL`` (8x downsampling, 4 latent channels) trained on random crops
   with L1 + Sobel-edge L1 reconstruction and a small KL term (``--vae-colour-weight``: also
   L1 between 8x8 block-mean colours; ``--vae-scribbles``: also on the dataset's flat
   scribbles, which a VAE that saw only paintings turns grey; ``--vae-init``: continue an
   existing VAE); afterwards the whole dataset is encoded once (latent cache) and
   ``scaling_factor`` = 1 / std of latents.
B. A CLIP BPE tokenizer trained on the captions, then a small ``CLIPTextModel`` and a
   ``UNet2DConditionModel`` trained jointly on the cached latents: epsilon prediction
   under SD's noise schedule, 10% caption dropout (for classifier-free guidance),
   min-SNR loss weighting, AdamW, warm-up + cosine (or constant) learning rate, EMA.
C. Optionally (``--decoder-steps``), the VAE decoder alone on whole images from the cached
   latents: stage A's crops leave colour casts on whole images; the encoder, so the
   latent space the UNet learnt, stays as it is.

At the end ``OUT`` holds a diffusers folder (safetensors only) that
``StableDiffusionPipeline.from_pretrained(OUT)`` loads. Checkpoints, the latent cache,
``log.jsonl`` and preview images (VAE reconstructions, samples) go to ``OUT/checkpoints``
or ``--checkpoint-dir`` (use one outside the model folder for a model you will ship). ``--init-from SD_FOLDER``
fine-tunes an existing model's UNet instead (no VAE or tokenizer training); with ``--vae-from``
too, onto another VAE's latents.
Mixed precision (bf16, or fp16 with loss scaling) is used on CUDA by default; ``--mixed-precision bf16``
also runs on a CPU. ``--noise-offset`` (default 0.1 from scratch) lets global colour follow the caption.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from core.cli import EXIT_USER_ERROR, OneLineParser
from core.errors import StudioError
from .tokenizer_build import build_clip_tokenizer

from .checkpoint import EMA, CheckpointRef, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .data import EpochSampler, ImageStore, Record, find_records, fingerprint, scribble_records, to_uint8
from .models import (ModelConfig, VAEConfig, apply_overrides, build_text_encoder, build_unet, build_vae, count_params,
                     fp32_megabytes, make_pipeline, preset, train_scheduler)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI fills it)."""

    data: Path
    out: Path
    resolution: int = 256
    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)  # see models.apply_overrides
    # stage B: text encoder + UNet
    steps: int = 3000
    batch_size: int = 16
    lr: float | None = None  # default: 3e-4 from scratch, 1e-5 when fine-tuning
    lr_schedule: str = "cosine"  # cosine (to 10% of lr) or constant, both after warm-up
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0  # min-SNR weighting; 0 disables
    noise_offset: float | None = None  # default: 0.1 from scratch, 0 with --init-from
    train_text_encoder: bool | None = None  # default: yes from scratch, no with --init-from
    vocab_size: int | None = None  # default: the preset's
    # stage A: VAE
    vae_steps: int = 3000
    vae_batch_size: int = 8
    vae_lr: float = 1e-3
    vae_crop: int = 96  # train on random crops this big (the VAE is fully convolutional)
    vae_kl_weight: float = 1e-5  # on the KL summed per image / pixel values per image
    vae_edge_weight: float = 0.5  # L1 between Sobel gradients (a cheap perceptual term)
    vae_colour_weight: float = 0.0  # L1 between 8x8 block-mean colours (what a region's colour is made of)
    vae_scribbles: bool = False  # stages A and C also learn the dataset's flat scribbles (metadata "scribble")
    vae_init: Path | None = None  # stage A starts from this VAE (a VAE folder or an SD folder)
    vae_only: bool = False  # stop after stage A: OUT/vae (to check it, then --vae-from it)
    # stage C: the decoder alone, on whole images (crops in stage A)
    decoder_steps: int = 0
    decoder_batch_size: int = 4
    decoder_lr: float = 1e-4
    # run control
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0  # 0: only at the end
    samples: int = 4  # prompts sampled (20 DDIM steps, CFG 7.5); 0: none
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False
    init_from: Path | None = None
    vae_from: Path | None = None  # reuse this VAE (a VAE folder or an SD folder): no stage A
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU), no, bf16 (CUDA or CPU), fp16
    threads: int | None = None
    progress: bool = True
    checkpoint_dir: Path | None = None  # default OUT/checkpoints

    @property
    def checkpoints(self) -> Path:
        """Checkpoints, caches, logs and previews (keep out of a shipped model folder)."""
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.out / "checkpoints"

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class Parts:
    """The model being trained."""

    vae: AutoencoderKL
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    model_config: ModelConfig | None = None  # None when fine-tuning (--init-from)
    scheduler: Any = None  # the init model's inference scheduler, if any


@dataclass
class LatentCache:
    """Posterior mean and std (unscaled) of every image, and the tokenized captions."""

    mean: torch.Tensor  # (N, 4, h, w) float16
    std: torch.Tensor  # (N, 4, h, w) float16
    ids: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (N, L) int64

    def scaling_factor(self) -> float:
        """1 / std of latents sampled from the posteriors (var = var(mean) + E[std^2])."""
        mean, std = self.mean.double(), self.std.double()
        var = mean.var() + (std ** 2).mean()
        return float(1.0 / var.sqrt())


# --------------------------------------------------------------------------- utilities


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The random stream of one training step: a function of (seed, stage, step) only."""
    offset = {"vae": 1, "unet": 2, "sample": 3, "decoder": 4}[stage]
    return torch.Generator().manual_seed((seed * 1_000_003 + offset) * 10_000_019 + step)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # not Linux: cannot tell, trust the user's choice
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """Mixed precision dtype. ``auto``: bf16 (or fp16) on CUDA, off elsewhere. ``bf16`` also works on
    a CPU (autocast; about 1.4x faster training steps on a CPU with AVX512-BF16); fp16 is CUDA only."""
    if mode == "no":
        return None
    if device.type != "cuda":
        if mode == "fp16":
            raise StudioError("--mixed-precision fp16 needs a CUDA GPU; on a CPU use bf16 or no")
        if mode == "bf16" and not cpu_has_bf16():
            log.warning("--mixed-precision bf16 on a CPU without AVX512-BF16/AMX is emulated and many times "
                        "slower than fp32 here: use --mixed-precision no")
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def lr_at(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of ``base``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def module_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


class JsonLog:
    """Appends one JSON object per line to ``checkpoints/log.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **entry: Any) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **entry}) + "\n")


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradients (N, 2C, H, W)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 4
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1).to(x.dtype)  # (2, 1, 3, 3)
    c = x.shape[1]
    return F.conv2d(x, kernel.repeat(c, 1, 1, 1), padding=1, groups=c)


def random_crop(x: torch.Tensor, crop: int, g: torch.Generator) -> torch.Tensor:
    """The same-size random crop for every image of the batch (one per image)."""
    n, _, h, w = x.shape
    if crop >= min(h, w):
        return x
    tops = torch.randint(0, h - crop + 1, (n,), generator=g)
    lefts = torch.randint(0, w - crop + 1, (n,), generator=g)
    return torch.stack([x[i, :, t:t + crop, l:l + crop] for i, (t, l) in enumerate(zip(tops, lefts))])


# --------------------------------------------------------------------------- stage A


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, edge_weight: float, colour_weight: float = 0.0
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + ``edge_weight`` * L1 between Sobel gradients + ``colour_weight`` * L1 between
    8x8 block means (stages A and C). Pixel L1 lets a VAE trade a region's hue for its
    texture; the block-mean term is the colour a latent pixel stands for."""
    l1 = (rec - x).abs().mean()
    edge = (sobel_edges(rec) - sobel_edges(x)).abs().mean()
    loss, parts = l1 + edge_weight * edge, {"l1": l1.item(), "edge": edge.item()}
    if colour_weight > 0:
        colour = (F.avg_pool2d(rec, 8, ceil_mode=True) - F.avg_pool2d(x, 8, ceil_mode=True)).abs().mean()
        loss, parts["colour"] = loss + colour_weight * colour, colour.item()
    return loss, parts


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, g: torch.Generator, cfg: TrainConfig
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction + KL (per image sum / number of pixel values)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(x.device)
    loss, parts = reconstruction_loss(vae.decode(z).sample.float(), x, cfg.vae_edge_weight, cfg.vae_colour_weight)
    kl = posterior.kl().float().mean() / x[0].numel()
    return loss + cfg.vae_kl_weight * kl, {**parts, "kl": kl.item()}


def train_vae(cfg: TrainConfig, model_cfg: ModelConfig, store: ImageStore, resume: CheckpointRef | None,
              device: torch.device, amp: torch.dtype | None, logger: JsonLog) -> AutoencoderKL:
    """Stage A: train (or continue training) the autoencoder; returns it in eval mode."""
    set_seed(cfg.seed)
    if cfg.vae_init is None:
        vae = build_vae(model_cfg.vae, cfg.resolution)
    else:  # a new GroupNorm grouping (--vae-norm-groups) keeps the weights' shapes
        groups = cfg.overrides.get("vae_norm_groups")
        vae = load_vae(cfg.vae_init, **({"norm_num_groups": groups} if groups else {}))
    vae = vae.to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = 0
    if resume is not None and resume.stage == "vae":
        start = load_checkpoint(resume, {"vae": vae}, {}, optimizer)["step"]
        log.info("resuming the VAE at step %d", start)
    sampler = EpochSampler(len(store), cfg.vae_batch_size, cfg.seed + 1)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    vae.train()
    bar = tqdm(total=cfg.vae_steps, initial=start, desc="VAE", unit="step", disable=not cfg.progress)
    running, t0 = None, time.perf_counter()
    for step in range(start, cfg.vae_steps):
        g = step_generator(cfg.seed, "vae", step)
        x = random_crop(store.batch(sampler.indices(step)), cfg.vae_crop, g).to(device)
        set_lr(optimizer, lr_at(step, cfg.vae_steps, cfg.vae_lr, min(100, cfg.vae_steps // 10), "cosine"))
        with autocast(device, amp):
            loss, parts = vae_loss(vae, x, g, cfg)
        _backward_step(loss, optimizer, vae.parameters(), cfg.grad_clip, scaler)
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.update()
        bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.vae_steps:
            logger.write(stage="vae", step=step + 1, loss=value, **parts,
                         steps_per_s=(step + 1 - start) / (time.perf_counter() - t0))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            save_checkpoint(cfg.checkpoints, "vae", step + 1, {"vae": vae}, {}, optimizer,
                            _state(cfg, model_cfg), cfg.keep_checkpoints)
            val_l1 = vae_preview(vae, store, cfg.checkpoints / "samples" / f"vae-{step + 1:07d}.png", device)
            logger.write(stage="vae", step=step + 1, preview_l1=val_l1)
            vae.train()
    bar.close()
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def vae_preview(vae: AutoencoderKL, store: ImageStore, path: Path, device: torch.device, count: int = 4) -> float:
    """Write originals (top) over reconstructions (bottom) of the first images; returns their L1."""
    vae.eval()
    x = store.batch(list(range(min(count, len(store))))).to(device)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
    grid = np.concatenate([np.concatenate(list(to_uint8(x)), 1), np.concatenate(list(to_uint8(rec)), 1)], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return float((rec - x).abs().mean())


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Any, clip: float,
                   scaler: torch.amp.GradScaler | None) -> None:
    params = [p for p in params if p.requires_grad]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
@torch.no_grad()  # a VAE fresh from stage A still requires grad: without this every batch kept its graph
def encode_dataset(vae: AutoencoderKL, store: ImageStore, device: torch.device, progress: bool,
                   batch_size: int = 16) -> LatentCache:
    """Posterior mean and std of every image (unscaled, float16)."""
    means, stds = [], []
    for i in tqdm(range(0, len(store), batch_size), desc="encode", unit="batch", disable=not progress):
        x = store.batch(list(range(i, min(len(store), i + batch_size)))).to(device)
        post = vae.encode(x).latent_dist
        means.append(post.mean.float().cpu().half().contiguous())
        stds.append(post.std.float().cpu().half().contiguous())
    return LatentCache(torch.cat(means), torch.cat(stds))


def cached_latents(cfg: TrainConfig, vae: AutoencoderKL, store: ImageStore, records: list[Record],
                   device: torch.device) -> LatentCache:
    """Encode the dataset once per (dataset, VAE); later runs and resumes reuse the file."""
    ident = fingerprint(records, cfg.resolution) + module_fingerprint(vae)
    key = hashlib.sha1(ident.encode()).hexdigest()[:16]
    path = cfg.checkpoints / f"latents-{key}.safetensors"
    if path.exists():
        tensors = load_file(str(path))
        return LatentCache(tensors["mean"], tensors["std"])
    cache = encode_dataset(vae, store, device, cfg.progress)
    for old in cfg.checkpoints.glob("latents-*.safetensors"):
        old.unlink()
    cfg.checkpoints.mkdir(parents=True, exist_ok=True)
    save_file({"mean": cache.mean, "std": cache.std}, str(path))
    return cache


# --------------------------------------------------------------------------- stage C


def finetune_decoder(cfg: TrainConfig, vae: AutoencoderKL, store: ImageStore, cache: LatentCache,
                     resume: CheckpointRef | None, model_config: ModelConfig | None, device: torch.device,
                     amp: torch.dtype | None, logger: JsonLog) -> AutoencoderKL:
    """Stage C: train the decoder alone on whole images from the cached latents.

    Stage A sees crops; whole images fix the colour casts and borders that leaves, and the
    encoder (so the latent space the UNet learnt) does not change. It checkpoints every
    ``--checkpoint-every`` steps (stage ``decoder``), so ``--resume`` continues an interrupted
    one; a finished stage C is kept in ``checkpoints/vae-decoder`` and reused on resume.
    """
    folder = cfg.checkpoints / "vae-decoder"
    if cfg.decoder_steps <= 0:
        return vae
    if (folder / "config.json").exists():
        return AutoencoderKL.from_pretrained(folder, use_safetensors=True).to(device).eval().requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False).eval()
    vae.decoder.train()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    start = 0
    if resume is not None and resume.stage == "decoder":
        start = load_checkpoint(resume, {"vae": vae}, {}, optimizer)["step"]
        log.info("resuming the decoder at step %d", start)
        logger.write(stage="decoder", resumed_from=start)
    sampler = EpochSampler(len(store), cfg.decoder_batch_size, cfg.seed + 3)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    t0 = time.perf_counter()
    for step in tqdm(range(start, cfg.decoder_steps), desc="decoder", unit="step", disable=not cfg.progress):
        g = step_generator(cfg.seed, "decoder", step)
        idx = sampler.indices(step)
        mean, std = cache.mean[idx].float(), cache.std[idx].float()
        z = (mean + std * torch.randn(mean.shape, generator=g)).to(device)
        x = store.batch(idx).to(device)
        set_lr(optimizer, lr_at(step, cfg.decoder_steps, cfg.decoder_lr, min(50, cfg.decoder_steps // 10), "cosine"))
        with autocast(device, amp):
            rec = vae.decode(z).sample.float()
        loss, parts = reconstruction_loss(rec, x, cfg.vae_edge_weight, cfg.vae_colour_weight)
        _backward_step(loss, optimizer, params, cfg.grad_clip, scaler)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.decoder_steps:
            logger.write(stage="decoder", step=done, loss=loss.item(), **parts,
                         steps_per_s=(done - start) / (time.perf_counter() - t0))
        if done % cfg.checkpoint_every == 0 and done < cfg.decoder_steps:
            save_checkpoint(cfg.checkpoints, "decoder", done, {"vae": vae}, {}, optimizer,
                            _state(cfg, model_config), cfg.keep_checkpoints)
    vae.eval().requires_grad_(False)
    val_l1 = vae_preview(vae, store, cfg.checkpoints / "samples" / f"decoder-{cfg.decoder_steps:07d}.png", device)
    logger.write(stage="decoder", step=cfg.decoder_steps, preview_l1=val_l1)
    vae.save_pretrained(folder, safe_serialization=True)
    return vae


# --------------------------------------------------------------------------- stage B


def train_tokenizer(cfg: TrainConfig, model_cfg: ModelConfig, texts: list[str]) -> CLIPTokenizer:
    folder = cfg.checkpoints / "tokenizer"
    if (folder / "vocab.json").exists() and cfg.resume:
        return CLIPTokenizer.from_pretrained(folder)
    vocab = cfg.vocab_size or model_cfg.text.vocab_size
    return build_clip_tokenizer(texts, folder, vocab, model_cfg.text.max_length)


def tokenize(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """(N, max_length) input ids; warns when captions are truncated."""
    full = tokenizer(texts, padding=False, truncation=False).input_ids
    too_long = sum(len(ids) > tokenizer.model_max_length for ids in full)
    if too_long:
        log.warning("%d captions are longer than %d tokens and were truncated", too_long,
                    tokenizer.model_max_length)
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR: the min-SNR weighting for epsilon prediction."""
    if gamma <= 0:
        return torch.ones(t.shape)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return torch.clamp(snr, max=gamma) / snr


def unet_batch(cfg: TrainConfig, cache: LatentCache, uncond: torch.Tensor, sampler: EpochSampler,
               scaling: float, alphas: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    """Inputs of one step: noisy latents, timesteps, caption ids (10% dropped), target noise.

    With ``noise_offset`` the noise gets a random constant per image and channel ("offset noise").
    Without it, a model sampled from zero-mean noise keeps each latent channel's mean near zero,
    so it cannot paint an image much lighter or darker than average (a day sky comes out as dark as
    a night sky): SD's schedule leaves the image mean readable in the noisiest training inputs."""
    g = step_generator(cfg.seed, "unet", step)
    idx = sampler.indices(step)
    mean, std = cache.mean[idx].float(), cache.std[idx].float()
    z = (mean + std * torch.randn(mean.shape, generator=g)) * scaling
    t = torch.randint(0, len(alphas), (len(idx),), generator=g)
    noise = torch.randn(z.shape, generator=g)
    if cfg.noise_offset:  # per-image, per-channel constant: lets the model learn global colour
        noise = noise + cfg.noise_offset * torch.randn(z.shape[0], z.shape[1], 1, 1, generator=g)
    drop = torch.rand(len(idx), generator=g) < cfg.uncond_prob
    ids = torch.where(drop[:, None], uncond[None, :], cache.ids[idx])
    a = alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * z + (1 - a).sqrt() * noise
    return {"noisy": noisy, "t": t, "ids": ids, "noise": noise,
            "weight": snr_weights(alphas, t, cfg.snr_gamma)}


def train_unet(cfg: TrainConfig, parts: Parts, cache: LatentCache, resume: CheckpointRef | None,
               device: torch.device, amp: torch.dtype | None, logger: JsonLog, prompts: list[str]) -> dict:
    """Stage B: train UNet (+ text encoder) on cached latents; EMA weights end in ``parts``."""
    train_te = bool(cfg.train_text_encoder)
    unet, te = parts.unet.to(device).train(), parts.text_encoder.to(device)
    te.train(train_te).requires_grad_(train_te)
    unet.requires_grad_(True)
    params = list(unet.parameters()) + (list(te.parameters()) if train_te else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    emas = {"unet": EMA(unet, cfg.ema_decay)}
    if train_te:
        emas["text_encoder"] = EMA(te, cfg.ema_decay)
    modules = {"unet": unet, "text_encoder": te}
    start = 0
    if resume is not None and resume.stage == "unet":
        start = load_checkpoint(resume, modules, emas, optimizer)["step"]
        log.info("resuming the UNet at step %d", start)
        logger.write(stage="unet", resumed_from=start)
    scaling = float(parts.vae.config.scaling_factor)
    alphas = train_scheduler().alphas_cumprod.float()
    uncond = tokenize(parts.tokenizer, [""])[0]
    sampler = EpochSampler(len(cache.mean), cfg.batch_size, cfg.seed + 2)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    bar = tqdm(total=cfg.steps, initial=start, desc="UNet", unit="step", disable=not cfg.progress)
    running, t0 = None, time.perf_counter()
    for step in range(start, cfg.steps):
        b = {k: v.to(device) for k, v in unet_batch(cfg, cache, uncond, sampler, scaling, alphas, step).items()}
        set_lr(optimizer, lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.lr_schedule))
        with autocast(device, amp):
            context = te(b["ids"])[0]
            pred = unet(b["noisy"], b["t"], context).sample
        per_sample = F.mse_loss(pred.float(), b["noise"], reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * b["weight"]).mean()
        _backward_step(loss, optimizer, params, cfg.grad_clip, scaler)
        for name, ema in emas.items():
            ema.update(modules[name])
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.update()
        bar.set_postfix(loss=f"{running:.4f}")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            logger.write(stage="unet", step=done, loss=value, smoothed=running,
                         lr=optimizer.param_groups[0]["lr"],
                         steps_per_s=(done - start) / (time.perf_counter() - t0))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(cfg.checkpoints, "unet", done, modules, emas, optimizer,
                            _state(cfg, parts.model_config), cfg.keep_checkpoints)
        if cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps and cfg.samples:
            save_samples(cfg, parts, emas, prompts, cfg.checkpoints / "samples" / f"step-{done:07d}.png", device)
    bar.close()
    elapsed = time.perf_counter() - t0
    for name, ema in emas.items():
        ema.copy_to(modules[name])
    unet.eval().requires_grad_(False)
    te.eval().requires_grad_(False)
    return {"unet_steps_run": cfg.steps - start, "unet_seconds": round(elapsed, 1),
            "unet_steps_per_s": round((cfg.steps - start) / elapsed, 3) if elapsed > 0 else None}


def _state(cfg: TrainConfig, model_config: ModelConfig | None) -> dict:
    return {"config": cfg.to_json(),
            "model_config": model_config.to_dict() if model_config is not None else None}


# --------------------------------------------------------------------------- sampling


@torch.no_grad()
def save_samples(cfg: TrainConfig, parts: Parts, emas: dict[str, EMA], prompts: list[str],
                 path: Path, device: torch.device) -> Path:
    """A row of images for ``prompts`` (20 DDIM steps, CFG 7.5) with the EMA weights."""
    unet, te = copy.deepcopy(parts.unet).eval(), copy.deepcopy(parts.text_encoder).eval()
    if "unet" in emas:
        emas["unet"].copy_to(unet)
    if "text_encoder" in emas:
        emas["text_encoder"].copy_to(te)
    pipe = make_pipeline(parts.vae, te, parts.tokenizer, unet, parts.scheduler)
    pipe.set_progress_bar_config(disable=True)
    g = step_generator(cfg.seed, "sample", 0)
    images = pipe(prompts, num_inference_steps=20, guidance_scale=7.5, generator=g,
                  height=cfg.resolution, width=cfg.resolution, output_type="np").images
    row = (np.concatenate(list(images), axis=1) * 255).round().clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
    (path.with_suffix(".txt")).write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the run


def _resolve_resume(cfg: TrainConfig) -> CheckpointRef | None:
    existing = list_checkpoints(cfg.checkpoints)
    if cfg.resume:
        ref = latest_checkpoint(cfg.checkpoints)
        if ref is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", cfg.checkpoints)
        return ref
    if existing or (cfg.checkpoints / "vae").exists():
        if not cfg.overwrite:
            raise FileExistsError(f"{cfg.checkpoints} holds checkpoints: pass --resume to continue "
                                  "or --overwrite to start again")
        shutil.rmtree(cfg.checkpoints)
    return None


def unet_resume(cfg: TrainConfig, resume: CheckpointRef | None) -> CheckpointRef | None:
    """Where stage B continues from: a run stopped in stage C takes its UNet from stage B's
    last checkpoint (written at its final step)."""
    if resume is None or resume.stage != "decoder":
        return resume
    done = [r for r in list_checkpoints(cfg.checkpoints) if r.stage == "unet"]
    return done[-1] if done else None


def _model_config(cfg: TrainConfig, resume: CheckpointRef | None) -> ModelConfig:
    if resume is not None:
        state = json.loads((resume.path / "state.json").read_text(encoding="utf-8"))
        if state.get("model_config"):
            return ModelConfig.from_dict(state["model_config"])
    return apply_overrides(preset(cfg.preset), **cfg.overrides)


def load_vae(folder: Path, **config: Any) -> AutoencoderKL:
    """The VAE of a VAE folder or of an SD folder (its ``vae/``); safetensors only.
    ``config`` changes config values that leave the weights' shapes as they are
    (``norm_num_groups``)."""
    folder = Path(folder)
    source = folder / "vae" if (folder / "vae" / "config.json").exists() else folder
    if not (source / "config.json").exists():
        raise StudioError(f"no VAE in {folder}: give a VAE folder (config.json + safetensors) or an SD folder")
    return AutoencoderKL.from_pretrained(source, use_safetensors=True, **config)


def load_init(cfg: TrainConfig) -> Parts:
    """Components of an existing SD folder (for fine-tuning)."""
    pipe = StableDiffusionPipeline.from_pretrained(
        cfg.init_from, use_safetensors=True, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    return Parts(pipe.vae, pipe.tokenizer, pipe.text_encoder, pipe.unet, None, pipe.scheduler)


def build_parts(cfg: TrainConfig, model_cfg: ModelConfig, store: ImageStore, texts: list[str],
                resume: CheckpointRef | None, device: torch.device, amp: torch.dtype | None,
                logger: JsonLog) -> tuple[Parts, bool]:
    """Stage A + tokenizer + fresh text encoder and UNet; returns (parts, vae_is_new)."""
    vae_dir = cfg.checkpoints / "vae"
    vae_new = not (resume is not None and resume.stage in ("unet", "decoder") and (vae_dir / "config.json").exists())
    if vae_new and cfg.vae_from is not None:
        vae = load_vae(cfg.vae_from).to(device).eval().requires_grad_(False)
        vae.save_pretrained(vae_dir, safe_serialization=True)  # so that --resume finds it
        vae_new = False
    elif vae_new:
        vae = train_vae(cfg, model_cfg, store, resume, device, amp, logger)
    else:
        vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).to(device).eval()
    tokenizer = train_tokenizer(cfg, model_cfg, texts)
    set_seed(cfg.seed + 1)
    text_encoder = build_text_encoder(model_cfg.text, tokenizer)
    c = vae.config  # the VAE in use decides the latent shape (it may come from --vae-from)
    model_cfg.vae = VAEConfig(tuple(c.block_out_channels), c.layers_per_block, c.latent_channels,
                              c.norm_num_groups, bool(getattr(c, "mid_block_add_attention", True)))
    latent_size = cfg.resolution // 2 ** (len(c.block_out_channels) - 1)
    unet = build_unet(model_cfg.unet, latent_size, model_cfg.text.hidden_size, c.latent_channels)
    return Parts(vae, tokenizer, text_encoder, unet, model_cfg), vae_new


def save_final(cfg: TrainConfig, parts: Parts, info: dict) -> Path:
    """The diffusers folder (safetensors only) plus ``training_args.json``."""
    pipe = make_pipeline(parts.vae.to("cpu"), parts.text_encoder.to("cpu"), parts.tokenizer,
                         parts.unet.to("cpu"), parts.scheduler)
    pipe.save_pretrained(cfg.out, safe_serialization=True)
    built = cfg.checkpoints / "tokenizer"
    for name in ("vocab.json", "merges.txt"):  # the classic files too, for older transformers
        if cfg.init_from is None and (built / name).exists() and not (cfg.out / "tokenizer" / name).exists():
            shutil.copy2(built / name, cfg.out / "tokenizer" / name)
    (cfg.out / "training_args.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return cfg.out


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a whole training; returns the output folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.resolution % 8:
        raise StudioError(f"--resolution must be a multiple of 8, got {cfg.resolution}")
    if cfg.lr is None:
        cfg.lr = 1e-5 if cfg.init_from is not None else 3e-4
    if cfg.noise_offset is None:
        cfg.noise_offset = 0.0 if cfg.init_from is not None else 0.1
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.mixed_precision)
    resume = _resolve_resume(cfg)
    if resume is not None and cfg.train_text_encoder is None:  # keep the resumed run's choice
        state = json.loads((resume.path / "state.json").read_text(encoding="utf-8"))
        cfg.train_text_encoder = state.get("config", {}).get("train_text_encoder")
    if cfg.vae_only and cfg.init_from is not None:
        raise StudioError("--vae-only trains a VAE (stage A): it does not go with --init-from")
    if cfg.init_from is None and cfg.vae_steps <= 0 and resume is None:
        log.warning("--vae-steps 0: the VAE stays untrained")
    # check what the user gave before writing anything: a bad flag leaves no folders behind
    model_cfg = _model_config(cfg, resume) if cfg.init_from is None else None
    records = find_records(cfg.data)
    cfg.checkpoints.mkdir(parents=True, exist_ok=True)
    logger = JsonLog(cfg.checkpoints / "log.jsonl")
    texts = [r.text for r in records]
    store = ImageStore(records, cfg.resolution)
    t_start = time.perf_counter()
    vae_store = store
    swapped = cfg.init_from is not None and cfg.vae_from is not None  # a fine-tune onto another VAE
    if cfg.init_from is not None:
        parts, vae_new = load_init(cfg), False
        if swapped:
            parts.vae = load_vae(cfg.vae_from)
        parts.vae.to(device).eval().requires_grad_(False)
        if cfg.train_text_encoder is None:
            cfg.train_text_encoder = False
    else:
        scribbles = scribble_records(cfg.data) if cfg.vae_scribbles else []
        if cfg.vae_scribbles and not scribbles:
            raise StudioError(f"--vae-scribbles: {cfg.data} lists no scribbles (make it with make_dataset "
                              "--with-scribbles)")
        vae_store = ImageStore(records + scribbles, cfg.resolution) if scribbles else store
        parts, vae_new = build_parts(cfg, model_cfg, vae_store, texts, resume, device, amp, logger)
        if cfg.train_text_encoder is None:
            cfg.train_text_encoder = True
    cache = cached_latents(cfg, parts.vae, store, records, device)
    if (vae_new and cfg.init_from is None) or swapped:
        parts.vae.register_to_config(scaling_factor=cache.scaling_factor())
        parts.vae.save_pretrained(cfg.checkpoints / "vae", safe_serialization=True)
    if cfg.vae_only:
        parts.vae.to("cpu").save_pretrained(cfg.out / "vae", safe_serialization=True)
        info = {"config": cfg.to_json(), "vae_only": True, "images": len(records), "vae_images": len(vae_store),
                "scaling_factor": float(parts.vae.config.scaling_factor),
                "parameters": {"vae": count_params(parts.vae)}, "device": str(device),
                "seconds": round(time.perf_counter() - t_start, 1)}
        (cfg.out / "training_args.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        return cfg.out
    cache.ids = tokenize(parts.tokenizer, texts)
    prompts = texts[: cfg.samples]
    stats = train_unet(cfg, parts, cache, unet_resume(cfg, resume), device, amp, logger, prompts)
    parts.vae = finetune_decoder(cfg, parts.vae, store, cache, resume, parts.model_config, device, amp, logger)
    model_config = parts.model_config.to_dict() if parts.model_config else None
    info = {"config": cfg.to_json(), "model_config": model_config,
            "images": len(records), "scaling_factor": float(parts.vae.config.scaling_factor),
            "parameters": {k: count_params(getattr(parts, k)) for k in ("vae", "text_encoder", "unet")},
            "fp32_mb": round(fp32_megabytes(parts.vae, parts.text_encoder, parts.unet), 2),
            "device": str(device), "mixed_precision": str(amp), "torch_threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - t_start, 1), **stats}
    out = save_final(cfg, parts, info)
    if cfg.samples:
        save_samples(cfg, parts, {}, prompts, cfg.checkpoints / "samples" / "final.png", torch.device("cpu"))
    return out


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m training.train", description="Train a small SD-format model on captioned images.")
    p.add_argument("--data", type=Path, required=True, help="folder with metadata.jsonl or image+.txt pairs")
    p.add_argument("--out", type=Path, required=True, help="output model folder (diffusers format)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--preset", default="small", help="model size: micro, tiny, small")
    p.add_argument("--unet-channels", help="override, e.g. 64,128,192")
    p.add_argument("--unet-attention", help="cross-attention per UNet block, e.g. 0,1,1")
    p.add_argument("--unet-layers", type=int, help="resnets per UNet block")
    p.add_argument("--text-hidden", type=int, help="text encoder width")
    p.add_argument("--text-layers", type=int, help="text encoder depth")
    p.add_argument("--vae-channels", help="override, e.g. 32,64,128,128 (4 blocks = 8x)")
    p.add_argument("--vae-norm-groups", type=int,
                   help="override the VAE's GroupNorm groups (fewer: more channels per group, so each "
                        "image's colours are less normalised away)")
    p.add_argument("--steps", type=int, default=3000, help="UNet + text encoder steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default 3e-4, or 1e-5 with --init-from")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout for CFG")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR weighting (0: off)")
    p.add_argument("--noise-offset", type=float, default=None,
                   help="offset noise, so global colour and brightness follow the caption "
                        "(default 0.1 from scratch, 0 with --init-from)")
    p.add_argument("--vocab-size", type=int, default=None)
    te = p.add_mutually_exclusive_group()
    te.add_argument("--train-text-encoder", dest="train_text_encoder", action="store_true", default=None)
    te.add_argument("--freeze-text-encoder", dest="train_text_encoder", action="store_false")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch-size", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-crop", type=int, default=96)
    p.add_argument("--vae-kl-weight", type=float, default=1e-5)
    p.add_argument("--vae-edge-weight", type=float, default=0.5)
    p.add_argument("--vae-colour-weight", type=float, default=0.0,
                   help="weight of an L1 term between 8x8 block-mean colours (keeps region colours; try 2)")
    p.add_argument("--vae-scribbles", action="store_true",
                   help="stage A also learns the dataset's flat scribbles (make_dataset --with-scribbles)")
    p.add_argument("--vae-only", action="store_true", help="stop after stage A and save OUT/vae")
    p.add_argument("--vae-init", type=Path, default=None,
                   help="stage A continues from this VAE (VAE folder or SD folder) instead of a new one")
    p.add_argument("--decoder-steps", type=int, default=0,
                   help="stage C: decoder-only steps on whole images after the UNet (0: none)")
    p.add_argument("--decoder-batch-size", type=int, default=4)
    p.add_argument("--decoder-lr", type=float, default=1e-4)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="where checkpoints, caches and previews go (default OUT/checkpoints)")
    p.add_argument("--sample-every", type=int, default=0)
    p.add_argument("--samples", type=int, default=4, help="prompts to sample at the end (0: none)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    p.add_argument("--overwrite", action="store_true", help="discard OUT's checkpoints and start again")
    p.add_argument("--init-from", type=Path, default=None, help="fine-tune this SD folder's UNet")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="reuse a trained VAE (VAE folder or SD folder) instead of stage A; with --init-from, "
                        "the fine-tuned UNet learns this VAE's latents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                   help="auto: bf16/fp16 on CUDA, off on a CPU; bf16 also runs on a CPU (faster there "
                        "when it has AVX512-BF16 or AMX)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    args = vars(_parser().parse_args(argv))
    override_keys = ("unet_channels", "unet_attention", "unet_layers", "text_hidden", "text_layers",
                     "vae_channels", "vae_norm_groups")
    overrides = {k: args.pop(k) for k in override_keys if args.get(k) is not None}
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in names}, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    out = train(cfg)
    info = json.loads((out / "training_args.json").read_text(encoding="utf-8"))
    if info.get("vae_only"):
        print(f"saved {out / 'vae'} (trained on {info['vae_images']} images, {info['seconds']} s)")
        return out
    print(f"saved {out} ({info['fp32_mb']} MB fp32, {info['images']} images, "
          f"{info['unet_steps_per_s']} UNet steps/s, {info['seconds']} s)")
    return out


def run_cli(main_fn: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None) -> int:
    """Run a training command: a user error (bad flag value, no images, checkpoints in the way,
    a missing folder) is one line on stderr and exit code 2, not a traceback."""
    try:
        main_fn(argv)
    except (StudioError, FileExistsError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m training.train`` (see :func:`run_cli`)."""
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
