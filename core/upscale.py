"""Super-resolution of results: spandrel upscalers from safetensors, tiled, at any size.

An upscaler is a ``.safetensors`` file in ``pretrained_models/upscalers/`` (or any path) that
`spandrel <https://github.com/chaiNNer-org/spandrel>`_ recognises: SwinIR, Real-ESRGAN (RRDB
and Compact), HAT, OmniSR, SPAN, DAT and the rest of its registry. Weights are read with
``safetensors`` and handed to spandrel as a state dict, so nothing is ever unpickled
(``.pth``/``.ckpt`` files are refused with the way to convert them). Two resamplers,
``bicubic`` and ``lanczos``, need no file.

Inference is tiled so memory stays flat whatever the size: the image is cut into tiles of
``tile`` input pixels that overlap by ``overlap``; each tile's output is weighted by a
feathered window (nothing from the quarter of the overlap nearest an inner tile edge, where
the network sees padding, then a linear ramp; flat inside, none at the image border) and the
weighted sum is divided by the sum of weights, so seams are invisible and a model that maps
a constant image to a constant gives exactly that constant across tile borders.
A target scale the model does not have is reached by applying it repeatedly (x2 twice for
x4) and resizing the last result to the exact size with Lanczos (x4 then down to x2).
On CUDA the model runs in fp16 where spandrel says the architecture supports it.

spandrel imports ``torchvision`` for two architectures it also registers (LaMa inpainting
and RestoreFormer faces); where torchvision is absent (it is, beside the CPU build of
torch) :func:`import_spandrel` lends those two imports placeholders that raise if used, so
every super-resolution architecture loads without torchvision.
"""
from __future__ import annotations

import enum
import math
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import CancelledError, StudioError

UPSCALERS_DIR = Path(__file__).resolve().parent.parent / "pretrained_models" / "upscalers"
BUNDLED = "studio-compact-x4"  # trained by `python -m training.upscaler` on procedural paintings
RESAMPLERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
SCALES = (2, 3, 4, 8)
MAX_FILE_BYTES = 2 << 30  # an upscaler file over 2 GiB is refused before it is read
MAX_OUTPUT_PIXELS = 64 << 20  # 8192x8192: the default ceiling of an upscaled image
Progress = Callable[[int, int], bool | None]  # (done tiles, all tiles) -> False/None to go on, True to stop
_CACHE: dict[tuple[str, float, str], "Upscaler"] = {}
_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------ spandrel


def _missing_torchvision(name: str) -> Callable[..., Any]:
    def refuse(*_: Any, **__: Any) -> Any:
        raise StudioError(f"This model needs torchvision ({name}): install a torchvision that matches your torch.")
    return refuse


def import_spandrel() -> Any:
    """The ``spandrel`` module, imported with torchvision placeholders where torchvision is absent."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401
        have_torchvision = True
    except Exception:  # absent, or a build for another torch (it raises RuntimeError then)
        have_torchvision = False
    borrowed: list[str] = []
    if not have_torchvision:
        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = enum.Enum(  # type: ignore[attr-defined]
            "InterpolationMode", {"NEAREST": "nearest", "BILINEAR": "bilinear", "BICUBIC": "bicubic"})
        functional.rotate = _missing_torchvision("rotate")  # type: ignore[attr-defined]
        functional.normalize = _missing_torchvision("normalize")  # type: ignore[attr-defined]
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional  # type: ignore[attr-defined]
        package = types.ModuleType("torchvision")
        package.transforms = transforms  # type: ignore[attr-defined]
        for name, module in (("torchvision", package), ("torchvision.transforms", transforms),
                             ("torchvision.transforms.functional", functional)):
            if name not in sys.modules:
                sys.modules[name] = module
                borrowed.append(name)
    try:
        import spandrel
    except ImportError as exc:
        raise StudioError("Upscaling needs the spandrel package: pip install --no-deps 'spandrel>=0.4,<0.5' "
                          "einops (the README's setup command does).") from exc
    finally:
        for name in borrowed:  # nothing else may mistake the placeholders for torchvision
            sys.modules.pop(name, None)
    return spandrel


# ------------------------------------------------------------------------------------------ loading


def available_upscalers(folder: Path = UPSCALERS_DIR) -> list[str]:
    """Names to offer: the bundled upscaler first, then other files in ``folder``, then resamplers."""
    files = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    files.sort(key=lambda name: name != BUNDLED)
    return files + list(RESAMPLERS)


def resolve_upscaler(spec: str | Path | None, folder: Path = UPSCALERS_DIR) -> str | Path:
    """A resampler name, or the path of an upscaler file (``None``: the bundled one, else lanczos)."""
    if spec is None or spec == "":
        bundled = folder / f"{BUNDLED}.safetensors"
        return bundled if bundled.is_file() else "lanczos"
    if not isinstance(spec, (str, Path)):
        raise StudioError(f"The upscaler must be a file or a name, got {type(spec).__name__}.")
    if isinstance(spec, str) and spec.lower() in RESAMPLERS:
        return spec.lower()
    path = Path(spec)
    if not path.exists() and isinstance(spec, str) and (folder / f"{spec}.safetensors").is_file():
        path = folder / f"{spec}.safetensors"
    if path.suffix.lower() in (".pth", ".pt", ".ckpt", ".bin"):
        raise StudioError(f"{path.name} is a pickle; only .safetensors upscalers are loaded (a pickle can run "
                          "code): find a .safetensors release, or convert it (README, Upscaling).")
    if path.suffix.lower() != ".safetensors":
        raise StudioError(f"Upscaler {str(spec)!r} is neither a .safetensors file nor one of "
                          f"{', '.join(available_upscalers(folder))}.")
    if not path.is_file():
        raise StudioError(f"No upscaler file {path}: put it in {folder} or give its path.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise StudioError(f"{path.name} is {path.stat().st_size >> 20} MB, over the {MAX_FILE_BYTES >> 30} GB "
                          "limit for an upscaler.")
    return path


@dataclass
class Upscaler:
    """A loaded super-resolution network (a spandrel ``ImageModelDescriptor``)."""

    name: str
    descriptor: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    @torch.no_grad()
    def run(self, x: Tensor) -> Tensor:
        """(1, 3, h, w) in [0, 1] -> (1, 3, h*s, w*s) in [0, 1]; spandrel pads to the model's size rules."""
        out = self.descriptor(x.to(self.device, self.dtype))
        return out.float().clamp(0, 1).cpu()


def load_upscaler(path: Path, device: str | torch.device = "cpu") -> Upscaler:
    """Load (and cache) the upscaler in ``path`` (a checked ``.safetensors`` file) on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = torch.device(device)
    key = (str(path.resolve()), path.stat().st_mtime, str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise StudioError(f"{path.name} is not a readable safetensors file ({exc}).") from exc
        spandrel = import_spandrel()
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(state)
        except spandrel.UnsupportedModelError as exc:
            raise StudioError(f"{path.name} is no architecture spandrel knows (SwinIR, Real-ESRGAN, HAT, OmniSR, "
                              "SPAN, ...): use a super-resolution model's weights.") from exc
        except (KeyError, RuntimeError, ValueError, IndexError) as exc:
            raise StudioError(f"{path.name} looks like a {type(exc).__name__} to spandrel: its weights are "
                              "incomplete or of another shape than the architecture they name.") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR" \
                or descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise StudioError(f"{path.name} is a {descriptor.architecture.name} model for "
                              f"{str(descriptor.purpose).lower()}, not an RGB super-resolution one.")
        dtype = torch.float16 if device.type == "cuda" and descriptor.supports_half else torch.float32
        descriptor.to(device)
        if dtype == torch.float16:
            descriptor.half()
        descriptor.eval()
        upscaler = Upscaler(path.stem, descriptor, device, dtype)
        _CACHE.clear()  # one at a time: they can be large
        _CACHE[key] = upscaler
        return upscaler


# ------------------------------------------------------------------------------------------ tiling


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` covering [0, length) with at least ``overlap`` in common."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def feather(start: int, tile: int, total: int, overlap: int) -> Tensor:
    """1-D weights of a tile [start, start+tile) of ``total`` that overlaps its neighbours by
    ``overlap``: zero on the ``overlap // 4`` pixels at each inner edge (where a network sees
    the tile's padding instead of the image), then rising linearly over ``overlap // 2``; no
    fall-off at the image border. Two tiles that overlap by exactly ``overlap`` cross-fade
    over the same pixels, and every pixel keeps a positive weight."""
    pos = torch.arange(tile, dtype=torch.float32) + 0.5
    margin, ramp = overlap // 4, max(overlap // 2, 1)
    w = torch.ones(tile)
    if overlap > 0:
        if start > 0:
            w = torch.minimum(w, ((pos - margin) / ramp).clamp(min=0))
        if start + tile < total:
            w = torch.minimum(w, ((tile - pos - margin) / ramp).clamp(min=0))
    return w


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, scale: int, tile: int, overlap: int,
          progress: Progress | None = None) -> Tensor:
    """``fn`` ((1, C, h, w) -> (1, C, h*scale, w*scale)) over overlapping tiles of ``x``, feathered."""
    _, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    out = torch.zeros(1, c, h * scale, w * scale)
    weight = torch.zeros(1, 1, h * scale, w * scale)
    total, done = len(ys) * len(xs), 0
    columns = [feather(x0 * scale, tw * scale, w * scale, overlap * scale) for x0 in xs]
    for y in ys:
        wy = feather(y * scale, th * scale, h * scale, overlap * scale)
        for x0, wx in zip(xs, columns):
            part = fn(x[:, :, y:y + th, x0:x0 + tw])
            if part.shape[-2:] != (th * scale, tw * scale):
                raise StudioError(f"The upscaler gave {part.shape[-1]}x{part.shape[-2]} for a "
                                  f"{tw}x{th} tile, not x{scale}.")
            window = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, y * scale:(y + th) * scale, x0 * scale:(x0 + tw) * scale] += part * window
            weight[:, :, y * scale:(y + th) * scale, x0 * scale:(x0 + tw) * scale] += window
            done += 1
            if progress is not None and progress(done, total):
                raise CancelledError("Upscaling was cancelled.")
    return out / weight


# ------------------------------------------------------------------------------------------ upscaling


def to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB -> (1, 3, h, w) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)[None]


def to_image(x: Tensor) -> Image.Image:
    """(1, 3, h, w) in [0, 1] -> PIL RGB (rounded)."""
    return Image.fromarray((x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))


def check_scale(scale: Any, width: int, height: int, max_pixels: int = MAX_OUTPUT_PIXELS) -> int:
    """The scale if it is one of SCALES and the output fits ``max_pixels``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or int(scale) not in SCALES:
        raise StudioError(f"Upscale factor must be one of {', '.join(map(str, SCALES))}, got {scale!r}.")
    scale = int(scale)
    if width * height * scale * scale > max_pixels:
        raise StudioError(f"{width}x{height} x{scale} is {width * scale}x{height * scale}, over the limit of "
                          f"{max_pixels / 1e6:.1f} megapixels: use a smaller factor (or raise STUDIO_MAX_PIXELS).")
    return scale


def upscale(image: Image.Image, scale: int, upscaler: str | Path | None = None, *, device: str = "cpu",
            tile: int = 192, overlap: int = 32, progress: Progress | None = None,
            max_pixels: int = MAX_OUTPUT_PIXELS) -> Image.Image:
    """``image`` enlarged ``scale`` times by ``upscaler`` (a file, a name, a resampler; None: bundled).

    Alpha, if any, is resized with Lanczos beside the colour."""
    if not isinstance(image, Image.Image):
        raise StudioError("The image to upscale must be an image.")
    scale = check_scale(scale, image.width, image.height, max_pixels)
    if not (isinstance(tile, int) and 32 <= tile <= 4096 and isinstance(overlap, int) and 0 <= overlap < tile // 2):
        raise StudioError(f"Tile {tile!r} must be 32..4096 pixels and overlap {overlap!r} under half of it.")
    size = (image.width * scale, image.height * scale)
    spec = resolve_upscaler(upscaler)
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    rgb = image.convert("RGB")
    if isinstance(spec, str):
        out = rgb.resize(size, RESAMPLERS[spec])
    else:
        model = load_upscaler(spec, device)
        x = to_tensor(rgb)
        while x.shape[-1] < size[0] or x.shape[-2] < size[1]:
            x = tiled(model.run, x, model.scale, tile, overlap, progress)
        out = to_image(x)
        if out.size != size:
            out = out.resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        out.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
    return out
