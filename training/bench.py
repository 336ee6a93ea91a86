"""Measure a model configuration: size, training speed and sampling speed on this machine.

    python -m training.bench --preset small --threads 2
    python -m training.bench --preset small --unet-channels 64,128,192 --only sample

Reports, as JSON: parameters and fp32 megabytes per component; UNet + text encoder
training steps/s at ``--batch-size`` (latents of resolution/8); VAE training steps/s
(``--vae-batch-size`` crops of ``--vae-crop``); VAE encoding images/s (the latent
cache); and the seconds of one ``--sample-steps`` DDIM sample with CFG at
``--resolution`` through ``StableDiffusionPipeline`` (random weights: speed only).
Times are wall-clock medians; ``cpu_s`` is the process CPU time of the same run,
which shows when other jobs were competing for the cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .tokenizer_build import build_clip_tokenizer

from . import procedural as P
from .models import (ModelConfig, apply_overrides, build_text_encoder, build_unet, build_vae, count_params,
                     make_pipeline, preset)


@dataclass
class Timing:
    wall_s: float
    cpu_s: float


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return Timing(statistics.median(walls), statistics.median(cpus))


def sample_captions(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [P.caption(P.sample_scene(i), P.STYLES[i % len(P.STYLES)], rng) for i in range(count)]


def bench_train_unet(cfg: ModelConfig, te: torch.nn.Module, latent: int, batch: int, repeats: int) -> Timing:
    unet = build_unet(cfg.unet, latent, cfg.text.hidden_size).train()
    te.train()
    opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), lr=1e-4)
    x = torch.randn(batch, 4, latent, latent)
    ids = torch.randint(0, 500, (batch, cfg.text.max_length))
    t = torch.randint(0, 1000, (batch,))

    def step() -> None:
        loss = unet(x, t, te(ids)[0]).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return measure(step, repeats)


def bench_train_vae(cfg: ModelConfig, resolution: int, batch: int, crop: int, repeats: int) -> Timing:
    vae = build_vae(cfg.vae, resolution).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, crop, crop) * 2 - 1

    def step() -> None:
        post = vae.encode(x).latent_dist
        loss = (vae.decode(post.sample()).sample - x).abs().mean() + 1e-6 * post.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return measure(step, repeats)


@torch.no_grad()
def bench_encode(cfg: ModelConfig, resolution: int, repeats: int) -> Timing:
    vae = build_vae(cfg.vae, resolution).eval()
    x = torch.rand(16, 3, resolution, resolution) * 2 - 1
    return measure(lambda: vae.encode(x).latent_dist.mean, repeats)


def bench_sample(cfg: ModelConfig, tokenizer, resolution: int, steps: int, repeats: int) -> tuple[Timing, dict]:
    vae = build_vae(cfg.vae, resolution).eval()
    te = build_text_encoder(cfg.text, tokenizer).eval()
    unet = build_unet(cfg.unet, resolution // 8, cfg.text.hidden_size).eval()
    pipe = make_pipeline(vae, te, tokenizer, unet)
    pipe.set_progress_bar_config(disable=True)

    def run() -> None:
        pipe("an oil painting of a red sun over purple mountains at sunset", num_inference_steps=steps,
             guidance_scale=7.5, height=resolution, width=resolution,
             generator=torch.Generator().manual_seed(0), output_type="np")

    sizes = {"vae": count_params(vae), "text_encoder": count_params(te), "unet": count_params(unet),
             "vae_decoder": count_params(vae.decoder)}
    with torch.no_grad():
        z = torch.randn(1, 4, resolution // 8, resolution // 8)
        decode = measure(lambda: vae.decode(z).sample, repeats)
        ids = torch.zeros(2, cfg.text.max_length, dtype=torch.long)
        unet_fwd = measure(lambda: unet(torch.randn(2, 4, resolution // 8, resolution // 8),
                                        torch.tensor([500, 500]), te(ids)[0]).sample, repeats)
    sizes["decode_s"], sizes["unet_cfg_forward_s"] = round(decode.wall_s, 4), round(unet_fwd.wall_s, 4)
    return measure(run, repeats), sizes


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Measure model size and CPU speed of a configuration.")
    p.add_argument("--preset", default="small")
    p.add_argument("--unet-channels")
    p.add_argument("--unet-attention")
    p.add_argument("--unet-layers", type=int)
    p.add_argument("--text-hidden", type=int)
    p.add_argument("--text-layers", type=int)
    p.add_argument("--vae-channels")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vae-batch-size", type=int, default=8)
    p.add_argument("--vae-crop", type=int, default=128)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=("size", "train", "vae", "sample"), default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = apply_overrides(preset(a.preset), a.unet_channels, a.unet_attention, a.unet_layers,
                          a.text_hidden, a.text_layers, a.vae_channels)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(sample_captions(300), tmp, cfg.text.vocab_size, cfg.text.max_length)
    te = build_text_encoder(cfg.text, tokenizer)
    latent = a.resolution // 8
    sizes = {"vae": count_params(build_vae(cfg.vae, a.resolution)), "text_encoder": count_params(te),
             "unet": count_params(build_unet(cfg.unet, latent, cfg.text.hidden_size))}
    report: dict = {"config": cfg.to_dict(), "threads": torch.get_num_threads(), "params": sizes,
                    "fp32_mb": round(sum(sizes.values()) * 4 / 1e6, 2)}
    if a.only in (None, "train"):
        t = bench_train_unet(cfg, te, latent, a.batch_size, a.repeats)
        report["unet_train"] = {"batch": a.batch_size, "s_per_step": round(t.wall_s, 3),
                                "steps_per_s": round(1 / t.wall_s, 3), "cpu_s": round(t.cpu_s, 3)}
    if a.only in (None, "vae"):
        t = bench_train_vae(cfg, a.resolution, a.vae_batch_size, a.vae_crop, a.repeats)
        e = bench_encode(cfg, a.resolution, max(1, a.repeats - 1))
        report["vae_train"] = {"batch": a.vae_batch_size, "crop": a.vae_crop, "s_per_step": round(t.wall_s, 3),
                               "cpu_s": round(t.cpu_s, 3)}
        report["vae_encode_images_per_s"] = round(16 / e.wall_s, 1)
    if a.only in (None, "sample"):
        t, parts = bench_sample(cfg, tokenizer, a.resolution, a.sample_steps, a.repeats)
        report["sample"] = {"steps": a.sample_steps, "cfg": True, "s": round(t.wall_s, 3),
                            "cpu_s": round(t.cpu_s, 3), **{k: v for k, v in parts.items() if k.endswith("_s")}}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
