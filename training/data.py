"""Captioned image folders: find (image, caption) pairs, load images as tensors.

A folder is read either from ``metadata.jsonl`` (the ``imagefolder`` convention: one
JSON object per line with ``file_name`` and ``text``; ``caption`` or ``prompt`` are
accepted for ``text``) or, without it, from every image with a ``.txt`` file of the
same name beside it (images without one get an empty caption).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from core.errors import StudioError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TEXT_KEYS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class Record:
    """One training example: an image file and its caption."""

    path: Path
    text: str


def _from_metadata(folder: Path, meta: Path) -> list[Record]:
    records = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if "file_name" not in item:
            raise StudioError(f"{meta}:{number}: no 'file_name': every line needs the image's file name")
        text = next((str(item[k]) for k in TEXT_KEYS if k in item), "")
        records.append(Record(folder / item["file_name"], text))
    return records


def _from_text_files(folder: Path) -> list[Record]:
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = path.with_suffix(".txt")
        if not txt.exists():
            log.warning("no caption for %s: using an empty caption", path)
        records.append(Record(path, txt.read_text(encoding="utf-8").strip() if txt.exists() else ""))
    return records


def find_records(folder: str | Path) -> list[Record]:
    """All (image, caption) pairs of a folder; raises if there are none or files are missing."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    records = _from_metadata(folder, meta) if meta.exists() else _from_text_files(folder)
    if not records:
        raise FileNotFoundError(f"no captioned images in {folder}")
    missing = [r.path for r in records if not r.path.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed but missing, e.g. {missing[0]}")
    return records


def scribble_records(folder: str | Path) -> list[Record]:
    """The flat scribbles a dataset made ``--with-scribbles`` lists (metadata ``scribble``),
    as uncaptioned records; none for other folders."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.exists():
        return []
    lines = (json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip())
    records = [Record(folder / str(item["scribble"]), "") for item in lines if item.get("scribble")]
    missing = [r.path for r in records if not r.path.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} scribbles listed but missing, e.g. {missing[0]}")
    return records


def fingerprint(records: list[Record], resolution: int) -> str:
    """A short hash of the file list, sizes, captions and resolution (for caches)."""
    h = hashlib.sha1(str(resolution).encode())
    for r in records:
        h.update(f"{r.path.name}\0{r.path.stat().st_size}\0{r.text}\n".encode())
    return h.hexdigest()[:16]


def load_image(path: Path, resolution: int) -> np.ndarray:
    """An RGB uint8 (resolution, resolution, 3) array: shorter side resized, centre crop."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image {path}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    scale = resolution / min(h, w)
    if scale != 1.0:
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    h, w = img.shape[:2]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return np.ascontiguousarray(img[top:top + resolution, left:left + resolution])


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Stack uint8 HWC images into a float (N, 3, H, W) tensor in [-1, 1]."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: (N, H, W, 3) uint8."""
    x = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ImageStore:
    """Images of a record list at one resolution, decoded on demand and kept in memory
    as uint8 up to ``cache_bytes`` in all."""

    def __init__(self, records: list[Record], resolution: int, cache_bytes: int = 2_000_000_000) -> None:
        self.records, self.resolution = records, resolution
        self.cache_limit = cache_bytes // (resolution * resolution * 3)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        img = load_image(self.records[index].path, self.resolution)
        if len(self._cache) < self.cache_limit:
            self._cache[index] = img
        return img

    def batch(self, indices: list[int] | torch.Tensor) -> torch.Tensor:
        """Float (N, 3, H, W) batch in [-1, 1]."""
        return to_tensor([self.image(int(i)) for i in indices])


class EpochSampler:
    """Batches of indices that walk a fresh random permutation each epoch.

    Batch ``step`` depends only on (seed, step), so a resumed run sees exactly the
    batches an uninterrupted run would have seen.
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perms[epoch] = torch.randperm(self.size, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return torch.stack([self._perm(p // self.size)[p % self.size] for p in positions])
