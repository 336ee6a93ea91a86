"""Benchmark MultiDiffusion (regions and panoramas) side by side, on the tiny model, on CPU.

    python -m bench.bench_regions            # ~2-3 minutes on 2 busy CPU cores
    python -m bench.bench_regions --quick    # one round, smoke test

Writes bench/results/regions.json and bench/results/regions.md. Three figures:
1. panorama, "512x2048-equivalent": 25 views (window = the model's native size, stride =
   window / 8, canvas 4 windows wide: SD's 64 / 8 on 64x256 latents, scaled to the tiny
   model's 8-latent native size, and once more at 2x that), ours vs diffusers'
   StableDiffusionPanoramaPipeline at view_batch_size 1, 5 and 25, same DDIM steps and seed;
   equal latents are checked;
2. three regions of a quarter of the canvas each + background (the fourth quarter) vs plain
   text-to-image on the same canvas (256x256 px: 32x32 latents, fast padding 4 = SD's 8 at
   64x64), exact and fast, and the reference's way (every prompt's uncond + cond on the
   whole view, x_{t-1} fused per view);
3. peak memory of decoding a 4096x512 panorama with and without tiled VAE decoding (a fresh
   subprocess each, peak RSS reset just before decoding).
Times are CPU seconds on one thread (steadier than wall time on a shared machine), the best
of ``--repeats`` interleaved rounds after a warm-up round; the UNet work per step is also
reported (it does not depend on load at all).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.engine import Engine  # noqa: E402
from core.panorama import MultiDiffusionRequest, decode_canvas, fusion_eps_fn, fusion_setup  # noqa: E402
from core.prompts import PromptEncoder  # noqa: E402
from core.shifted_windows import shifted_views  # noqa: E402
from core.region_map import Region  # noqa: E402
from core.requests import GenerationRequest  # noqa: E402
from training.tiny_model import build_tiny_sd  # noqa: E402

PROMPT, NEGATIVE = "a castle on a hill, dramatic clouds", "blurry, low quality"
SHIFTED = "ours shifted windows (SpotDiffusion)"
ONE_PASS = "regions (one pass, regional attention)"


def tiny_model(folder: Path) -> Path:
    """The tiny SD with SD 1.x's DDIM setting clip_sample=false."""
    build_tiny_sd(folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "clip_sample": False}))
    return folder


def best_of(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best CPU time (one thread) of each run over ``repeats`` interleaved rounds after a warm-up
    round (first calls build kernels for new shapes), and each run's last output."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, Any] = {}
    for round_ in range(repeats + 1):
        for name, fn in runs.items():
            start = time.process_time()
            outputs[name] = fn()
            if round_:
                times[name].append(time.process_time() - start)
    return {name: min(ts) for name, ts in times.items()}, outputs


# --- 1. panorama -------------------------------------------------------------------------------


def diffusers_pipe(engine: Engine, window: int, stride: int) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline

    b = engine.bundle
    pipe = StableDiffusionPanoramaPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                                           scheduler=DDIMScheduler.from_config(b.scheduler_config), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    get_views = pipe.get_views  # its own views; it just does not expose window and stride
    pipe.get_views = lambda h, w, window_size=64, stride_=8, circular_padding=False: get_views(
        h, w, window_size=window, stride=stride, circular_padding=circular_padding)
    return pipe


def bench_panorama(engine: Engine, latent_h: int, window: int, steps: int, repeats: int,
                   view_batches: tuple[int, ...], our_batches: tuple[int, ...]) -> dict[str, Any]:
    stride, latent_w = window // 8, 4 * latent_h
    width, height = 8 * latent_w, 8 * latent_h
    pipe = diffusers_pipe(engine, window, stride)
    n_views = (latent_w - window) // stride + 1

    def theirs(vb: int) -> Callable[[], torch.Tensor]:
        return lambda: pipe(PROMPT, negative_prompt=NEGATIVE, height=height, width=width, num_inference_steps=steps,
                            guidance_scale=7.5, generator=torch.Generator().manual_seed(3), view_batch_size=vb,
                            output_type="latent").images

    def ours(batch: int, windows: str = "sliding") -> Callable[[], torch.Tensor]:
        request = MultiDiffusionRequest(prompt=PROMPT, negative_prompt=NEGATIVE, kind="panorama", width=width,
                                        height=height, window=window, stride=stride, steps=steps, seed=3,
                                        scheduler="ddim", unet_batch=batch, windows=windows)
        return lambda: denoise_only(engine, request)

    runs = {f"diffusers view_batch_size={vb}": theirs(vb) for vb in view_batches}
    runs.update({f"ours unet_batch={b}": ours(b) for b in our_batches})
    runs[SHIFTED] = ours(max(our_batches), "shifted")
    times, outputs = best_of(runs, repeats)
    best_theirs = min((t, n) for n, t in times.items() if n.startswith("diffusers"))
    best_ours = min((t, n) for n, t in times.items() if n.startswith("ours unet"))
    reference = outputs["diffusers view_batch_size=1"]
    tiles = len(shifted_views(latent_h, latent_w, window, (3, 3), False))  # at any offset but 0
    return {
        "canvas_px": [width, height], "latent": [latent_h, latent_w], "window": window, "stride": stride,
        "views": n_views, "steps": steps, "unet_rows_per_step": 2 * n_views, "seconds": times,
        "shifted_tiles": tiles, "shifted_unet_rows_per_step": 2 * tiles,
        "shifted_speedup_vs_best_view_batch": best_theirs[0] / times[SHIFTED],
        "max_abs_latent_diff_vs_diffusers": max(float((o - reference).abs().max()) for n, o in outputs.items()
                                                if n != SHIFTED),
        "speedup_vs_view_batch_1": times["diffusers view_batch_size=1"] / best_ours[0],
        "speedup_vs_best_view_batch": best_theirs[0] / best_ours[0],
        "best_diffusers": best_theirs[1], "best_ours": best_ours[1],
    }


def denoise_only(engine: Engine, request: MultiDiffusionRequest) -> torch.Tensor:
    """Run a request without decoding (diffusers' side returns latents too)."""
    from core import panorama

    original = panorama.decode_canvas
    panorama.decode_canvas = lambda vae, latents, *a, **k: torch.zeros(latents.shape[0], 3, 8, 8)
    try:
        return engine.run(request).latents
    finally:
        panorama.decode_canvas = original


# --- 2. regions --------------------------------------------------------------------------------


def quadrant_regions(size: int) -> tuple[Region, ...]:
    """Three regions, each a quarter of the canvas; the background is the fourth quarter."""
    half = size // 2
    masks = []
    for top, left in ((0, 0), (0, half), (half, 0)):
        mask = torch.zeros(size, size)
        mask[top : top + half, left : left + half] = 1
        masks.append(mask)
    prompts = ("a red sun", "a white moon", "a lake at night")
    return tuple(Region(m, p, name=f"region {i}") for i, (m, p) in enumerate(zip(masks, prompts)))


def random_backgrounds(engine: Engine, count: int, size: int) -> torch.Tensor:
    """The reference's bootstrapping backgrounds: constant random colours, VAE-encoded at full size
    (its code notes this can be done once, outside generation: it is not timed here)."""
    rgb = torch.rand(count, 3, 1, 1, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vae = engine.bundle.vae
    with torch.no_grad():
        return torch.cat([vae.encode(c[None].expand(1, 3, size, size)).latent_dist.mean for c in rgb]) \
            * vae.config.scaling_factor


@torch.no_grad()
def reference_regions(engine: Engine, regions: tuple[Region, ...], size: int, steps: int, bootstrap: float,
                      backgrounds: torch.Tensor) -> torch.Tensor:
    """The reference implementation's way (omerbt/MultiDiffusion region_based.py): per view, every
    prompt's uncond + cond in one UNet batch on the whole view, one DDIM step per prompt, fused in x."""
    from core.region_map import background_weight, latent_masks
    from core.schedulers import make_scheduler

    b = engine.bundle
    encoder = PromptEncoder(b.tokenizer, b.text_encoder, b.device)
    prompts = [PROMPT] + [r.prompt for r in regions]
    embeds = torch.cat([encoder(NEGATIVE)] * len(prompts) + [encoder(p) for p in prompts])
    _, fg, _ = latent_masks(list(regions), (size, size), 8)
    masks = torch.stack([background_weight(fg, fg[0].shape)] + fg)[:, None]  # (P, 1, h, w)
    scheduler = make_scheduler("ddim", b.scheduler_config)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, size // 8, size // 8), generator=g)
    noise = latent.clone().repeat(len(prompts) - 1, 1, 1, 1)
    n_boot = int(bootstrap * steps)
    model_fn = engine.model_fn(scheduler)
    for i, t in enumerate(scheduler.timesteps):  # one view: the canvas is one window
        latent_view = latent.repeat(len(prompts), 1, 1, 1)
        if i < n_boot:
            bg = backgrounds[torch.randint(0, n_boot, (len(prompts) - 1,), generator=g)]
            bg = scheduler.add_noise(bg, noise, t)
            latent_view[1:] = latent_view[1:] * masks[1:] + bg * (1 - masks[1:])
        eps_u, eps_c = model_fn(torch.cat([latent_view] * 2), t, embeds).chunk(2)
        eps = eps_u + 7.5 * (eps_c - eps_u)
        denoised = scheduler.step(eps, t, latent_view)["prev_sample"]
        latent = (denoised * masks).sum(0, keepdim=True) / masks.sum(0, keepdim=True)
    return latent


def bench_regions(engine: Engine, size: int, steps: int, padding: int, repeats: int) -> dict[str, Any]:
    regions = quadrant_regions(size)
    common = dict(negative_prompt=NEGATIVE, width=size, height=size, steps=steps, seed=1, scheduler="ddim")
    # one view, as SD 1.5's regions on its native 512x512 canvas: the tiny model's native window
    # (8 latents) would otherwise slide over the 32x32 canvas in 625 views
    view = dict(window=size // 8)
    exact = MultiDiffusionRequest(prompt=PROMPT, regions=regions, **common, **view)
    fast = MultiDiffusionRequest(prompt=PROMPT, regions=regions, fast=True, bbox_padding=padding, **common, **view)
    one_pass = MultiDiffusionRequest(prompt=PROMPT, regions=regions, attention=True, **common, **view)
    backgrounds = random_backgrounds(engine, int(exact.bootstrap * steps), size)
    runs = {
        "text-to-image": lambda: denoise_only_txt2img(engine, GenerationRequest(prompt=PROMPT, **common)),
        "regions (exact)": lambda: denoise_only(engine, exact),
        f"regions (fast, bbox padding {padding})": lambda: denoise_only(engine, fast),
        ONE_PASS: lambda: denoise_only(engine, one_pass),
        "regions, the reference's way": lambda: reference_regions(engine, regions, size, steps, exact.bootstrap,
                                                                  backgrounds),
    }
    times, _ = best_of(runs, repeats)
    base = times["text-to-image"]
    work = {name: unet_pixels(engine, request, steps) for name, request in
            (("regions (exact)", exact), (f"regions (fast, bbox padding {padding})", fast))}
    latent_pixels = (size // 8) ** 2
    work["text-to-image"] = 2.0
    work[ONE_PASS] = 2.0  # one UNet call of CFG's two rows; only the cross-attention keys grow
    work["regions, the reference's way"] = 2.0 * (len(regions) + 1)
    return {
        "canvas_px": [size, size], "regions": len(regions), "steps": steps, "bootstrap_steps": int(exact.bootstrap * steps),
        "seconds": times, "time_vs_text_to_image": {n: t / base for n, t in times.items()},
        "unet_work_vs_text_to_image": {n: w / 2.0 for n, w in work.items()},
        "latent_pixels": latent_pixels,
    }


def unet_pixels(engine: Engine, request: MultiDiffusionRequest, steps: int) -> float:
    """UNet rows per step (full-canvas equivalents), averaged over bootstrapping and later steps."""
    from core.schedulers import make_scheduler

    b = engine.bundle
    size = (request.width, request.height)
    setup = fusion_setup(engine, request, PromptEncoder(b.tokenizer, b.text_encoder, b.device), size)
    fusion = fusion_eps_fn(engine, request, make_scheduler("ddim", b.scheduler_config), setup, None)
    canvas = (size[0] // 8) * (size[1] // 8)
    n_boot = int(request.bootstrap * steps)
    boot, later = fusion.plan(True).pixels() / canvas, fusion.plan(False).pixels() / canvas
    return (n_boot * boot + (steps - n_boot) * later) / steps


def denoise_only_txt2img(engine: Engine, request: GenerationRequest) -> torch.Tensor:
    original = engine.decode
    engine.decode = lambda latents, tiled=None: []  # type: ignore[method-assign]
    try:
        return engine.generate(request).latents
    finally:
        engine.decode = original  # type: ignore[method-assign]


# --- 3. decode memory ----------------------------------------------------------------------------


def _vm(key: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def decode_probe(model: str, tiled: bool) -> dict[str, float]:
    """In a fresh process: how far the peak RSS rises above the resident size while decoding a
    4096x512 panorama (the peak is reset just before, via /proc/self/clear_refs)."""
    torch.set_num_threads(1)
    engine = Engine.load(model=model, device="cpu")
    vae = engine.bundle.vae
    vae.tile_sample_min_size, vae.tile_latent_min_size = 512, 64  # SD's 512-px tiles
    latents = torch.randn(1, 4, 64, 512, generator=torch.Generator().manual_seed(0))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _vm("VmRSS")
    start = time.process_time()
    image = decode_canvas(vae, latents, 8, tiled=tiled)
    seconds = time.process_time() - start
    assert image.shape == (1, 3, 512, 4096)
    return {"peak_rss_increase_mb": round(_vm("VmHWM") - before, 1), "cpu_seconds": round(seconds, 2)}


# --- 4. seams, on the bundled model -----------------------------------------------------------


def column_jumps(image: Any) -> Any:
    """Mean |I[:, x] - I[:, x - 1]| over rows and channels, for x = 1..width-1 (pixels in [0, 1])."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return np.abs(np.diff(pixels, axis=1)).mean(axis=(0, 2))


SEAM_MODES = {"sliding (exact, stride window/8)": {"windows": "sliding"},
              "fixed tiles (stride = window)": {"windows": "sliding", "stride": "window"},
              "shifted (SpotDiffusion, random)": {"windows": "shifted"}}


def seam_request(engine: Engine, mode: str, prompt: str, seed: int, steps: int) -> MultiDiffusionRequest:
    """A 4-windows-wide panorama of ``SEAM_MODES[mode]`` on ``engine``'s model."""
    native, factor = engine.bundle.native_size, engine.bundle.vae_scale_factor
    extra = dict(SEAM_MODES[mode])
    if extra.get("stride") == "window":
        extra["stride"] = native // factor
    return MultiDiffusionRequest(prompt=prompt, negative_prompt=NEGATIVE, kind="panorama", width=4 * native,
                                 height=native, steps=steps, seed=seed, scheduler="ddim", **extra)


def seam_score(engine: Engine, request: MultiDiffusionRequest, image: Any) -> float:
    """The mean column jump at window borders over the mean column jump of the whole image (1 = no seam).

    Borders: for fixed tiles (stride = window, the naive baseline) their edges; for shifted
    windows the edges of the LAST step's tiling (earlier ones are denoised over); for exact
    sliding windows the fixed tiles' edges (they are not special for it: its reference).
    """
    from core.schedulers import make_scheduler
    from core.shifted_windows import step_offsets

    b = engine.bundle
    factor, window = b.vae_scale_factor, b.native_size // b.vae_scale_factor
    width, height = request.width, request.height
    borders = [x * factor for x in range(window, width // factor, window)]
    if request.windows == "shifted":
        scheduler = make_scheduler("ddim", b.scheduler_config, steps=request.steps)
        offsets = step_offsets(scheduler.timesteps, window, request.shift, request.seed, max(1, window // 8))
        last = offsets[float(scheduler.timesteps[-1])]
        tiles = shifted_views(height // factor, width // factor, window, last, request.circular)
        borders = [v.left * factor for v in tiles[1:]]
    jumps = column_jumps(image)
    return float(jumps[[x - 1 for x in borders]].mean() / jumps.mean())


SEAM_PROMPTS = ["a watercolor painting of a mountain lake at sunset", "an oil painting of a forest by day",
                "a pastel drawing of a city skyline at night", "a painting of rolling green hills under a blue sky"]


def bench_seams(model: str, seeds: int, steps: int) -> dict[str, Any]:
    """Seam score (:func:`seam_score`) of each window mode on the bundled model over ``seeds`` seeds."""
    import numpy as np

    engine = Engine.load(model=model, device="cpu")
    scores: dict[str, list[float]] = {m: [] for m in SEAM_MODES}
    seconds: dict[str, float] = {m: 0.0 for m in SEAM_MODES}
    for seed in range(seeds):
        for name in SEAM_MODES:
            request = seam_request(engine, name, SEAM_PROMPTS[seed % len(SEAM_PROMPTS)], seed, steps)
            start = time.process_time()
            image = engine.run(request).images[0]
            seconds[name] += time.process_time() - start
            scores[name].append(seam_score(engine, request, image))
    native = engine.bundle.native_size
    return {"model": Path(model).name, "canvas_px": [4 * native, native],
            "window": native // engine.bundle.vae_scale_factor, "steps": steps,
            "seeds": seeds, "seam_score": {m: float(np.mean(v)) for m, v in scores.items()},
            "seam_score_max": {m: float(np.max(v)) for m, v in scores.items()},
            "cpu_seconds_per_image": {m: seconds[m] / seeds for m in SEAM_MODES}}


def seams_markdown(seams: dict[str, Any]) -> list[str]:
    lines = [f"## Seams: {seams['canvas_px'][0]}x{seams['canvas_px'][1]} px panoramas on the bundled model "
             f"({seams['model']}), {seams['steps']} DDIM steps, {seams['seeds']} seeds", "",
             "Seam score: the mean colour jump between neighbouring pixel columns at window borders over that of "
             "the whole image (1.0 = borders look like any other column; higher = visible seams).", "",
             "| windows | seam score (mean) | worst seed | CPU seconds per image |", "|---|---|---|---|"]
    for m, v in seams["seam_score"].items():
        lines.append(f"| {m} | {v:.2f} | {seams['seam_score_max'][m]:.2f} | "
                     f"{seams['cpu_seconds_per_image'][m]:.1f} |")
    return lines + [""]


def bench_decode(model: Path) -> dict[str, Any]:
    out = {}
    for tiled in (False, True):
        proc = subprocess.run([sys.executable, __file__, "--decode-probe", "tiled" if tiled else "full",
                               "--model", str(model)], capture_output=True, text=True, check=True)
        out["tiled" if tiled else "not tiled"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"image_px": [4096, 512], "vae_tile_px": 512, **out}


# --- report ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    lines = ["# MultiDiffusion benchmark (tiny model, CPU)", "",
             f"`python -m bench.bench_regions` -- {results['machine']}. Times are CPU seconds on one thread, the best "
             f"of {results['repeats']} interleaved runs after a warm-up round (the machine was shared, so CPU time "
             "is steadier than wall time).", ""]
    for pano in results["panorama"]:
        lines += [f"## Panorama: {pano['latent'][0]}x{pano['latent'][1]} latents ({pano['canvas_px'][0]}x"
                  f"{pano['canvas_px'][1]} px), window {pano['window']}, stride {pano['stride']}: {pano['views']} views, "
                  f"{pano['steps']} DDIM steps", "", "| run | CPU seconds |", "|---|---|"]
        lines += [f"| {n} | {t:.3f} |" for n, t in pano["seconds"].items()]
        lines += ["", f"ours vs diffusers view_batch_size=1: **{pano['speedup_vs_view_batch_1']:.2f}x** faster; vs its "
                  f"best ({pano['best_diffusers']}): **{pano['speedup_vs_best_view_batch']:.2f}x**; max |latent "
                  f"difference| {pano['max_abs_latent_diff_vs_diffusers']:.1e} (sliding windows, the exact method).",
                  "", f"Shifted windows (`--windows shifted`): {pano['shifted_tiles']} tiles a step instead of "
                  f"{pano['views']} views ({pano['shifted_unet_rows_per_step']} UNet rows against "
                  f"{pano['unet_rows_per_step']}): **{pano['shifted_speedup_vs_best_view_batch']:.2f}x** faster than "
                  f"diffusers at its best view_batch_size.", ""]
    reg = results["regions"]
    lines += [f"## 3 regions (a quarter each) + background vs text-to-image, {reg['canvas_px'][0]}x{reg['canvas_px'][1]} "
              f"px, {reg['steps']} DDIM steps ({reg['bootstrap_steps']} bootstrapping)", "",
              "| run | CPU seconds | time vs text-to-image | UNet work vs text-to-image |", "|---|---|---|---|"]
    lines += [f"| {n} | {t:.3f} | {reg['time_vs_text_to_image'][n]:.2f}x | {reg['unet_work_vs_text_to_image'][n]:.2f}x |"
              for n, t in reg["seconds"].items()]
    dec = results["decode"]
    if "seams" in results:
        lines += [""] + seams_markdown(results["seams"])
    lines += ["", "## Peak memory, decoding a 4096x512 panorama (tiny VAE, 512-px tiles as SD's)", "",
              "| decode | peak RSS increase (MB) | CPU seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['peak_rss_increase_mb']} | {v['cpu_seconds']} |" for k, v in dec.items() if isinstance(v, dict)]
    lines += ["", "Peak memory: a fresh subprocess per row resets its peak RSS (`/proc/self/clear_refs`), decodes, "
              "and reports VmHWM minus the RSS just before decoding (torch's CPU allocations are outside tracemalloc).",
              "", "## Notes", "",
              "- Panorama: ours and diffusers run the same UNet rows (uncond + cond per view per step); diffusers "
              "with view_batch_size = all views also makes one UNet call per step, so against its best setting "
              "only loop overhead differs. Our gains over its default (view_batch_size 1) come from batching by "
              "default; beyond speed, our views cover widths that are not multiples of the stride (diffusers "
              "leaves those columns at zero), circular panoramas work at any height, and several images pair "
              "their CFG halves correctly.",
              "- Regions, exact: after bootstrapping, one unconditional pass is shared by every prompt with the "
              "same negative prompt (4 prompts: 5 rows instead of 8); during bootstrapping each region's input "
              "differs, so it needs its own unconditional pass (8 rows).",
              "- Regions, fast (`fast=True`, `--fast`): each prompt runs on the bounding box of its weight, "
              "grown by `bbox_padding` latent pixels. The trade-off: a region's content is generated without "
              "seeing the canvas beyond that box (weaker global coherence of lighting, scale and perspective) "
              "and the UNet sees zero padding at the box edge, which the padding keeps away from the masked "
              "pixels. It is exact for a pointwise model (the analytic tests); with a real UNet it is an "
              "approximation whose visual cost this tiny random model cannot measure: check it on real weights.",
              "- Regions, one pass (`attention=True`, `--attention`): every prompt's tokens in one cross-attention "
              "per layer, each pixel weighting a prompt by its mask (`core/regional_attention.py`): text-to-image's "
              "UNet rows; what remains is the longer cross-attention (4 x 77 keys here). How well it keeps the "
              "region colours: `bench/results/quality.md`.",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer settings")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--seams", type=int, default=0, metavar="SEEDS",
                        help="also measure seams of each window mode on the bundled model over SEEDS seeds")
    parser.add_argument("--seams-only", action="store_true",
                        help="only the seams (added to the existing regions.json and regions.md)")
    parser.add_argument("--seam-steps", type=int, default=20)
    parser.add_argument("--decode-probe", choices=("full", "tiled"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_probe:
        print(json.dumps(decode_probe(args.model, args.decode_probe == "tiled")))
        return
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    repeats = 1 if args.quick else args.repeats
    out = Path(args.out)
    demo = str(ROOT / "pretrained_models" / "studio-demo")
    if args.seams_only:
        results = json.loads((out / "regions.json").read_text())
        results["seams"] = bench_seams(demo, max(1, args.seams), args.seam_steps)
        print("\n".join(seams_markdown(results["seams"])))
        (out / "regions.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "regions.md").write_text(markdown(results))
        return
    torch.set_num_threads(1)  # steady CPU time (no spinning worker threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny-sd")
        engine = Engine.load(model=str(model), device="cpu")
        started = time.perf_counter()
        panoramas = [bench_panorama(engine, 8, 8, 4, repeats, (1, 5, 25), (64,))]
        if not args.quick:  # a second geometry, less dominated by per-call overhead
            panoramas.append(bench_panorama(engine, 16, 16, 3, repeats, (1, 5, 25), (16, 64)))
        regions = bench_regions(engine, 256, 5, 4, repeats)
        decode = bench_decode(model)
    results = {"machine": f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}",
               "repeats": repeats, "panorama": panoramas, "regions": regions, "decode": decode,
               "bench_seconds": round(time.perf_counter() - started, 1)}
    if args.seams:
        results["seams"] = bench_seams(demo, args.seams, args.seam_steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "regions.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "regions.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
