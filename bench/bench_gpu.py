"""GPU benchmark with SD 1.5-shaped models: nothing to download, ready to run on a CUDA device.

    python -m bench.bench_gpu                 # on a CUDA machine: writes bench/results/gpu.{json,md}
    python -m bench.bench_gpu --smoke --out DIR   # tiny shapes on the CPU: checks the bench itself

Builds a UNet, VAE and CLIP text encoder with SD 1.5's published configs (860M + 84M + 123M
parameters) and random weights, saves them as a diffusers folder and loads it through the
engine like any model, in fp16. Random weights cost the same as trained ones: these are
speed and memory figures, not pictures. It reports
1. text-to-image images per second at 512x512, 50 DDIM steps (decoding included);
2. a 512x2048 panorama (window 64, stride 8: 25 views): ours exact and with shifted
   windows against diffusers' StableDiffusionPanoramaPipeline (view_batch_size 1 and 25);
3. 3 regions + background against text-to-image at 512x512: exact, fast crops, one pass;
4. GradOP+ and its fast path against text-to-image at 512x512;
5. peak GPU memory of a 512x512 image and of decoding a 512x2048 panorama, plain and with
   the low-memory switches (attention slicing, VAE tiling, CPU offload).
Times are wall seconds with CUDA synchronised, the best of ``--repeats`` after a warm-up.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_regions import (NEGATIVE, PROMPT, denoise_only, denoise_only_txt2img, diffusers_pipe,  # noqa: E402
                                 quadrant_regions)
from core.engine import Engine  # noqa: E402
from core.panorama import MultiDiffusionRequest  # noqa: E402
from core.requests import GenerationRequest  # noqa: E402
from core.stroke_guidance import StrokeRequest  # noqa: E402
from training.tiny_model import build_sd  # noqa: E402

# SD 1.5's configs (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json)
SD15 = {
    "unet": dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
    "vae": dict(sample_size=512, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                scaling_factor=0.18215),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu"),
    "text_vocab": 49408, "size": 512, "steps": 50, "smoke": False,
}
# the same layout, small enough for a CPU (the smoke test)
SMOKE = {
    "unet": dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32),
    "vae": dict(sample_size=64, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8),
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "text_vocab": None, "size": 64, "steps": 2, "smoke": True,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best wall seconds of each run over ``repeats`` interleaved rounds after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def scribble(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "#4a90e2")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, size * 5 // 8, size, size), fill="#3f9b3f")
    draw.ellipse((size // 8, size // 8, size * 3 // 8, size * 3 // 8), fill="#e53935")
    return image


def peak_memory(device: torch.device, fn: Callable[[], Any]) -> float | None:
    """Peak GPU memory (MB) allocated while ``fn`` runs, above what was allocated before."""
    if device.type != "cuda":
        fn()
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)


def bench(model: Path, shapes: dict[str, Any], device: str, repeats: int, steps: int) -> dict[str, Any]:
    size, full_steps = shapes["size"], shapes["steps"]
    engine = Engine.load(model=str(model), device=device)
    dev = engine.bundle.device
    common = dict(negative_prompt=NEGATIVE, steps=steps, seed=1, scheduler="ddim")
    t2i = GenerationRequest(prompt=PROMPT, width=size, height=size, **common)
    out: dict[str, Any] = {"dtype": str(engine.bundle.dtype), "size": size, "steps": steps,
                           "parameters_m": {name: round(sum(p.numel() for p in getattr(engine.bundle, name)
                                                            .parameters()) / 1e6, 1)
                                            for name in ("unet", "vae", "text_encoder")}}

    # 1. images per second, the full default: 50 steps with decoding
    full = GenerationRequest(prompt=PROMPT, width=size, height=size, **{**common, "steps": full_steps})
    seconds = best_of({"t2i": lambda: engine.generate(full)}, repeats, dev)["t2i"]
    out["text_to_image"] = {"steps": full_steps, "seconds": seconds, "images_per_second": 1 / seconds}

    # 2. panorama 4 windows wide: 25 sliding views at SD's window 64 / stride 8
    window = int(engine.bundle.unet.config.sample_size)
    pano = dict(prompt=PROMPT, kind="panorama", width=4 * size, height=size, window=window,
                stride=max(1, window // 8), **common)
    pipe = diffusers_pipe(engine, window, max(1, window // 8))
    views = (4 * window - window) // max(1, window // 8) + 1

    def theirs(vb: int) -> Callable[[], Any]:
        return lambda: pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=4 * size, num_inference_steps=steps,
                            guidance_scale=7.5, generator=torch.Generator(dev).manual_seed(1), view_batch_size=vb,
                            output_type="latent").images

    runs = {f"diffusers view_batch_size={vb}": theirs(vb) for vb in ((views,) if shapes["smoke"] else (1, views))}
    runs |= {"ours exact": lambda: denoise_only(engine, MultiDiffusionRequest(**pano, unet_batch=2 * views)),
            "ours shifted windows": lambda: denoise_only(engine, MultiDiffusionRequest(**pano, windows="shifted"))}
    times = best_of(runs, repeats, dev)
    best = min(t for n, t in times.items() if n.startswith("diffusers"))
    out["panorama"] = {"canvas": [4 * size, size], "views": views, "seconds": times,
                       "speedup_vs_best_diffusers": {n: best / t for n, t in times.items() if n.startswith("ours")}}

    # 3. regions: 3 quarters + the background
    regions = quadrant_regions(size)
    reg = dict(prompt=PROMPT, regions=regions, width=size, height=size, window=window, **common)
    runs = {"text-to-image": lambda: denoise_only_txt2img(engine, t2i),
            "regions exact": lambda: denoise_only(engine, MultiDiffusionRequest(**reg)),
            "regions fast": lambda: denoise_only(engine, MultiDiffusionRequest(**reg, fast=True)),
            "regions one pass": lambda: denoise_only(engine, MultiDiffusionRequest(**reg, attention=True))}
    times = best_of(runs, repeats, dev)
    out["regions"] = {"seconds": times, "vs_text_to_image": {n: t / times["text-to-image"] for n, t in times.items()}}

    # 4. stroke guidance, decoding included on every side
    strokes = scribble(size)
    runs = {"text-to-image": lambda: engine.generate(t2i),
            "GradOP+": lambda: engine.run(StrokeRequest(prompt=PROMPT, strokes=strokes, **common)),
            "GradOP+ fast": lambda: engine.run(StrokeRequest(prompt=PROMPT, strokes=strokes, fast=True, **common))}
    times = best_of(runs, repeats, dev)
    out["stroke"] = {"seconds": times, "vs_text_to_image": {n: t / times["text-to-image"] for n, t in times.items()}}
    return out


def memory_rows(model: Path, device: str, size: int, steps: int, smoke: bool = False
                ) -> dict[str, dict[str, float | None]]:
    """Peak memory of one image and of a 4-windows-wide panorama, per low-memory setting."""
    settings: dict[str, dict[str, bool]] = {"plain": {}}
    if not smoke:
        settings |= {"attention slicing": {"attention_slicing": True},
                     "attention slicing + VAE tiling": {"attention_slicing": True, "vae_tiling": True},
                     "all three + CPU offload": {"attention_slicing": True, "vae_tiling": True, "cpu_offload": True}}
    rows: dict[str, dict[str, float | None]] = {}
    for name, options in settings.items():
        engine = Engine.load(model=str(model), device=device, **options)
        dev = torch.device(device if device != "cuda" else "cuda:0")
        image = GenerationRequest(prompt=PROMPT, width=size, height=size, steps=steps, scheduler="ddim")
        pano = MultiDiffusionRequest(prompt=PROMPT, kind="panorama", width=4 * size, height=size, steps=steps,
                                     scheduler="ddim", tiled_decode=options.get("vae_tiling", False))
        rows[name] = {"image": peak_memory(dev, lambda: engine.generate(image)),
                      "panorama": peak_memory(dev, lambda: engine.run(pano))}
        engine = None  # free this setting's models before loading the next
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(results: dict[str, Any]) -> str:
    r = results["results"]
    t = r["text_to_image"]
    lines = [f"# GPU benchmark: {results['device']}", "",
             f"`{results['command']}`: SD 1.5-shaped models with random weights ({r['dtype']}; millions of "
             f"parameters: {', '.join(f'{k} {v}' for k, v in r['parameters_m'].items())}), "
             f"{r['size']}x{r['size']}, DDIM, CFG 7.5; best of {results['repeats']} after a warm-up, wall seconds "
             f"with CUDA synchronised; {r['steps']} steps unless said.", "",
             f"## Text-to-image\n\n**{t['images_per_second']:.2f} images/s** ({t['seconds']:.2f} s an image, "
             f"{t['steps']} steps, decoding included).", ""]
    p = r["panorama"]
    lines += [f"## Panorama {p['canvas'][0]}x{p['canvas'][1]} ({p['views']} sliding views), denoising only", "",
              "| run | seconds | speed-up vs diffusers' best |", "|---|---|---|"]
    speedups = p["speedup_vs_best_diffusers"]
    lines += [f"| {n} | {s:.2f} | {f'{speedups[n]:.2f}x' if n in speedups else ''} |" for n, s in p["seconds"].items()]
    for part, title in (("regions", "3 regions + background vs text-to-image, denoising only"),
                        ("stroke", "Stroke guidance vs text-to-image, decoding included")):
        q = r[part]
        lines += ["", f"## {title}", "", "| run | seconds | vs text-to-image |", "|---|---|---|"]
        lines += [f"| {n} | {s:.2f} | {q['vs_text_to_image'][n]:.2f}x |" for n, s in q["seconds"].items()]
    lines += ["", "## Peak memory (MB above the loaded models)", "", "| setting | one image | panorama |",
              "|---|---|---|"]
    for name, row in r["memory_mb"].items():
        cells = ["n/a" if v is None else f"{v:.0f}" for v in (row["image"], row["panorama"])]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the bench runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps of the comparisons (default 20)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.smoke:
        shapes, device, steps, repeats = SMOKE, "cpu", 2, 1
    else:
        if not torch.cuda.is_available():
            print("bench_gpu needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False): run it "
                  "on a GPU machine, or add --smoke for a tiny run on the CPU that checks the bench itself.",
                  file=sys.stderr)
            return 2
        shapes, device, steps, repeats = SD15, args.device, args.steps, args.repeats
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_sd(Path(tmp) / "sd15-shaped", unet=shapes["unet"], vae=shapes["vae"], text=shapes["text"],
                         text_vocab=shapes["text_vocab"])
        results = bench(model, shapes, device, repeats, steps)
        gc.collect()
        results["memory_mb"] = memory_rows(model, device, shapes["size"], steps, smoke=shapes["smoke"])
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU (smoke: tiny shapes)"
    report = {"device": name, "torch": torch.__version__, "repeats": repeats,
              "command": "python -m bench.bench_gpu" + (" --smoke" if args.smoke else ""),
              "seconds": round(time.perf_counter() - started, 1), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
