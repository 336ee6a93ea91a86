"""Requests: frozen dataclasses validated on construction (one-line errors that say the fix)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from .errors import StudioError
from .schedulers import canonical_scheduler_name
from .vae_codec import require_multiple_of

DEFAULT_MAX_PIXELS = int(os.environ.get("STUDIO_MAX_PIXELS", 4096 * 2048))  # per image
MAX_SEED = 2**32 - 1


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise StudioError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}.")


def check_side(name: str, value: int | None) -> None:
    """An optional output width/height: at least 8 and a multiple of 8."""
    if value is not None:
        if value < 8:
            raise StudioError(f"{name.capitalize()} must be at least 8 pixels, got {value}.")
        require_multiple_of(value, name.capitalize())


def check_pixels(width: int | None, height: int | None, max_pixels: int) -> None:
    if width and height and width * height > max_pixels:
        raise StudioError(f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}: "
                          "choose a smaller size (or raise STUDIO_MAX_PIXELS).")


def check_sampling(request: Any) -> None:
    """The settings every generating request shares: steps, guidance, seed, images, strength."""
    if not isinstance(request.prompt, str):
        raise StudioError("The prompt must be text.")
    check_range("Steps", request.steps, 1, 1000)
    check_range("Guidance scale", request.guidance_scale, 0, 50)
    check_range("Seed", request.seed, 0, MAX_SEED)
    check_range("Number of images", request.num_images, 1, 16)
    check_range("Strength", request.strength, 0, 1)


@dataclass(frozen=True)
class GenerationRequest:
    """Text-to-image, or img2img (SDEdit, Meng et al. 2022) when ``init_image`` is given."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None  # None: the init image's width, else the model's native size
    height: int | None = None
    steps: int = 30  # scheduler steps for the full schedule (img2img runs strength * steps)
    guidance_scale: float = 7.5  # classifier-free guidance w; <= 1 disables the unconditional pass
    seed: int = 0  # image i of a batch uses seed + i
    scheduler: str = "default"  # default (the model's own), ddim, euler, euler_a, dpmpp_2m, lcm
    num_images: int = 1
    init_image: Image.Image | None = field(default=None, compare=False)
    strength: float = 0.75  # img2img: fraction of the schedule re-run from the noised input
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger images (memory and time)

    def __post_init__(self) -> None:
        check_side("width", self.width)
        check_side("height", self.height)
        check_pixels(self.width, self.height, self.max_pixels)
        check_sampling(self)
        object.__setattr__(self, "scheduler", canonical_scheduler_name(self.scheduler))

    @property
    def kind(self) -> str:
        return "img2img" if self.init_image is not None else "txt2img"

    def settings(self) -> dict[str, Any]:
        """Every field but images, for recipes and logs."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "init_image"}
