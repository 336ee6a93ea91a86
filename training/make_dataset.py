"""Write a dataset of procedural paintings as an ``imagefolder``.

    python -m training.make_dataset --out data/paintings --count 10000 --size 256 --seed 0

writes ``OUT/000000.png ...`` and ``OUT/metadata.jsonl`` with one line per image::

    {"file_name": "000000.png", "text": "...", "style": "oil", "time": "sunset",
     "objects": ["mountains", "sun"], "labels": {...}, "seed": 123}

With ``--with-scribbles`` it also writes ``scribbles/NNNNNN.png`` (the flat colour
layout) and ``regions/NNNNNN.png`` (a grayscale label map with the ids of
:data:`training.procedural.LABEL_IDS`), named in the metadata line as ``scribble``,
``region_map`` and ``regions`` ({label id: region name}).

Item ``i`` depends only on ``(seed, i)``, so any worker count gives the same files.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from . import procedural as P


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate."""

    out: Path
    count: int
    size: int = 256
    seed: int = 0
    workers: int = 1
    with_scribbles: bool = False
    styles: tuple[str, ...] = P.STYLES
    start: int = 0  # first index (to extend a dataset)
    crops: float = 0.0  # share of object-centred crops captioned by what they show
    simple: float = 0.0  # share of quickly drawn layouts (one to three kinds of object)


def item_seed(seed: int, index: int) -> int:
    """The scene seed of item ``index`` of a dataset made with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def item_scene(seed: int, index: int, styles: Sequence[str] = P.STYLES) -> tuple[P.Scene, str, str]:
    """(scene, style, caption) of item ``index`` of a dataset made with ``seed``."""
    scene_seed = item_seed(seed, index)
    rng = np.random.default_rng([scene_seed, 1])
    scene = P.sample_scene(scene_seed)
    style = P.normalise_style(styles[int(rng.integers(len(styles)))])
    return scene, style, P.caption(scene, style, rng)


def item_view(config: DatasetConfig, index: int) -> tuple[P.Scene, str, str, P.Crop | None, str]:
    """(scene, style, caption, crop or None, kind) of item ``index``: a whole scene, a
    quickly drawn ("simple") one, or an object-centred crop, in the shares of ``config``.
    With no crops and no simple layouts this is :func:`item_scene`."""
    scene, style, text = item_scene(config.seed, index, config.styles)
    if config.crops <= 0 and config.simple <= 0:
        return scene, style, text, None, "scene"
    rng = np.random.default_rng([item_seed(config.seed, index), 2])
    draw = rng.random()
    if draw < config.crops:
        crop = P.sample_crop(scene, rng)
        if crop is not None:
            return scene, style, P.crop_caption(scene, crop, style, rng), crop, "crop"
    elif draw < config.crops + config.simple:
        scene = P.simplify(scene, rng)
        return scene, style, P.caption(scene, style, rng), None, "simple"
    return scene, style, text, None, "scene"


def make_item(config: DatasetConfig, index: int) -> dict:
    """Render item ``index`` and write its files; returns its metadata line."""
    scene, style, text, crop, kind = item_view(config, index)
    name = f"{index:06d}.png"
    image = (P.render_painting(scene, config.size, style) if crop is None
             else P.render_crop(scene, crop, config.size, style))
    _write_png(config.out / name, image)
    line = {
        "file_name": name,
        "text": text,
        "style": style,
        "time": scene.time,
        "objects": P.scene_object_names(scene) if crop is None else sorted(crop.shares),
        "labels": P.scene_labels(scene, style)["objects"] if crop is None else P.crop_labels(crop),
        "seed": scene.seed,
        "kind": kind,
    }
    if config.with_scribbles and crop is None:
        _write_png(config.out / "scribbles" / name, P.render_scribble(scene, config.size))
        labels, names, _ = P.render_region_map(scene, config.size)
        _write_png(config.out / "regions" / name, labels.astype(np.uint8))
        line.update(scribble=f"scribbles/{name}", region_map=f"regions/{name}",
                    regions={str(k): v for k, v in names.items()})
    return line


def _work(args: tuple[DatasetConfig, int]) -> dict:
    cv2.setNumThreads(1)
    return make_item(*args)


def generate(config: DatasetConfig, progress: bool = True) -> Iterator[dict]:
    """Render the dataset's items in order (in ``config.workers`` processes), yielding lines."""
    config.out.mkdir(parents=True, exist_ok=True)
    if config.with_scribbles:
        (config.out / "scribbles").mkdir(exist_ok=True)
        (config.out / "regions").mkdir(exist_ok=True)
    jobs = [(config, i) for i in range(config.start, config.start + config.count)]
    bar = tqdm(total=len(jobs), desc="paintings", unit="img", disable=not progress)
    if config.workers <= 1:
        for job in jobs:
            yield _work(job)
            bar.update()
    else:
        with mp.get_context("spawn").Pool(config.workers) as pool:
            for line in pool.imap(_work, jobs, chunksize=16):
                yield line
                bar.update()
    bar.close()


def write_dataset(config: DatasetConfig, progress: bool = True) -> Path:
    """Generate the images and write ``metadata.jsonl``; returns its path.

    With ``config.start > 0`` the lines are appended to an existing metadata file.
    """
    meta = config.out / "metadata.jsonl"
    mode = "a" if config.start > 0 else "w"
    config.out.mkdir(parents=True, exist_ok=True)
    with meta.open(mode, encoding="utf-8") as f:
        for line in generate(config, progress):
            f.write(json.dumps(line) + "\n")
    return meta


def parse_args(argv: Sequence[str] | None = None) -> DatasetConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--count", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--with-scribbles", action="store_true",
                        help="also write scribbles/ and regions/ (label maps)")
    parser.add_argument("--styles", default=",".join(P.STYLES),
                        help=f"comma separated subset of {','.join(P.STYLES)}")
    parser.add_argument("--start", type=int, default=0,
                        help="first index; > 0 appends to an existing dataset")
    parser.add_argument("--crops", type=float, default=0.0,
                        help="share of object-centred crops captioned by what they show (0..1)")
    parser.add_argument("--simple", type=float, default=0.0,
                        help="share of quickly drawn layouts with one to three kinds of object (0..1)")
    a = parser.parse_args(argv)
    if not (0 <= a.crops <= 1 and 0 <= a.simple <= 1 and a.crops + a.simple <= 1):
        parser.error("--crops and --simple are shares between 0 and 1 that add up to at most 1")
    styles = tuple(P.normalise_style(s) for s in a.styles.split(",") if s.strip())
    workers = max(1, min(a.workers, os.cpu_count() or 1))
    return DatasetConfig(a.out, a.count, a.size, a.seed, workers, a.with_scribbles, styles, a.start,
                         a.crops, a.simple)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    meta = write_dataset(config)
    print(f"wrote {config.count} images and {meta}")


if __name__ == "__main__":
    main()
