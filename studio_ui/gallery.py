"""The gallery: every result saved as a PNG (recipe in its metadata) plus a JSON sidecar.

``outputs/<id>.png`` is written by :func:`core.outputs.save_result` (A1111 ``parameters``
text + the replayable JSON recipe). ``outputs/<id>.json`` holds that recipe again and
the UI state to restore the editor exactly: the page, every setting, the canvas drawing
(Fabric JSON for ``initial_drawing``), the region table, uploaded images (base64 PNG).
The folder is ``$STUDIO_OUTPUTS_DIR``, default ``outputs/`` at the repository root.
No streamlit here.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.outputs import model_record, parameters_for, save_result
from core.recipe import read_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent
SIDECAR_FORMAT = "studio-gallery"
SIDECAR_VERSION = 1
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def outputs_dir() -> Path:
    return Path(os.environ.get("STUDIO_OUTPUTS_DIR") or REPO_ROOT / "outputs")


def shown_path(path: Path) -> str:
    """How the app names a folder: relative to the studio's folder when inside it
    (``outputs/``), under the home folder as ``~/...``, else in full."""
    path = Path(path).resolve()
    for base, prefix in ((REPO_ROOT, ""), (Path.home().resolve(), "~/")):
        if path == base:
            return prefix or "./"
        if base in path.parents:
            return f"{prefix}{path.relative_to(base).as_posix()}/"
    return str(path)


@dataclass
class GalleryItem:
    """One saved image and its sidecar."""

    id: str
    image_path: Path
    meta_path: Path
    meta: dict[str, Any]

    @property
    def page(self) -> str:
        return str(self.meta.get("page", ""))

    @property
    def title(self) -> str:
        return str(self.meta.get("title") or "(no prompt)")

    @property
    def created(self) -> float:
        return float(self.meta.get("created_ts", 0))

    @property
    def ui(self) -> dict[str, Any]:
        return dict(self.meta.get("ui") or {})

    @property
    def recipe(self) -> dict[str, Any]:
        return dict(self.meta.get("recipe") or {})

    @property
    def parameters(self) -> str:
        return str(self.meta.get("parameters", ""))

    def image_bytes(self) -> bytes:
        return self.image_path.read_bytes()

    def sidecar_bytes(self) -> bytes:
        return self.meta_path.read_bytes()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class GalleryStore:
    """Save, list, read and delete results under one folder. Safe across threads."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else outputs_dir()
        self._lock = threading.Lock()

    def new_stem(self, page: str) -> str:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{re.sub(r'[^a-z0-9]+', '', page.lower()) or 'image'}-{secrets.token_hex(2)}"

    def save(self, result: Any, bundle: Any, *, page: str, title: str, ui: dict[str, Any]) -> list[GalleryItem]:
        """Write each image of ``result`` (a core GenerationResult) with recipe and UI state."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            stem = self.new_stem(page)
            paths = save_result(result, bundle, self.root / f"{stem}.png")
            items = []
            now = time.time()
            for index, path in enumerate(paths):
                meta = {
                    "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "id": path.stem, "page": page,
                    "title": title, "created_ts": now, "created": datetime.fromtimestamp(now).isoformat(timespec="seconds"),
                    "index": index, "count": len(paths), "seed": result.seeds[index], "kind": result.request.kind,
                    "size": list(result.images[index].size), "model": model_record(bundle),
                    "parameters": parameters_for(result, bundle, index), "image": path.name,
                    "timings": {k: round(v, 3) for k, v in result.timings.items()},
                    "warnings": list(result.warnings), "recipe": read_recipe(path), "ui": ui,
                }
                meta_path = path.with_suffix(".json")
                _write_json_atomic(meta_path, meta)
                items.append(GalleryItem(path.stem, path, meta_path, meta))
            return items

    def items(self) -> list[GalleryItem]:
        """Every readable item, newest first (damaged sidecars are skipped)."""
        if not self.root.is_dir():
            return []
        found = []
        for meta_path in self.root.glob("*.json"):
            item = self._load(meta_path)
            if item is not None:
                found.append(item)
        return sorted(found, key=lambda it: (it.created, it.id), reverse=True)

    def get(self, item_id: str) -> GalleryItem | None:
        if not _SAFE_ID.match(item_id or ""):
            return None
        return self._load(self.root / f"{item_id}.json")

    def delete(self, item_id: str) -> bool:
        """Remove the PNG and its sidecar; False if there was no such item."""
        item = self.get(item_id)
        if item is None:
            return False
        with self._lock:
            for path in (item.image_path, item.meta_path):
                path.unlink(missing_ok=True)
        return True

    def _load(self, meta_path: Path) -> GalleryItem | None:
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
            return None
        image_path = meta_path.with_name(str(meta.get("image") or f"{meta_path.stem}.png"))
        if image_path.parent != meta_path.parent or not image_path.is_file():
            return None
        return GalleryItem(meta_path.stem, image_path, meta_path, _plain_meta(meta))


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The sidecar with the fields the pages show made safe to show (a sidecar may be edited or
    come from someone else): numbers that are numbers, a size of two whole numbers, dicts that
    are dicts; anything else is replaced by a neutral value."""
    meta = dict(meta)
    if not isinstance(meta.get("created_ts"), (int, float)) or isinstance(meta.get("created_ts"), bool) \
            or not math.isfinite(meta["created_ts"]):
        meta["created_ts"] = 0.0
    size = meta.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 0 < v < 1 << 20 for v in size)):
        meta["size"] = ["?", "?"]
    for key in ("model", "ui", "recipe"):
        if not isinstance(meta.get(key), dict):
            meta[key] = {}
    for key in ("page", "title", "created", "parameters", "kind"):
        if not isinstance(meta.get(key), str):
            meta[key] = "" if key != "title" else None
    if not isinstance(meta.get("seed"), int):
        meta["seed"] = None
    return meta
