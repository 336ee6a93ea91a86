"""Requests: frozen dataclasses validated on construction (one-line errors that say the fix).

The ``check_*`` helpers below are the one place types and ranges are checked; every request
class (here, in stroke_guidance, panorama and region_map) calls them from ``__post_init__``.
Whole-number fields must be ints (``bool`` is not one); number fields may be ints or floats.
"""
from __future__ import annotations

import numbers
import os
import random
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from .errors import StudioError
from .image_prompt import ImageGuidance
from .inputs import MAX_INPUT_PIXELS, check_image_size
from .schedulers import canonical_scheduler_name
from .vae_codec import require_multiple_of

DEFAULT_MAX_PIXELS = int(os.environ.get("STUDIO_MAX_PIXELS", 4096 * 2048))  # per image
MAX_SEED = 2**32 - 1  # seeds are 0..MAX_SEED everywhere (CLI, app, recipes)
MAX_SIDE = 65536  # pixels per side (the pixel limit binds long before)
LIMIT = "limit"  # field metadata key: a local limit that recipes may lower but never raise


def limit_field(default: int) -> Any:
    """A dataclass field holding a local limit (its default); see core.recipe."""
    return field(default=default, metadata={LIMIT: True})


def show(value: Any) -> str:
    """A value for an error message: its repr, shortened (floats as %g)."""
    try:
        text = f"{value:g}" if isinstance(value, float) else repr(value)
    except ValueError:  # an int of thousands of digits
        text = f"a {type(value).__name__} too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    """A whole number in [lo, hi]."""
    if not is_int(value):
        raise StudioError(f"{name} must be a whole number, got {show(value)}.")
    if not lo <= value <= hi:
        raise StudioError(f"{name} must be between {lo:g} and {hi:g}, got {show(value)}.")


def check_range(name: str, value: Any, lo: float, hi: float) -> None:
    """A number (int or float, not NaN) in [lo, hi]."""
    if not is_number(value):
        raise StudioError(f"{name} must be a number, got {show(value)}.")
    if value != value or not lo <= value <= hi:  # NaN is not between anything
        raise StudioError(f"{name} must be between {lo:g} and {hi:g}, got {show(value)}.")


def check_text(name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        raise StudioError(f"{name} must be text, got {show(value)}.")


def check_flag(name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        raise StudioError(f"{name} must be true or false, got {show(value)}.")


def check_image(name: str, value: Any, optional: bool = False) -> None:
    """A PIL image within the input size limit (files are opened with core.inputs.open_image)."""
    if value is None and optional:
        return
    if not isinstance(value, Image.Image):
        raise StudioError(f"{name} must be a PIL image (open a file with core.inputs.open_image), got {show(value)}.")
    check_image_size(value.size, name, MAX_INPUT_PIXELS)


def check_side(name: str, value: Any) -> None:
    """An optional output width/height: a whole number, at least 8 and a multiple of 8."""
    if value is not None:
        if not is_int(value):
            raise StudioError(f"{name.capitalize()} must be a whole number of pixels, got {show(value)}.")
        if value < 8:
            raise StudioError(f"{name.capitalize()} must be at least 8 pixels, got {show(value)}.")
        if value > MAX_SIDE:
            raise StudioError(f"{name.capitalize()} must be at most {MAX_SIDE} pixels, got {show(value)}.")
        require_multiple_of(value, name.capitalize())


def random_seed() -> int:
    """A fresh seed in the one seed range."""
    return random.randint(0, MAX_SEED)


def check_pixels(width: int | None, height: int | None, max_pixels: Any) -> None:
    check_int("The pixel limit (max_pixels)", max_pixels, 64, 2**40)
    if width and height and width * height > max_pixels:  # (both checked by check_side first)
        raise StudioError(f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}: "
                          "choose a smaller size (or raise STUDIO_MAX_PIXELS).")


def check_sampling(request: Any) -> None:
    """The settings every generating request shares (:class:`Sampling`): prompts, steps, guidance,
    seed, number of images, scheduler (canonicalised here)."""
    check_text("The prompt", request.prompt)
    check_text("The negative prompt", request.negative_prompt)
    check_int("Steps", request.steps, 1, 1000)
    check_range("Guidance scale", request.guidance_scale, 0, 50)
    check_int("Seed", request.seed, 0, MAX_SEED)
    check_int("Number of images", request.num_images, 1, 16)
    object.__setattr__(request, "scheduler", canonical_scheduler_name(request.scheduler))


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """The settings every generating request shares. Each request class adds its method's own
    fields (and may change a default by declaring a field again, keyword-only); ``prompt`` is the
    one positional field. Checked in ``__post_init__``: a subclass calls ``super().__post_init__()``."""

    prompt: str = field(kw_only=False)  # the prompt (a region request's: the background's)
    negative_prompt: str = ""
    width: int | None = None  # None: the request's own default (an input image's, else the model's native size)
    height: int | None = None
    steps: int = 30  # scheduler steps of the full schedule
    guidance_scale: float = 7.5  # classifier-free guidance w; <= 1 disables the unconditional pass
    seed: int = 0  # image i of a batch uses seed + i
    scheduler: str = "default"  # default (the model's own), ddim, euler, euler_a, dpmpp_2m, lcm
    num_images: int = 1
    max_pixels: int = limit_field(DEFAULT_MAX_PIXELS)  # refuse larger images (memory and time)
    image_guidance: ImageGuidance | None = None  # image prompts (MGAD CLIP guidance, core.image_prompt)

    def __post_init__(self) -> None:
        if self.image_guidance is not None and not isinstance(self.image_guidance, ImageGuidance):
            raise StudioError("image_guidance must be a core.image_prompt.ImageGuidance (image prompts and scale), "
                              f"got {show(self.image_guidance)}.")
        check_side("width", self.width)
        check_side("height", self.height)
        check_pixels(self.width, self.height, self.max_pixels)
        check_sampling(self)

    def sampling(self) -> dict[str, Any]:
        """The shared settings as keyword arguments, to build another request with them."""
        return {f.name: getattr(self, f.name) for f in fields(Sampling)}

    def settings(self) -> dict[str, Any]:
        """Every field but images and regions (recorded apart), for recipes and logs."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_SETTINGS}


NOT_SETTINGS = ("init_image", "strokes", "regions", "image_guidance")  # fields a recipe records apart from the settings


@dataclass(frozen=True, kw_only=True)
class GenerationRequest(Sampling):
    """Text-to-image, or img2img (SDEdit, Meng et al. 2022) when ``init_image`` is given."""

    init_image: Image.Image | None = field(default=None, compare=False)  # None: text-to-image
    strength: float = 0.75  # img2img: fraction of the schedule re-run from the noised input (steps * strength)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("Strength", self.strength, 0, 1)
        check_image("The init image", self.init_image, optional=True)

    @property
    def kind(self) -> str:
        return "img2img" if self.init_image is not None else "txt2img"
