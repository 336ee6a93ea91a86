"""Command ``upscale`` (super-resolution, then an optional tiled redraw), loaded by :mod:`core.cli`.

    python -m core upscale IMAGE --scale 4 [--upscaler FILE] [--refine STRENGTH] [--prompt P] --out OUT.png

The redraw's prompt (and region prompts) default to those in IMAGE's recipe, when it has one.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from .cli import add_common, load_engine, run_and_save
from .inputs import open_image
from .requests import random_seed
from .panorama import WINDOW_MODES
from .schedulers import SCHEDULER_NAMES
from .tiled_refine import UpscaleRequest, source_settings
from .upscale import SCALES, UPSCALERS_DIR, available_upscalers, resolve_upscaler


def upscaler_name(spec: str | None) -> str:
    """What the recipe records: a resampler, the name of a file in the upscalers folder, else its path."""
    resolved = resolve_upscaler(spec)
    if isinstance(resolved, str):
        return resolved
    return resolved.stem if resolved.parent.resolve() == UPSCALERS_DIR.resolve() else str(resolved)


def cmd_upscale(args: argparse.Namespace) -> dict[str, Any]:
    image = open_image(args.image)
    notes: list[str] = []
    prompt, negative, regions = args.prompt, args.negative, ()
    if prompt is None:  # the recipe's prompts travel with the image (and guide a redraw)
        found, notes = source_settings(args.image)
        prompt, regions = found.get("prompt"), found.get("regions", ())
        negative = negative if negative is not None else found.get("negative_prompt")
        notes = notes if args.refine > 0 else []
    request = UpscaleRequest(
        image=image, scale=args.scale, upscaler=upscaler_name(args.upscaler), refine=args.refine,
        prompt=prompt or "", negative_prompt=negative or "", regions=regions, steps=args.steps,
        guidance_scale=args.cfg, seed=args.seed if args.seed is not None else random_seed(),
        scheduler=args.scheduler, window=args.window, stride=args.stride, windows=args.windows, tile=args.tile,
        overlap=args.overlap)
    result = run_and_save(args, load_engine(args), request)
    result["warnings"] = notes + list(result.get("warnings", []))
    return result


def register(sub: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> None:
    """Add ``upscale`` to ``python -m core``."""
    p = sub.add_parser("upscale", help="enlarge an image (super-resolution), optionally redrawn by the model")
    p.add_argument("image", metavar="IMAGE", help="PNG or JPEG to enlarge (its recipe gives the redraw's prompt)")
    p.add_argument("--scale", type=int, default=4, choices=SCALES, help="factor (default 4)")
    p.add_argument("--upscaler", help=f"a .safetensors file or a name in {Path('pretrained_models/upscalers')}, "
                                      f"or bicubic / lanczos (default: the bundled one; now: "
                                      f"{', '.join(available_upscalers())})")
    p.add_argument("--refine", type=float, default=0.0,
                   help="redraw strength 0..1 over tiles of the model's native size (default 0: no redraw)")
    p.add_argument("--prompt", help="the redraw's prompt (default: the image's recipe's)")
    p.add_argument("--negative", help="the redraw's negative prompt (default: the recipe's)")
    p.add_argument("--steps", type=int, default=None, help="full schedule; the redraw runs steps x refine")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, help="default: random (saved in the recipe)")
    p.add_argument("--scheduler", help=f"one of {', '.join(SCHEDULER_NAMES)} (default: the model's "
                                       "recommendation, else its own)")
    p.add_argument("--window", type=int, help="redraw view in latent pixels (default: the model's native size)")
    p.add_argument("--stride", type=int, help="redraw view stride in latent pixels (default: half the window)")
    p.add_argument("--windows", choices=WINDOW_MODES, default="sliding",
                   help="sliding (MultiDiffusion) or shifted (faster: each pixel once per step)")
    p.add_argument("--tile", type=int, default=192, help="super-resolution tile in input pixels (default 192)")
    p.add_argument("--overlap", type=int, default=32, help="overlap of those tiles (default 32)")
    p.add_argument("--out", required=True, help="output .png")
    add_common(p)
    commands.update(upscale=cmd_upscale)
