"""Command line: ``python -m core txt2img|img2img|replay|info ...``.

User errors exit with code 2 and one line on stderr; progress bars go to stderr
(``--quiet`` silences them); ``--json`` prints a machine-readable summary on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .engine import Engine, GenerationResult
from .errors import CancelledError, StudioError
from .inputs import open_image
from .loading import LoadOptions
from .model_settings import recommended_for
from .outputs import check_output, model_record, replay, save_result
from .recipe import make_recipe, save_png
from .outputs import parameters_for
from .requests import GenerationRequest, random_seed
from .sampling import ProgressEvent
from .schedulers import SCHEDULER_NAMES

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
DEFAULT_STEPS = 30  # sampling flags' defaults for a model without recommendations
DEFAULT_CFG = 7.5
COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}
# modules with `register(subparsers, COMMANDS)` adding the guidance methods' commands


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USER_ERROR)


def file_and_number(text: str, example: str, what: str) -> tuple[str, float | None]:
    """``FILE[:NUMBER]`` -> (FILE, NUMBER or None); the number is what follows the last ':'
    after a file name with a suffix (so ``C:\\loras\\x.safetensors`` is a file)."""
    head, sep, tail = text.rpartition(":")
    if not sep or not Path(head).suffix or any(c in tail for c in "/\\"):
        return text, None
    try:
        return head, float(tail)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the {what} after ':' in {text!r} must be a number, e.g. {example}") from None


def lora_flag(text: str) -> tuple[str, float | None]:
    """``--lora FILE[:SCALE]``."""
    return file_and_number(text, "FILE.safetensors:0.8 (0 to 4)", "scale")


def weight_flag(text: str) -> tuple[str, float | None]:
    """``--image-prompt FILE[:WEIGHT]``."""
    return file_and_number(text, "painting.png:0.8 (0 to 10)", "weight")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Model, device and output-format flags shared by every command."""
    parser.add_argument("--model", help="folder, name under pretrained_models/, hub id, or .safetensors file "
                                        "(default: the bundled demo model)")
    parser.add_argument("--config", help="for a single .safetensors file: a diffusers folder with its configs")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA), fp32, fp16, bf16")
    parser.add_argument("--attention-slicing", action="store_true", help="lower memory in attention")
    parser.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    parser.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU between uses (GPU only)")
    parser.add_argument("--lora", type=lora_flag, metavar="FILE[:SCALE]",
                        help="a LoRA .safetensors file fused into the model at SCALE 0..4 (default 1), e.g. an "
                             "LCM-LoRA with --scheduler lcm --steps 4 --cfg 1.5 (default: the model's "
                             "recommendation, else none; replay: the recipe's, found where it was)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print a JSON summary (with timings) on stdout")


def add_image_prompts(parser: argparse.ArgumentParser) -> None:
    """MGAD's image prompts (core.image_prompt), shared by every generating command."""
    group = parser.add_argument_group("image prompts (MGAD CLIP guidance or IP-Adapter)")
    group.add_argument("--image-prompt", type=weight_flag, action="append", default=[], metavar="FILE[:WEIGHT]",
                       help="a reference picture whose look the result takes on (repeatable; weight 0-10, default 1)")
    group.add_argument("--image-guidance", type=float, default=None, metavar="SCALE",
                       help="strength of the image prompts: CLIP guidance's scale or the IP-Adapter's (default: "
                       "the model's recommendation, else 1; 0 turns them off)")
    group.add_argument("--image-method", default=None, choices=("clip", "ip-adapter"),
                       help="how image prompts act: clip (MGAD's CLIP guidance, any model) or ip-adapter (image "
                       "tokens in the cross-attention; default: the model's recommendation, else clip)")
    group.add_argument("--ip-adapter", default=None, metavar="FOLDER",
                       help="IP-Adapter folder, or its .safetensors beside image_encoder/ (default: the model's "
                       "recommendation, else the bundled studio-ip-adapter; implies --image-method ip-adapter)")
    group.add_argument("--clip-model", default=None, help="CLIP folder in transformers format (default: the "
                       "bundled studio-clip; e.g. pretrained_models/clip-vit-base-patch32)")
    group.add_argument("--clip-text-weight", type=float, default=None,
                       help="also pull the picture towards the prompt in CLIP space (MGAD's text prompt; default 0)")
    group.add_argument("--image-renderer", default=None, choices=("linear", "tiny", "vae"),
                       help="what CLIP sees of the predicted image: linear (fast, default), tiny decoder, vae (exact)")


def image_guidance(args: argparse.Namespace, regions: Sequence[Any] = ()) -> Any:
    """The ImageGuidance of the flags, or None without image prompts (a region of the prompts
    file with an image makes the settings apply even without --image-prompt)."""
    from .image_prompt import ImageGuidance, ImagePrompt

    regional = any(r.image_prompt is not None for r in regions)
    files = getattr(args, "image_prompt", None) or []
    text_weight = getattr(args, "clip_text_weight", None)
    if not files and not text_weight and not regional:
        for flag in ("image_guidance", "clip_model", "image_renderer", "image_method", "ip_adapter"):
            if getattr(args, flag, None) is not None:
                raise StudioError(f"--{flag.replace('_', '-')} needs an image prompt: add --image-prompt FILE.")
        return None
    prompts = tuple(ImagePrompt(open_image(path, "Image prompt"), 1.0 if weight is None else weight)
                    for path, weight in files)
    rec = recommended_for(getattr(args, "model", None))
    adapter = getattr(args, "ip_adapter", None)
    method = getattr(args, "image_method", None) or ("ip-adapter" if adapter else rec.image_method) or "clip"
    scale = args.image_guidance
    if method == "ip-adapter":
        for flag in ("clip_model", "image_renderer", "clip_text_weight"):
            if getattr(args, flag, None):
                raise StudioError(f"--{flag.replace('_', '-')} belongs to CLIP guidance, not to the IP-Adapter: "
                                  "drop it, or add --image-method clip.")
        adapter = adapter or rec.ip_adapter
        scale = rec.ip_adapter_scale if scale is None else scale
    elif adapter:
        raise StudioError("--ip-adapter needs --image-method ip-adapter (or leave --image-method out).")
    settings = {k: v for k, v in (("scale", scale), ("clip_model", args.clip_model), ("text_weight", text_weight),
                                  ("renderer", args.image_renderer), ("ip_adapter", adapter)) if v is not None}
    return ImageGuidance(prompts=prompts, method=method, **settings)


def add_generation(parser: argparse.ArgumentParser, size_default_help: str, prompt: bool = True) -> None:
    """Prompt and sampling flags shared by every generating command (``prompt=False``: no --prompt)."""
    if prompt:
        parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--width", type=int, help=f"multiple of 8 (default: {size_default_help})")
    parser.add_argument("--height", type=int, help=f"multiple of 8 (default: {size_default_help})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampling steps (default: the model's recommendation, else {DEFAULT_STEPS})")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the "
                        f"model's recommendation, else {DEFAULT_CFG})")
    parser.add_argument("--seed", type=int, help="default: random (saved in the recipe)")
    parser.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULER_NAMES)} (default: the "
                        "model's recommendation, else its own)")
    parser.add_argument("--num-images", type=int, default=1, help="variations; image i uses seed + i")
    parser.add_argument("--out", required=True, help="output .png (several images: OUT-1.png, OUT-2.png, ...)")
    add_image_prompts(parser)


def apply_recommended(args: argparse.Namespace) -> None:
    """Fill the sampling flags the person left out from the model's ``studio.json``."""
    if not hasattr(args, "steps"):
        return
    rec = recommended_for(getattr(args, "model", None))
    if args.steps is None:
        args.steps = rec.get("steps", getattr(args, "default_steps", DEFAULT_STEPS))
    if args.cfg is None:
        args.cfg = rec.get("guidance_scale", DEFAULT_CFG)
    if hasattr(args, "fidelity") and args.fidelity is None and rec.fidelity is not None:
        args.fidelity = rec.fidelity
    if getattr(args, "scheduler", "") is None:
        args.scheduler = rec.get("scheduler", getattr(args, "default_scheduler", "default"))
    if getattr(args, "lora", "") is None and rec.lora is not None:  # a LoRA named in the folder's studio.json
        args.lora = (rec.lora, rec.lora_scale)


def load_options(args: argparse.Namespace, model: str | None = None) -> LoadOptions:
    lora, scale = args.lora or (None, None)
    return LoadOptions(model=model or args.model, device=args.device, dtype=args.dtype,
                       attention_slicing=args.attention_slicing, vae_tiling=args.vae_tiling,
                       cpu_offload=args.cpu_offload, config=args.config, lora=lora,
                       lora_scale=1.0 if scale is None else scale)


def progress_bar(args: argparse.Namespace) -> tuple[Callable[[ProgressEvent], None], Callable[[], None]]:
    """A tqdm bar on stderr fed by the engine's callback (a no-op with --quiet)."""
    if args.quiet:
        return (lambda event: None), (lambda: None)
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def update(event: ProgressEvent) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            bar = bars[event.stage] = tqdm(total=event.total, desc=event.stage, file=sys.stderr, leave=False)
        bar.update(event.step - bar.n)

    return update, (lambda: [b.close() for b in bars.values()])


def load_engine(args: argparse.Namespace, model: str | None = None) -> Engine:
    if not args.quiet:
        sys.stderr.write("loading model...\n")
    return Engine.load(load_options(args, model))


def run_and_save(args: argparse.Namespace, engine: Engine, request: Any) -> dict[str, Any]:
    """Run a request with a progress bar, save its images, and summarise."""
    update, close = progress_bar(args)
    try:
        result = engine.run(request, update)
    finally:
        close()
    paths = save_result(result, engine.bundle, args.out)
    return summary(engine, result, [str(p) for p in paths])


def summary(engine: Engine, result: GenerationResult, outputs: list[str]) -> dict[str, Any]:
    timings = {"load": round(engine.load_seconds, 4), **{k: round(v, 4) for k, v in result.timings.items()}}
    timings["total"] = round(sum(timings.values()), 4)
    return {"outputs": outputs, "seeds": result.seeds, "kind": result.request.kind, **engine.info(),
            "timings": timings, "warnings": result.warnings}


def generation_request(args: argparse.Namespace, **extra: Any) -> GenerationRequest:
    seed = args.seed if args.seed is not None else random_seed()
    return GenerationRequest(prompt=args.prompt, negative_prompt=args.negative, width=args.width,
                             height=args.height, steps=args.steps, guidance_scale=args.cfg, seed=seed,
                             scheduler=args.scheduler, num_images=args.num_images,
                             image_guidance=image_guidance(args), **extra)


def cmd_txt2img(args: argparse.Namespace) -> dict[str, Any]:
    request = generation_request(args)
    return run_and_save(args, load_engine(args), request)


def cmd_img2img(args: argparse.Namespace) -> dict[str, Any]:
    request = generation_request(args, init_image=open_image(args.image), strength=args.strength)
    return run_and_save(args, load_engine(args), request)


def cmd_replay(args: argparse.Namespace) -> dict[str, Any]:
    update, close = progress_bar(args)
    try:
        image, result, engine = replay(args.file, load_options(args), update)
    finally:
        close()
    index = result.images.index(image)
    recipe = make_recipe(result.request, model_record(engine.bundle), index, result.seeds)
    path = save_png(image, args.out, recipe, parameters_for(result, engine.bundle, index))
    return summary(engine, result, [str(path)])


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from .loading import available_models, models_dir

    info = load_engine(args).info()
    return {**info, "models_dir": str(models_dir()), "available_models": available_models()}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m core", description="Sketch-to-art studio engine.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("txt2img", help="text to image")
    add_generation(p, "the model's native size")
    add_common(p)
    p = sub.add_parser("img2img", help="image + text to image (SDEdit)")
    add_generation(p, "the image's size")
    p.add_argument("--image", required=True, help="input image file")
    p.add_argument("--strength", type=float, default=0.75, help="0 keeps the image, 1 ignores it")
    add_common(p)
    p = sub.add_parser("replay", help="regenerate a saved PNG from its embedded recipe")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    add_common(p)
    p = sub.add_parser("info", help="model, device, dtype and memory options")
    add_common(p)
    COMMANDS.update(txt2img=cmd_txt2img, img2img=cmd_img2img, replay=cmd_replay, info=cmd_info)
    from . import cli_regions, cli_stroke, cli_upscale  # they import this module's helpers

    for module in (cli_regions, cli_stroke, cli_upscale):
        module.register(sub, COMMANDS)
    return parser


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.quiet or args.json:
        quiet_libraries()
    start = time.perf_counter()
    try:
        if getattr(args, "out", None) is not None:  # before any work: a bad --out is found now, not after
            check_output(args.out, min(max(getattr(args, "num_images", 1) or 1, 1), 16))
        apply_recommended(args)
        result = COMMANDS[args.command](args)
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    except (CancelledError, KeyboardInterrupt):
        sys.stderr.write("cancelled: nothing was written\n")
        return EXIT_CANCELLED
    for warning in result.get("warnings", []):
        sys.stderr.write(f"warning: {warning}\n")
    if args.json:
        result["wall_seconds"] = round(time.perf_counter() - start, 4)
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif "outputs" in result:
        sys.stdout.write("\n".join(result["outputs"]) + "\n")
    else:
        sys.stdout.write("\n".join(f"{k}: {v}" for k, v in result.items()) + "\n")
    return 0
