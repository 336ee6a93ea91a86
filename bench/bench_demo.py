"""The bundled demo model on this machine: size on disk and seconds per 256x256 image.

    python -m bench.bench_demo [--threads 2] [--repeats 5]

One 256x256 image, 20 steps, classifier-free guidance 7.5 (two UNet rows per step), through
the studio engine (what the app and CLI run, fp32 on a CPU), the engine in bf16 (``--dtype bf16``;
how far its picture is from fp32's, in PSNR) and diffusers' StableDiffusionPipeline alone, timed
side by side (median after a warm-up). Target: at most 1.5 s on a 2-core CPU (issue #11).
Writes bench/results/demo.{json,md}.
"""
from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from bench.common import psnr, time_side_by_side, write_results
from core.engine import Engine
from core.loading import DEFAULT_MODEL_NAME, models_dir
from core.requests import GenerationRequest
from training.train import cpu_has_bf16

PROMPT = "an oil painting of a red sun over purple mountains at sunset"
SIZE, STEPS, GUIDANCE = 256, 20, 7.5
TARGET_S = 1.5  # seconds for one such image (issue #11)


def folder_megabytes(folder) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = models_dir() / DEFAULT_MODEL_NAME
    engine = Engine.load(model=str(folder), device="cpu")
    engine_bf16 = Engine.load(model=str(folder), device="cpu", dtype="bf16")
    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    request = GenerationRequest(prompt=PROMPT, width=SIZE, height=SIZE, steps=STEPS, guidance_scale=GUIDANCE, seed=0)
    times = time_side_by_side({
        "engine": lambda: engine.generate(request),
        "engine bf16": lambda: engine_bf16.generate(request),
        "diffusers": lambda: pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                                  guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0)),
    }, args.repeats)
    fp32, bf16 = (np.asarray(e.generate(request).images[0]) for e in (engine, engine_bf16))
    bf16_psnr = psnr(fp32, bf16)
    data = {"model": str(folder), "megabytes": round(folder_megabytes(folder), 2), "size": SIZE, "steps": STEPS,
            "guidance": GUIDANCE, "threads": args.threads, "repeats": args.repeats,
            "seconds": {k: round(v, 3) for k, v in times.items()}, "target_s": TARGET_S,
            "bf16_psnr_db": round(bf16_psnr, 1), "cpu_bf16": cpu_has_bf16(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
    table = "\n".join([
        "| model | MB on disk | image | steps, CFG | engine fp32 (s) | engine bf16 (s) | diffusers alone (s) "
        "| bf16 against fp32 | target |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {DEFAULT_MODEL_NAME} | {data['megabytes']} | {SIZE}x{SIZE} | {STEPS}, {GUIDANCE} | "
        f"{times['engine']:.2f} | {times['engine bf16']:.2f} | {times['diffusers']:.2f} | {bf16_psnr:.1f} dB PSNR "
        f"| <= {TARGET_S:g} s |",
    ])
    write_results("demo", data, table)
    print(table)


if __name__ == "__main__":
    main()
