"""``python -m core stroke``: scribble + prompt -> image (GradOP+, GradOP, SDEdit).

    python -m core stroke --model M --strokes SCRIBBLE.png --prompt P [--method gradop+|gradop|sdedit]
        [--fast] [--fidelity F] [--strength F --iterative-steps N --grad-steps N --lr F]
        [--words WORDS.json | --prompts PROMPTS.json] [--width W --panorama [--circular]] --out FILE.png

The output size defaults to the scribble's. WORDS.json maps a colour of the scribble to
words of the prompt: ``{"#3050e0": "river", "#a0a0a0": ["castle", "stone walls"]}``;
PROMPTS.json gives colours their own prompts instead. ``--panorama`` with a ``--width`` larger
than the model's size makes a scribble-guided panorama (the scribble is stretched to it);
``--circular`` makes it 360 degrees (the left and right edges meet).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from PIL import Image

from .cli import add_common, add_generation, image_guidance, load_engine, run_and_save
from .errors import StudioError
from .inputs import open_image, read_json_file
from .panorama import WINDOW_MODES
from .region_map import load_prompt_table, regions_from_map
from .requests import DEFAULT_MAX_PIXELS, check_pixels, check_side, random_seed
from .stroke_guidance import METHODS, RENDERERS, WORDS_EXAMPLE, stroke_request, word_pairs


def read_words(path: str | None) -> dict[str, Any]:
    """The WORDS.json mapping, or StudioError saying what is wrong with the file."""
    if not path:
        return {}
    data = read_json_file(path, "Words file", WORDS_EXAMPLE)
    if not isinstance(data, dict) or not data:
        raise StudioError(f"Words file {path} must map colours to words, e.g. {WORDS_EXAMPLE}.")
    try:
        word_pairs(data)
    except StudioError as exc:
        raise StudioError(f"Words file {path}: {exc}") from None
    return data


def cmd_stroke(args: argparse.Namespace) -> dict[str, Any]:
    """Build the request (fidelity first, explicit flags win), run it and save with its recipe."""
    strokes = open_image(args.strokes, "Scribble")
    seed = args.seed if args.seed is not None else random_seed()
    regions, notes = (), []
    if args.panorama:  # the scribble stretched to the panorama's canvas, as the app's panorama width does
        check_side("width", args.width)
        check_side("height", args.height)
        size = (args.width or strokes.width, args.height or strokes.height)
        if size != strokes.size:
            check_pixels(*size, DEFAULT_MAX_PIXELS)
            strokes = strokes.resize(size, Image.NEAREST)
    if args.prompts:  # each listed colour of the scribble gets its own prompt (MultiDiffusion)
        found, notes = regions_from_map(strokes, load_prompt_table(args.prompts), unlisted="background")
        regions = tuple(found)
    request = stroke_request(
        args.prompt, strokes, method=args.method, fidelity=args.fidelity, words=read_words(args.words),
        negative_prompt=args.negative, width=args.width, height=args.height, steps=args.steps,
        guidance_scale=args.cfg, seed=seed, scheduler=args.scheduler, num_images=args.num_images,
        strength=args.strength, iterative_steps=args.iterative_steps, grad_steps=args.grad_steps, lr=args.lr,
        gamma=args.gamma, blur_sigma=args.blur_sigma, blur_kernel=args.blur_kernel, fast=args.fast or None,
        refine_steps=args.refine_steps, word_weight=args.word_weight, regions=regions,
        region_attention=args.region_attention, renderer=args.renderer, panorama=args.panorama,
        windows=args.windows, circular=args.circular or None,
        image_guidance=image_guidance(args, regions),
    )
    result = run_and_save(args, load_engine(args), request)
    result["warnings"] = notes + list(result.get("warnings", []))
    return result


def register(subparsers: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> None:
    """Add the ``stroke`` command (called by core.cli.build_parser)."""
    p = subparsers.add_parser("stroke", help="scribble + text to image (GradOP+, GradOP, SDEdit)")
    add_generation(p, "the scribble's size")
    p.set_defaults(default_scheduler="ddim", default_steps=50)  # the reference's 50 DDIM steps
    p.add_argument("--strokes", required=True, help="scribble PNG; transparent pixels do not constrain the output")
    p.add_argument("--method", default="gradop+", choices=METHODS, help="default: gradop+")
    p.add_argument("--fast", action="store_true", help="loss through the model's tiny decoder or the fitted "
                                                       "latent->RGB map (--renderer), never the full decoder")
    p.add_argument("--renderer", choices=RENDERERS, default="auto",
                   help="--fast: auto (the tiny decoder where the model has one, else linear), tiny, linear")
    p.add_argument("--fidelity", type=float, help="0 ignores the scribble, 1 follows it closely (0.5: reference)")
    p.add_argument("--strength", type=float, help="gradop+: guidance start; gradop: t0; sdedit: img2img strength")
    p.add_argument("--iterative-steps", type=int, help="gradop+: guided steps (default 3)")
    p.add_argument("--grad-steps", type=int, help="Adam steps per guided step (gradop+: 12; gradop: 40)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 0.1)")
    p.add_argument("--gamma", type=float, help="gradop: weight of the distance to the text-only sample")
    p.add_argument("--blur-sigma", type=float, help="painting blur sigma at 512 px (default 7, scaled with size)")
    p.add_argument("--blur-kernel", type=int, help="painting blur kernel at 512 px (odd, default 35)")
    p.add_argument("--refine-steps", type=int, help="--fast: true-decoder Adam steps at the end (default 0)")
    p.add_argument("--words", help="JSON file mapping '#rrggbb' colours of the scribble to words of the prompt")
    p.add_argument("--word-weight", type=float, help="strength w of the words' attention bias (default 0.4)")
    p.add_argument("--prompts", help="PROMPTS.json mapping '#rrggbb' colours of the scribble to their own prompts "
                                     "(region prompts by MultiDiffusion; --prompt is the background's)")
    p.add_argument("--region-attention", action="store_true",
                   help="--prompts: every region prompt in one UNet pass (regional attention) instead of fusion")
    p.add_argument("--panorama", action="store_true",
                   help="a wide canvas (--width several times the model's size): denoise it in MultiDiffusion's "
                        "windows of the model's native size, as a panorama, instead of in one piece")
    p.add_argument("--windows", choices=WINDOW_MODES, default="sliding",
                   help="--panorama or --prompts: sliding (MultiDiffusion's overlapping windows, exact) or shifted "
                        "(SpotDiffusion's non-overlapping windows moved every step: faster on wide canvases)")
    p.add_argument("--circular", action="store_true",
                   help="--panorama or --prompts: a 360-degree picture, whose left and right edges meet")
    add_common(p)
    commands["stroke"] = cmd_stroke
