"""Our text-to-image loop vs diffusers' StableDiffusionPipeline: same model, prompt, seed, steps.

    python -m bench.bench_engine [--repeats 5]

Prints and writes bench/results/engine.{json,md}: median seconds per image (prompt encoding,
denoising and decoding to PIL on both sides), the ratio ours / diffusers (target <= 1.05), and
the max difference of the final latents (should be 0).
"""
from __future__ import annotations

import argparse
import platform
from typing import Any

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from bench.common import bench_model, time_side_by_side, write_results
from core.engine import Engine
from core.requests import GenerationRequest

CONFIGS = {  # name -> (model config, image size, steps)
    "tiny 64px": (dict(), 64, 20),
    "small 256px": (dict(image_size=256, unet_channels=(64, 128, 256), cross_attention_dim=256), 256, 10),
}


def bench_config(name: str, config: dict, size: int, steps: int, repeats: int) -> dict:
    folder = bench_model(name.replace(" ", "-"), **config)
    engine = Engine.load(model=str(folder), device="cpu")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompt = "an oil painting of a river with boats at sunset"
    request = GenerationRequest(prompt=prompt, width=size, height=size, steps=steps, seed=1, scheduler="ddim")

    def run_theirs(output_type: str) -> Any:
        return pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(1), output_type=output_type).images

    def ours() -> Any:
        return engine.generate(request).images  # decoded to PIL, as diffusers' default output

    def theirs() -> Any:
        return run_theirs("pil")

    diff = (engine.generate(request).latents - run_theirs("latent")).abs().max().item()
    times = time_side_by_side({"ours": ours, "diffusers": theirs}, repeats)
    return {"config": name, "size": size, "steps": steps, "ours_s": times["ours"],
            "diffusers_s": times["diffusers"], "ratio": times["ours"] / times["diffusers"], "max_latent_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [bench_config(name, cfg, size, steps, args.repeats) for name, (cfg, size, steps) in CONFIGS.items()]
    lines = ["| model | size | DDIM steps | ours (s) | diffusers (s) | ratio ours/diffusers | max latent diff |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['size']} | {r['steps']} | {r['ours_s']:.3f} | {r['diffusers_s']:.3f} | "
              f"{r['ratio']:.3f} | {r['max_latent_diff']:.1e} |" for r in rows]
    table = "\n".join(lines)
    meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "repeats": args.repeats}
    write_results("engine", {"meta": meta, "rows": rows}, table)
    print(table)


if __name__ == "__main__":
    main()
