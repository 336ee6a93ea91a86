"""Commands ``regions`` and ``panorama`` (MultiDiffusion), loaded by :mod:`core.cli`.

    python -m core regions --regions MAP.png --prompts PROMPTS.json --background-prompt P --out FILE.png
    python -m core panorama --prompt P --width 2048 --height 512 [--circular] --out FILE.png

PROMPTS.json maps a colour of the map to a prompt: {"#ff0000": "a red sun",
"#0000ff": {"prompt": "a lake", "negative": "boats", "seed": 7}, "#ffffff": null}; null
marks a background colour (transparent pixels are background too).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from PIL import Image

from .cli import add_common, add_generation, image_guidance, load_engine, run_and_save
from .errors import StudioError
from .colors import free_white
from .inputs import open_image
from .panorama import WINDOW_MODES, MultiDiffusionRequest
from .shifted_windows import SHIFTS
from .region_map import MAX_REGIONS, check_aspect, load_prompt_table, regions_from_map
from .requests import random_seed


def _multiple_of_8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def _size_from_map(image: Image.Image, width: int | None, height: int | None) -> tuple[int, int, list[str]]:
    """The canvas: the flags if both are given, else from the map's size and aspect ratio
    (rounded to multiples of 8, with a note when that changes the map's size)."""
    map_w, map_h = image.size
    if width and height:
        return width, height, []
    if width:
        return width, _multiple_of_8(width * map_h / map_w), []
    if height:
        return _multiple_of_8(height * map_w / map_h), height, []
    width, height = _multiple_of_8(map_w), _multiple_of_8(map_h)
    if (width, height) == (map_w, map_h):
        return width, height, []
    return width, height, [f"The region map is {map_w}x{map_h}; the canvas is {width}x{height} (multiples of 8)."]


def _region_args(parser: argparse.ArgumentParser, required: bool) -> None:
    """Flags of the region map and of the fusion, shared by both commands."""
    parser.add_argument("--regions", required=required, metavar="MAP.png",
                        help="region map: an image whose colours are regions")
    parser.add_argument("--prompts", required=required, metavar="PROMPTS.json",
                        help='colour -> prompt, e.g. {"#ff0000": "a red sun", "#ffffff": null}')
    parser.add_argument("--bootstrap", type=float, default=0.4,
                        help="fraction of the first steps that bootstrap regions (default 0.4: 20 of 50)")
    parser.add_argument("--soft", action="store_true", help="soft (coverage) masks instead of threshold + nearest")
    parser.add_argument("--feather", type=float, default=0.0, help="soft masks: feather sigma in latent pixels")
    parser.add_argument("--fast", action="store_true",
                        help="evaluate each region on its padded bounding box only (faster, approximate)")
    parser.add_argument("--bbox-padding", type=int, default=8, help="--fast: latent pixels of context (default 8)")
    parser.add_argument("--attention", action="store_true",
                        help="one pass: every region prompt in the same UNet call through regional cross-attention "
                             "(about text-to-image's cost; no bootstrapping)")
    parser.add_argument("--max-regions", type=int, default=MAX_REGIONS, help=f"limit (default {MAX_REGIONS})")
    parser.add_argument("--unet-batch", type=int, default=16, help="rows per UNet call (default 16)")
    parser.add_argument("--tiled-decode", action=argparse.BooleanOptionalAction, default=None,
                        help="decode tile by tile (default: automatic for large images)")


def _view_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, help="view size in latent pixels (default: the model's native "
                                                   "latent size, 64 = 512 px on SD 1.5)")
    parser.add_argument("--stride", type=int, help="view stride in latent pixels (default: window / 8)")
    parser.add_argument("--windows", choices=WINDOW_MODES, default="sliding",
                        help="sliding: MultiDiffusion's overlapping views (exact, default); shifted: SpotDiffusion's "
                             "non-overlapping windows moved every step (several times faster on wide canvases)")
    parser.add_argument("--shift", choices=SHIFTS, default="random",
                        help="--windows shifted: offsets drawn from the seed (random) or stepped by the stride (cyclic)")


def _load_map(args: argparse.Namespace) -> tuple[Image.Image | None, Any]:
    if bool(args.regions) != bool(args.prompts):
        raise StudioError("--regions and --prompts go together: give both the map and its prompts file.")
    if not args.regions:
        return None, None
    return open_image(args.regions, "Region map"), load_prompt_table(args.prompts)


def _request(args: argparse.Namespace, kind: str, prompt: str, width: int | None, height: int | None,
             regions: tuple, **extra: Any) -> MultiDiffusionRequest:
    seed = args.seed if args.seed is not None else random_seed()
    init = open_image(args.image, "Init image") if getattr(args, "image", None) else None
    return MultiDiffusionRequest(
        prompt=prompt, negative_prompt=args.negative, regions=regions, kind=kind, width=width, height=height,
        window=args.window, stride=args.stride, windows=args.windows, shift=args.shift, steps=args.steps,
        guidance_scale=args.cfg, seed=seed,
        scheduler=args.scheduler, num_images=args.num_images, init_image=init, strength=args.strength,
        bootstrap=args.bootstrap, soft_masks=args.soft, feather=args.feather, fast=args.fast,
        attention=args.attention, bbox_padding=args.bbox_padding, unet_batch=args.unet_batch,
        tiled_decode=args.tiled_decode, max_regions=args.max_regions,
        image_guidance=image_guidance(args, regions), **extra)


def _run(args: argparse.Namespace, request: MultiDiffusionRequest, notes: list[str]) -> dict[str, Any]:
    result = run_and_save(args, load_engine(args), request)
    result["warnings"] = notes + list(result.get("warnings", []))
    return result


def cmd_regions(args: argparse.Namespace) -> dict[str, Any]:
    image, table = _load_map(args)
    assert image is not None
    width, height, notes = _size_from_map(image, args.width, args.height)
    check_aspect(image.size, (width, height))
    regions, warnings = regions_from_map(image, table)
    if args.keep_colours:  # the map is also a scribble whose colours GradOP+ keeps (white stays free)
        return _run(args, _keep_colours_request(args, image, args.background_prompt, width, height, regions),
                    notes + warnings)
    request = _request(args, "regions", args.background_prompt, width, height, tuple(regions))
    return _run(args, request, notes + warnings)


def _keep_colours_request(args: argparse.Namespace, image: Image.Image, prompt: str, width: int, height: int,
                          regions: list) -> Any:
    from .stroke_guidance import stroke_request

    if getattr(args, "image", None):
        raise StudioError("--keep-colours starts from the map itself: it does not take --image.")
    if not prompt.strip():
        prompt = ", ".join(r.prompt for r in regions)  # the background ties the regions together
    seed = args.seed if args.seed is not None else random_seed()
    strokes = free_white(image)
    if strokes.size != (width, height):
        strokes = strokes.resize((width, height), Image.NEAREST)
    return stroke_request(prompt, strokes, method="gradop+", fidelity=args.fidelity, negative_prompt=args.negative,
                          width=width, height=height, steps=args.steps, guidance_scale=args.cfg, seed=seed,
                          scheduler="ddim" if args.scheduler in (None, "default") else args.scheduler,
                          num_images=args.num_images, regions=tuple(regions),
                          region_bootstrap=args.bootstrap, region_attention=args.attention,
                          max_regions=args.max_regions,
                          image_guidance=image_guidance(args, regions))


def cmd_panorama(args: argparse.Namespace) -> dict[str, Any]:
    image, table = _load_map(args)
    width, height, regions, notes = args.width, args.height, (), []
    if image is not None:
        width, height, notes = _size_from_map(image, width, height)
        check_aspect(image.size, (width, height))
        found, warnings = regions_from_map(image, table)
        regions, notes = tuple(found), notes + warnings
    request = _request(args, "panorama", args.prompt, width, height, regions, circular=args.circular)
    return _run(args, request, notes)


def _img2img_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="init image (img2img); default: text-to-image")
    parser.add_argument("--strength", type=float, default=0.75, help="img2img: 0 keeps the image, 1 ignores it")


def register(sub: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> None:
    """Add the ``regions`` and ``panorama`` commands to ``python -m core``."""
    p = sub.add_parser("regions", help="region map + per-colour prompts to image (MultiDiffusion)")
    add_generation(p, "the region map's size", prompt=False)
    p.add_argument("--background-prompt", default="", help="prompt of the background (unpainted / null colours)")
    _region_args(p, required=True)
    p.add_argument("--keep-colours", action="store_true",
                   help="also keep the map's colours in the picture (GradOP+ stroke guidance; white stays free)")
    p.add_argument("--fidelity", type=float, default=0.5,
                   help="--keep-colours: 0 ignores the colours, 1 follows them closely (default 0.5)")
    _view_args(p)
    _img2img_args(p)
    add_common(p)
    p = sub.add_parser("panorama", help="panorama of any size (MultiDiffusion), optionally with a region map")
    add_generation(p, "4x the native width by the native height")
    p.add_argument("--circular", action="store_true", help="360-degree panorama: the left and right edges meet")
    _view_args(p)
    _region_args(p, required=False)
    _img2img_args(p)
    add_common(p)
    commands.update(regions=cmd_regions, panorama=cmd_panorama)
