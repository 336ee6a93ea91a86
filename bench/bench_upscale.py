"""Upscaling bench: quality of the bundled upscaler against resamplers, and cost at large sizes.

    python -m bench.bench_upscale                       # quality + cost, writes bench/results/upscale.md
    python -m bench.bench_upscale --parts quality --count 24

Quality: held-out procedural paintings (dataset seed 506, never trained on) rendered at
1024 and 512 px, shrunk 4x by area averaging (256 and 128 px), enlarged back by each
upscaler; PSNR (dB, RGB) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, on
luminance) against the renders. Cost: seconds and peak extra memory (RSS growth, sampled)
of upscaling x4 to 1024x1024, 2048x2048 and 4096x1024 outputs, and of the same upscale plus
a tiled redraw (refine 0.3 of 10 steps, so 3 denoising steps, over views of the model's native
size, halves overlapping) with the given diffusion model (default: the bundled demo model).
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

from core.upscale import resolve_upscaler, upscale

from .common import psnr, write_results

QUALITY_SIZES = ((1024, 256), (512, 128))  # (high, low) sides of the held-out pairs
COST_SIZES = ((1024, 1024), (2048, 2048), (4096, 1024))  # outputs


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luminance of two uint8 RGB images (Gaussian 11x11, sigma 1.5)."""
    def luma(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def heldout_pairs(count: int, seed: int, high: int, low: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from training import procedural as P
    from training.make_dataset import item_scene

    pairs = []
    for i in range(count):
        scene, style, _ = item_scene(seed, i)
        hi = P.render_painting(scene, high, style)
        pairs.append((cv2.resize(hi, (low, low), interpolation=cv2.INTER_AREA), hi))
    return pairs


def quality_table(upscaler: str | Path | None, count: int = 24, seed: int = 506) -> dict[str, Any]:
    """{"256->1024": {name: {"psnr", "ssim"}}, "128->512": ...} for ``upscaler`` and the resamplers."""
    model = resolve_upscaler(upscaler)
    names: dict[str, str | Path] = {"bicubic": "bicubic", "lanczos": "lanczos"}
    if not isinstance(model, str):
        names = {model.stem: model, **names}
    table: dict[str, Any] = {}
    for high, low in QUALITY_SIZES:
        pairs = heldout_pairs(count, seed, high, low)
        row = {}
        for name, spec in names.items():
            outs = [np.asarray(upscale(Image.fromarray(lo), high // low, spec)) for lo, _ in pairs]
            scores = [(psnr(out, hi), ssim(out, hi)) for out, (_, hi) in zip(outs, pairs)]
            row[name] = {"psnr": round(float(np.mean([s[0] for s in scores])), 2),
                         "ssim": round(float(np.mean([s[1] for s in scores])), 4)}
        table[f"{low}->{high}"] = row
    return table


class PeakRSS:
    """Peak resident memory growth (MB) of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def megabytes(self) -> float:
        return (self.peak - self.start) / 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak MB) of one call."""
    with PeakRSS() as peak:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, peak.megabytes


def cost_row(kind: str, width: int, height: int, upscaler: str | Path | None, model: str | None = None,
             refine: float = 0.3, steps: int = 10) -> dict[str, Any]:
    """Seconds and peak memory growth of one x4 upscale (``kind`` "upscale") or upscale + redraw
    ("refine") to width x height, after a small warm-up; run it in a fresh process (see
    :func:`cost_table`) so memory an earlier size freed is not counted as reused."""
    from training import procedural as P
    from training.make_dataset import item_scene

    scene, style, _ = item_scene(506, 0)
    painting = Image.fromarray(P.render_painting(scene, 512, style))
    if kind == "upscale":
        def run(w: int, h: int) -> dict[str, float]:
            upscale(painting.resize((w // 4, h // 4), Image.Resampling.LANCZOS), 4, upscaler)
            return {}
    else:
        from core.engine import Engine
        from core.tiled_refine import UpscaleRequest

        engine = Engine.load(model=model)

        def run(w: int, h: int) -> dict[str, float]:
            request = UpscaleRequest(image=painting.resize((w // 4, h // 4), Image.Resampling.LANCZOS), scale=4,
                                     upscaler=str(upscaler or ""), refine=refine, steps=steps, seed=0,
                                     prompt="an oil painting of a landscape")
            return engine.run(request).timings
    run(256, 256)  # warm up: loading, first calls
    timings: dict[str, float] = {}
    seconds, mb = measure(lambda: timings.update(run(width, height)))
    return {"output": f"{width}x{height}", "seconds": round(seconds, 2), "peak_mb": round(mb, 1),
            **{k: round(v, 2) for k, v in timings.items()}}


def cost_table(kind: str, upscaler: str | Path | None, model: str | None = None) -> list[dict[str, Any]]:
    """:func:`cost_row` for every output size, each in its own process."""
    import json
    import subprocess
    import sys

    rows = []
    for width, height in COST_SIZES:
        command = [sys.executable, "-m", "bench.bench_upscale", "--one", f"{kind}:{width}x{height}"]
        command += ["--upscaler", str(upscaler)] if upscaler else []
        command += ["--model", model] if model else []
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def figure(upscaler: str | Path | None, model: str | None, path: Path, refine: float = 0.3) -> dict[str, Any]:
    """A strip of 256x256 crops of a demo-model painting enlarged x4 four ways (nearest, bicubic,
    the upscaler, the upscaler + redraw), labelled, written to ``path``."""
    from PIL import ImageDraw

    from core.engine import Engine
    from core.requests import GenerationRequest
    from core.tiled_refine import UpscaleRequest

    engine = Engine.load(model=model)
    prompt = "a watercolor painting of a red sun over a green field under a blue sky by day"
    source = engine.run(GenerationRequest(prompt=prompt, steps=20, seed=1)).images[0]
    ways = {"nearest (the pixels)": source.resize((source.width * 4, source.height * 4), Image.Resampling.NEAREST),
            "bicubic": upscale(source, 4, "bicubic")}
    name = resolve_upscaler(upscaler)
    name = name if isinstance(name, str) else name.stem
    ways[name] = upscale(source, 4, upscaler)
    redraw = UpscaleRequest(image=source, scale=4, upscaler=str(upscaler or ""), refine=refine, prompt=prompt,
                            steps=20, seed=1)
    ways[f"{name} + redraw {refine}"] = engine.run(redraw).images[0]
    grey = np.asarray(source.convert("L"), np.float64)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]
    windows = cv2.boxFilter(energy, -1, (64, 64), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    inside = windows[: energy.shape[0] - 63, : energy.shape[1] - 63]
    y, x = np.unravel_index(np.argmax(inside), inside.shape)
    box = (int(x) * 4, int(y) * 4, int(x) * 4 + 256, int(y) * 4 + 256)  # the 64 px of the source with most detail
    strip = Image.new("RGB", (len(ways) * 264 + 8, 292), "white")
    draw = ImageDraw.Draw(strip)
    for i, (label, image) in enumerate(ways.items()):
        strip.paste(image.crop(box), (8 + i * 264, 28))
        draw.text((8 + i * 264, 8), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)
    return {"figure": str(path.name), "prompt": prompt, "seed": 1, "crop": list(box)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_upscale", description=__doc__.splitlines()[0])
    p.add_argument("--upscaler", help="file or name (default: the bundled one)")
    p.add_argument("--count", type=int, default=24, help="held-out paintings per size")
    p.add_argument("--parts", default="quality,cost,refine,figure")
    p.add_argument("--model", help="diffusion model of the redraw (default: the bundled demo model)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # KIND:WxH, one cost row as JSON (cost_table's processes)
    args = p.parse_args()
    if args.one:
        kind, size = args.one.split(":")
        width, height = map(int, size.split("x"))
        print(json.dumps(cost_row(kind, width, height, args.upscaler, args.model)))
        return
    parts = set(args.parts.split(","))
    spec = resolve_upscaler(args.upscaler)
    repo = Path(__file__).resolve().parent.parent
    shown = spec if isinstance(spec, str) or not spec.resolve().is_relative_to(repo) else spec.resolve().relative_to(repo)
    data: dict[str, Any] = {"upscaler": str(shown)}
    lines = ["# Upscaling", "", f"`python -m bench.bench_upscale --count {args.count} --parts {args.parts}` on "
             f"{data['upscaler']}", ""]
    if "quality" in parts:
        data["quality"] = quality_table(args.upscaler, args.count)
        lines += ["| held-out paintings | upscaler | PSNR (dB) | SSIM |", "|---|---|---|---|"]
        for pair, row in data["quality"].items():
            for name, s in row.items():
                lines.append(f"| {pair} ({args.count}) | {name} | {s['psnr']:.2f} | {s['ssim']:.4f} |")
        lines.append("")
    if "cost" in parts:
        data["cost"] = cost_table("upscale", args.upscaler)
        lines += ["Each row in a fresh process after a 256 px warm-up; memory: peak growth of the resident set.", "",
                  "| output (x4) | seconds (CPU) | peak extra memory (MB) |", "|---|---|---|"]
        lines += [f"| {r['output']} | {r['seconds']} | {r['peak_mb']} |" for r in data["cost"]]
        lines.append("")
    if "refine" in parts:
        data["refine"] = cost_table("refine", args.upscaler, args.model)
        lines += ["Upscale x4 + redraw (refine 0.3 of 10 steps, sliding views of the native size, stride half):",
                  "", "| output | seconds (CPU) | upscale | encode | denoise | decode | peak extra memory (MB) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['output']} | {r['seconds']} | {r.get('upscale')} | {r.get('encode')} | {r.get('denoise')} | "
                  f"{r.get('decode')} | {r['peak_mb']} |" for r in data["refine"]]
    if "figure" in parts:
        data["figure"] = figure(args.upscaler, args.model, Path(__file__).resolve().parent / "results" / "upscale.png")
        lines += ["", "![x4 crops](upscale.png)"]
    write_results("upscale", data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
