"""Procedural landscape paintings: scenes, five painting styles, scribbles, captions.

A :class:`Scene` is sampled from a seed (``numpy.random.default_rng`` only, no global
random state), then rendered three ways that share one geometry:

- :func:`render_painting`: a painting in one of :data:`STYLES` (watercolor, oil/impasto,
  flat poster, pointillism, ink sketch), brush textures made with OpenCV;
- :func:`render_scribble`: the flat colour layout a person would draw;
- :func:`render_region_map`: a label map with stable label ids (:data:`LABEL_IDS`),
  the region names and their scribble colours.

:func:`caption` describes a scene in words (style, objects, colours, places, time of
day) and :func:`scene_labels` gives attribute labels for a classifier.

Coordinates in a scene are fractions of the image: ``x`` from the left edge, ``y`` from
the top edge. Everything is deterministic given the scene's seed and the style.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

Rng = np.random.Generator
RGB = tuple[int, int, int]

STYLES: tuple[str, ...] = ("watercolor", "oil", "poster", "pointillism", "ink")
STYLE_ALIASES = {
    "watercolour": "watercolor", "impasto": "oil", "oil painting": "oil", "flat": "poster",
    "flat poster": "poster", "pointillist": "pointillism", "ink sketch": "ink", "sketch": "ink",
}
# A word every caption of the style contains (for tests and for filtering).
STYLE_KEYWORDS = {"watercolor": "watercolor", "oil": "oil", "poster": "poster",
                  "pointillism": "pointillis", "ink": "ink"}
TIMES: tuple[str, ...] = ("day", "sunset", "night")

PALETTE: dict[str, RGB] = {
    "white": (244, 242, 236), "silver": (200, 205, 215), "grey": (140, 142, 150),
    "dark grey": (75, 78, 88), "black": (28, 28, 34),
    "red": (200, 45, 38), "dark red": (128, 28, 32), "orange": (240, 128, 40),
    "yellow": (246, 212, 62), "golden": (222, 170, 52), "pink": (238, 146, 170),
    "purple": (118, 68, 150), "violet": (150, 102, 200), "lavender": (176, 158, 222),
    "blue": (48, 100, 200), "light blue": (140, 190, 236), "dark blue": (26, 42, 96),
    "navy": (16, 24, 62), "indigo": (58, 48, 120), "teal": (36, 128, 130),
    "turquoise": (58, 188, 190), "green": (68, 150, 58), "dark green": (30, 90, 46),
    "light green": (150, 202, 100), "olive": (122, 130, 50), "brown": (120, 80, 44),
    "ochre": (200, 150, 70), "beige": (222, 202, 160),
}

# Stable label ids for region maps (and segmentation targets).
LABEL_IDS: dict[str, int] = {
    "sky": 0, "sun": 1, "moon": 2, "clouds": 3, "mountains": 4, "hills": 5, "ground": 6,
    "water": 7, "field": 8, "flowers": 9, "house": 10, "tree": 11, "boat": 12,
}
# Attributes for a later classifier: presence of these objects.
ATTRIBUTE_OBJECTS: tuple[str, ...] = (
    "sun", "moon", "clouds", "mountains", "hills", "water", "trees", "houses", "boats",
    "field", "flowers",
)
_KIND_TO_ATTRIBUTE = {"tree": "trees", "house": "houses", "boat": "boats"}

# Colour choices per kind (and time of day where it matters).
_SKY = {
    "day": (["blue", "light blue", "turquoise"], ["light blue", "white", "beige"]),
    "sunset": (["purple", "indigo", "pink", "orange"], ["orange", "yellow", "pink", "golden"]),
    "night": (["navy", "dark blue", "black", "indigo"], ["indigo", "dark blue", "purple", "teal"]),
}
# The app's palette colours (red, orange, ...) appear on objects, so what a person draws and
# names ("a red sun by day") is something the model has seen.
_SUN = {"day": ["yellow", "white", "golden", "red", "orange"], "sunset": ["red", "orange", "yellow", "pink"]}
_MOON = ["white", "yellow", "silver"]
_CLOUDS = {"day": ["white", "grey", "silver"], "sunset": ["pink", "orange", "purple", "golden"],
           "night": ["grey", "dark grey", "indigo"]}
_MOUNTAINS = ["purple", "blue", "grey", "brown", "violet", "dark blue", "teal", "indigo"]
_HILLS = ["green", "dark green", "light green", "olive", "ochre"]
_GROUND = ["green", "light green", "olive", "dark green", "ochre"]
_SHORE = ["beige", "ochre", "green"]
_WATER = ["blue", "turquoise", "teal", "dark blue", "light blue"]
_FIELD = ["golden", "yellow", "green", "lavender", "ochre", "red", "purple"]
_FLOWERS = ["red", "yellow", "white", "purple", "pink", "orange", "violet", "blue"]
_WALLS = ["white", "red", "yellow", "beige", "blue", "pink", "brown"]
_ROOFS = ["red", "brown", "dark grey", "dark red", "blue", "black"]
_CROWNS = ["green", "dark green", "light green", "olive", "orange", "red", "golden", "pink"]
_HULLS = ["red", "brown", "white", "blue", "yellow", "black"]
_SAILS = ["white", "red", "yellow", "beige"]


@dataclass
class SceneObject:
    """One object of a scene, in image fractions (x from the left, y from the top)."""

    kind: str  # sun, moon, clouds, mountains, hills, water, field, flowers, house, tree, boat
    colour: str  # a PALETTE name: the object's main colour
    x: float  # horizontal centre
    y: float  # vertical anchor: centre for sky objects, base for standing ones, top for areas
    w: float  # width
    h: float  # height
    variant: str = ""  # sea/lake/river, pine/round, crescent/full, snowy, sailboat/rowboat
    colour2: str = ""  # second colour: roof, trunk, sail
    shape: tuple[float, ...] = ()  # extra geometry (ridge points, meander, ...)
    place: str = "centre"  # left / centre / right
    depth: str = "background"  # foreground / background


@dataclass
class Scene:
    """A sampled landscape: time of day, horizon, sky and ground, and its objects."""

    seed: int
    time: str  # day / sunset / night
    horizon: float  # y of the horizon line
    sky: str  # sky colour at the top
    sky_low: str  # sky colour at the horizon
    ground: str  # colour of the land
    objects: list[SceneObject] = field(default_factory=list)

    def of(self, kind: str) -> list[SceneObject]:
        """All objects of one kind."""
        return [o for o in self.objects if o.kind == kind]

    def has(self, kind: str) -> bool:
        """Whether the scene holds at least one object of ``kind``."""
        return any(o.kind == kind for o in self.objects)

    @property
    def water(self) -> SceneObject | None:
        """The scene's water body (sea, lake or river), if any."""
        found = self.of("water")
        return found[0] if found else None

    def to_dict(self) -> dict:
        """Plain-data form (JSON friendly)."""
        return asdict(self)


# ----------------------------------------------------------------------------- sampling


def _pick(rng: Rng, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _place(x: float) -> str:
    return "left" if x < 0.37 else "right" if x > 0.63 else "centre"


def _depth(y: float, horizon: float) -> str:
    return "foreground" if y > horizon + 0.45 * (1.0 - horizon) else "background"


def _depth_scale(y: float, horizon: float) -> float:
    """Perspective: 0.3 at the horizon, 1 at the bottom edge."""
    return 0.3 + 0.7 * max(0.0, (y - horizon) / (1.0 - horizon))


def river_centre(obj: SceneObject, horizon: float, y: np.ndarray | float) -> np.ndarray:
    """x of a river's centre line at height ``y`` (t runs 0 at the horizon to 1 at the bottom)."""
    x_top, x_bottom, phase, amplitude = obj.shape
    t = np.clip((np.asarray(y, dtype=np.float64) - horizon) / (1.0 - horizon), 0.0, 1.0)
    return x_top + (x_bottom - x_top) * t + amplitude * t * np.sin(phase + t * 2.0 * np.pi * 1.2)


def river_half_width(obj: SceneObject, horizon: float, y: np.ndarray | float) -> np.ndarray:
    """Half width of a river at height ``y``: narrow at the horizon, widest at the bottom."""
    t = np.clip((np.asarray(y, dtype=np.float64) - horizon) / (1.0 - horizon), 0.0, 1.0)
    return 0.008 + 0.5 * obj.w * t


def water_contains(obj: SceneObject, horizon: float, x: np.ndarray | float,
                   y: np.ndarray | float) -> np.ndarray:
    """Whether points (image fractions) lie in the water body ``obj``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if obj.variant == "sea":
        return (y >= obj.y) & (y <= obj.y + obj.h)
    if obj.variant == "lake":
        return ((x - obj.x) / (obj.w / 2)) ** 2 + ((y - obj.y) / (obj.h / 2)) ** 2 <= 1.0
    inside = np.abs(x - river_centre(obj, horizon, y)) <= river_half_width(obj, horizon, y)
    return inside & (y >= horizon)


def _on_land(scene: Scene, x: float, y: float) -> bool:
    if y <= scene.horizon + 0.01 or y > 1.0:
        return False
    water = scene.water
    return water is None or not bool(water_contains(water, scene.horizon, x, y))


def _pick_far(rng: Rng, options: Sequence[str], against: Sequence[str | np.ndarray],
              time: str | None = None, min_dist: float = 90.0) -> str:
    """A colour name whose (lit) colour stands out from every colour in ``against``.

    Options are tried in a random order; if none is ``min_dist`` away from all of them,
    the most distant one is taken, so a scribble always shows its objects.
    """
    ref = [lit(c, time) if isinstance(c, str) and time else
           (_rgb(c) if isinstance(c, str) else np.asarray(c, np.float32)) for c in against]
    best, best_d = str(options[0]), -1.0
    for i in rng.permutation(len(options)):
        name = str(options[int(i)])
        c = lit(name, time) if time else _rgb(name)
        d = min((float(np.linalg.norm(c - r)) for r in ref), default=1e9)
        if d >= min_dist:
            return name
        if d > best_d:
            best, best_d = name, d
    return best


def _sample_sky(rng: Rng, time: str) -> tuple[str, str]:
    tops, lows = _SKY[time]
    return _pick(rng, tops), _pick(rng, lows)


def _sample_celestial(rng: Rng, scene: Scene) -> list[SceneObject]:
    time, horizon, sky = scene.time, scene.horizon, [scene.sky, scene.sky_low]
    if time == "night":
        if rng.random() > 0.85:
            return []
        kind, colour = "moon", _pick_far(rng, _MOON, sky)
        variant = "crescent" if rng.random() < 0.45 else "full"
        y = rng.uniform(0.1, max(0.12, horizon - 0.18))
    else:
        if rng.random() > (0.75 if time == "day" else 0.85):
            return []
        kind, colour, variant = "sun", _pick_far(rng, _SUN[time], sky, min_dist=70), ""
        y = rng.uniform(horizon - 0.2, horizon - 0.06) if time == "sunset" else rng.uniform(
            0.1, max(0.12, horizon - 0.2))
    x = rng.uniform(0.12, 0.88)
    r = rng.uniform(0.045, 0.085) * (1.3 if time == "sunset" else 1.0)
    return [SceneObject(kind, colour, x, y, 2 * r, 2 * r, variant, place=_place(x))]


def _sample_clouds(rng: Rng, scene: Scene) -> list[SceneObject]:
    time, horizon = scene.time, scene.horizon
    count = int(rng.integers(0, 3 if time == "night" else 5))
    colour = _pick_far(rng, _CLOUDS[time], [scene.sky, scene.sky_low], min_dist=60)
    out = []
    for _ in range(count):
        x, w = rng.uniform(0.05, 0.95), rng.uniform(0.14, 0.3)
        y = rng.uniform(0.08, max(0.1, horizon - 0.16))
        out.append(SceneObject("clouds", colour, x, y, w, w * rng.uniform(0.25, 0.4),
                               place=_place(x)))
    return out


def _midpoint_ridge(rng: Rng, xs: list[float], ys: list[float], rounds: int,
                    roughness: float) -> tuple[list[float], list[float]]:
    for _ in range(rounds):
        nx, ny = [xs[0]], [ys[0]]
        for i in range(1, len(xs)):
            nx.append((xs[i - 1] + xs[i]) / 2)
            ny.append((ys[i - 1] + ys[i]) / 2 + rng.normal(0.0, roughness))
            nx.append(xs[i])
            ny.append(ys[i])
        xs, ys, roughness = nx, ny, roughness * 0.55
    return xs, ys


def _sample_mountains(rng: Rng, scene: Scene) -> list[SceneObject]:
    time, horizon = scene.time, scene.horizon
    if rng.random() > 0.55:
        return []
    span = rng.uniform(0.55, 1.0) if rng.random() < 0.5 else 1.2
    x0 = rng.uniform(-0.1, 1.0 - span + 0.1) if span < 1.0 else -0.1
    x1 = x0 + span
    peaks = int(rng.integers(2, 5))
    top = horizon - rng.uniform(0.14, min(0.34, horizon - 0.08))
    xs = list(np.linspace(x0, x1, 2 * peaks + 1))
    ys = [horizon + 0.01 if i in (0, 2 * peaks) else
          (top + rng.uniform(0.0, 0.08) if i % 2 else horizon - rng.uniform(0.03, 0.1))
          for i in range(2 * peaks + 1)]
    xs, ys = _midpoint_ridge(rng, xs, ys, 3, 0.025)
    ys = [min(y, horizon + 0.01) for y in ys]
    ys[0] = ys[-1] = horizon + 0.01
    highest = int(np.argmin(ys))
    snowy = time != "night" and rng.random() < 0.35
    backdrop = [_rgb(scene.sky), _rgb(scene.sky_low), lit(scene.ground, time)]
    colour = _pick_far(rng, _MOUNTAINS, backdrop, time, min_dist=60)
    shape = tuple(float(v) for pair in zip(xs, ys) for v in pair)
    x_peak = float(np.clip(xs[highest], 0.0, 1.0))
    return [SceneObject("mountains", colour, (x0 + x1) / 2, min(ys), span, horizon - min(ys),
                        "snowy" if snowy else "", "white" if snowy else "", shape,
                        place=_place(x_peak) if span < 1.0 else "centre")]


def _sample_hills(rng: Rng, scene: Scene) -> list[SceneObject]:
    horizon = scene.horizon
    if rng.random() > 0.45:
        return []
    amplitude = rng.uniform(0.03, 0.09)
    shape = (amplitude, rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.5),
             rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 5.0))
    behind = [lit(scene.ground, scene.time), _rgb(scene.sky_low)] + [
        lit(m.colour, scene.time) for m in scene.of("mountains")]
    colour = _pick_far(rng, _HILLS, behind, scene.time, min_dist=45)
    return [SceneObject("hills", colour, 0.5, horizon - amplitude, 1.0, amplitude,
                        shape=shape)]


def hills_top(obj: SceneObject, horizon: float, x: np.ndarray) -> np.ndarray:
    """y of a hills outline at ``x`` (always above the horizon)."""
    amplitude, p1, f1, p2, f2 = obj.shape
    wave = 0.65 * np.sin(p1 + 2 * np.pi * f1 * x) + 0.35 * np.sin(p2 + 2 * np.pi * f2 * x)
    return horizon - 0.008 - amplitude * (0.5 + 0.5 * wave)


def _sample_water(rng: Rng, scene: Scene) -> list[SceneObject]:
    horizon = scene.horizon
    if rng.random() > 0.55:
        return []
    variant = _pick(rng, ["sea", "sea", "lake", "lake", "river"])
    behind = [scene.ground] + [o.colour for o in scene.of("mountains") + scene.of("hills")]
    colour = _pick_far(rng, _WATER, behind, scene.time, min_dist=60)
    if variant == "sea":
        bottom = 1.0 if rng.random() < 0.4 else rng.uniform(horizon + 0.25, 0.88)
        return [SceneObject("water", colour, 0.5, horizon, 1.0, bottom - horizon, "sea",
                            depth="background" if bottom < 0.999 else "foreground")]
    if variant == "lake":
        w, h = rng.uniform(0.3, 0.7), rng.uniform(0.07, 0.16)
        x = rng.uniform(w / 2 - 0.05, 1.05 - w / 2)
        y = rng.uniform(horizon + h / 2 + 0.01, min(0.92, horizon + 0.55 * (1 - horizon)))
        return [SceneObject("water", colour, x, y, w, h, "lake", place=_place(x),
                            depth=_depth(y, horizon))]
    x_top, x_bottom = rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.85)
    shape = (x_top, x_bottom, rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15))
    return [SceneObject("water", colour, (x_top + x_bottom) / 2, horizon, rng.uniform(0.18, 0.34),
                        1.0 - horizon, "river", shape=shape, place=_place((x_top + x_bottom) / 2),
                        depth="foreground")]


def _sample_field(rng: Rng, scene: Scene) -> list[SceneObject]:
    water = scene.water
    if water is not None and water.variant == "sea" and water.y + water.h > 0.9:
        return []
    if rng.random() > 0.45:
        return []
    low = water.y + water.h + 0.02 if water is not None and water.variant == "sea" else \
        scene.horizon + 0.3 * (1 - scene.horizon)
    top = rng.uniform(low, max(low + 0.01, 0.86))
    kind = "flowers" if rng.random() < 0.5 else "field"
    colour = _pick_far(rng, _FLOWERS if kind == "flowers" else _FIELD, [scene.ground], scene.time,
                       min_dist=70)
    x0 = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.5)
    x1 = 1.0 if x0 > 0.0 or rng.random() < 0.5 else rng.uniform(0.5, 1.0)
    x = (x0 + x1) / 2
    return [SceneObject(kind, colour, x, top, x1 - x0, 1.0 - top, kind,
                        shape=(x0, x1, rng.uniform(0, 2 * np.pi)),
                        place=_place(x) if x1 - x0 < 0.75 else "centre", depth="foreground")]


def _free_spot(rng: Rng, scene: Scene, y_lo: float, y_hi: float, half_w: float,
               taken: list[tuple[float, float, float]], tries: int = 30) -> tuple[float, float] | None:
    """A base point on land, whose base corners are on land, away from ``taken`` objects."""
    for _ in range(tries):
        x, y = rng.uniform(0.06, 0.94), rng.uniform(y_lo, y_hi)
        s = _depth_scale(y, scene.horizon)
        corners = (x - half_w * s, x + half_w * s)
        if not all(_on_land(scene, cx, y) for cx in (*corners, x)):
            continue
        if any(abs(x - tx) < (tw + half_w * s) * 0.8 and abs(y - ty) < 0.08 for tx, ty, tw in taken):
            continue
        taken.append((x, y, half_w * s))
        return x, y
    return None


def _sample_houses(rng: Rng, scene: Scene, taken: list) -> list[SceneObject]:
    if rng.random() > 0.5:
        return []
    wall = _pick_far(rng, _WALLS, [scene.ground], scene.time, min_dist=70)
    roof = _pick_far(rng, _ROOFS, [wall, scene.sky_low], scene.time, min_dist=60)
    out = []
    for _ in range(int(rng.integers(1, 4))):
        spot = _free_spot(rng, scene, scene.horizon + 0.04, 0.93, 0.08, taken)
        if spot is None:
            continue
        x, y = spot
        s = _depth_scale(y, scene.horizon)
        out.append(SceneObject("house", wall, x, y, 0.15 * s, 0.11 * s, colour2=roof,
                               place=_place(x), depth=_depth(y, scene.horizon)))
    return out


def _sample_trees(rng: Rng, scene: Scene, taken: list) -> list[SceneObject]:
    if rng.random() > 0.6:
        return []
    crowns = _CROWNS if scene.time == "sunset" else _CROWNS[:4]
    behind = [scene.ground] + [f.colour for f in scene.of("field") + scene.of("flowers")]
    crown = _pick_far(rng, crowns, behind, scene.time, min_dist=50)
    variant = "pine" if rng.random() < 0.4 else "round"
    out = []
    for _ in range(int(rng.integers(1, 6))):
        spot = _free_spot(rng, scene, scene.horizon + 0.03, 0.97, 0.05, taken)
        if spot is None:
            continue
        x, y = spot
        s = _depth_scale(y, scene.horizon)
        out.append(SceneObject("tree", crown, x, y, 0.12 * s, 0.3 * s, variant, "brown",
                               place=_place(x), depth=_depth(y, scene.horizon)))
    return out


def _sample_boats(rng: Rng, scene: Scene) -> list[SceneObject]:
    water = scene.water
    if water is None or rng.random() > 0.55:
        return []
    hull = _pick_far(rng, _HULLS, [water.colour], scene.time, min_dist=70)
    variant = "sailboat" if rng.random() < 0.6 else "rowboat"
    sail = _pick_far(rng, _SAILS, [hull], scene.time, min_dist=60) if variant == "sailboat" else ""
    out: list[SceneObject] = []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(30):
            x = rng.uniform(0.08, 0.92)
            y = rng.uniform(scene.horizon + 0.02, min(0.97, water.y + water.h if water.variant != "lake"
                                                      else water.y + water.h / 2))
            s = _depth_scale(y, scene.horizon) * (0.6 if water.variant == "river" else 1.0)
            w = 0.13 * s
            pts = [(x - w / 2, y), (x + w / 2, y), (x, y - 0.02 * s)]
            if all(water_contains(water, scene.horizon, px, py) for px, py in pts) and not any(
                    abs(b.x - x) < (b.w + w) / 2 and abs(b.y - y) < 0.05 for b in out):
                out.append(SceneObject("boat", hull, x, y, w, 0.035 * s, variant, sail,
                                       place=_place(x), depth=_depth(y, scene.horizon)))
                break
    return out


def sample_scene(seed: int) -> Scene:
    """Sample a landscape scene, deterministically from ``seed``.

    Composition rules: the sky is above the horizon line, water below it; the sun
    appears by day or at sunset (low at sunset), the moon only at night; houses and
    trees stand on land, boats float on water; fields and flowers lie in the foreground.
    """
    rng = np.random.default_rng(seed)
    time = _pick(rng, ["day"] * 9 + ["sunset"] * 6 + ["night"] * 5)
    horizon = float(rng.uniform(0.42, 0.62))
    sky, sky_low = _sample_sky(rng, time)
    scene = Scene(int(seed), time, horizon, sky, sky_low, _pick(rng, _GROUND))
    scene.objects += _sample_celestial(rng, scene)
    scene.objects += _sample_clouds(rng, scene)
    scene.objects += _sample_mountains(rng, scene)
    scene.objects += _sample_hills(rng, scene)
    scene.objects += _sample_water(rng, scene)
    if scene.water is not None and scene.water.variant == "sea":
        scene.ground = _pick_far(rng, _SHORE, [scene.water.colour], time, min_dist=60)
    scene.objects += _sample_field(rng, scene)
    taken: list[tuple[float, float, float]] = []
    scene.objects += _sample_houses(rng, scene, taken)
    scene.objects += _sample_trees(rng, scene, taken)
    scene.objects += _sample_boats(rng, scene)
    return scene


def simplify(scene: Scene, rng: Rng) -> Scene:
    """A quickly drawn layout: sky, ground and the objects of one to three kinds of ``scene``
    (boats keep their water), as a person sketches a few big shapes."""
    kinds = sorted({o.kind for o in scene.objects})
    if not kinds:
        return scene
    count = min(len(kinds), int(rng.integers(1, 4)))
    keep = {kinds[int(i)] for i in rng.choice(len(kinds), size=count, replace=False)}
    if "boat" in keep:
        keep.add("water")
    objects = [o for o in scene.objects if o.kind in keep]
    return Scene(scene.seed, scene.time, scene.horizon, scene.sky, scene.sky_low, scene.ground, objects)


# ---------------------------------------------------------------------------- rendering


def _rgb(name: str) -> np.ndarray:
    return np.asarray(PALETTE[name], dtype=np.float32)


def lit(colour: str | np.ndarray, time: str) -> np.ndarray:
    """An object's colour under the light of the time of day (land objects only)."""
    c = _rgb(colour) if isinstance(colour, str) else np.asarray(colour, np.float32)
    if time == "sunset":
        return np.clip((0.82 * c + 0.18 * np.array([255, 130, 60], np.float32)) * 0.92, 0, 255)
    if time == "night":
        return np.clip(0.42 * c + np.array([8, 14, 38], np.float32), 0, 255)
    return c


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return (1.0 - t) * a + t * b


class _Canvas:
    """A float RGB image, a label map and helpers to fill shapes given in image fractions."""

    def __init__(self, size: int, detailed: bool, bands: int | None, rng: Rng) -> None:
        self.size, self.detailed, self.bands, self.rng = size, detailed, bands, rng
        self.img = np.zeros((size, size, 3), np.float32)
        self.labels = np.zeros((size, size), np.uint8)
        self.rows = (np.arange(size, dtype=np.float32) + 0.5) / size

    def px(self, pts: Sequence[tuple[float, float]] | np.ndarray) -> np.ndarray:
        return np.round(np.asarray(pts, np.float64) * self.size).astype(np.int32)

    def poly_mask(self, pts: Sequence[tuple[float, float]] | np.ndarray) -> np.ndarray:
        mask = np.zeros((self.size, self.size), np.uint8)
        cv2.fillPoly(mask, [self.px(pts)], 1)
        return mask.astype(bool)

    def ellipse_mask(self, x: float, y: float, rx: float, ry: float) -> np.ndarray:
        mask = np.zeros((self.size, self.size), np.uint8)
        centre = (int(round(x * self.size)), int(round(y * self.size)))
        axes = (max(1, int(round(rx * self.size))), max(1, int(round(ry * self.size))))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        return mask.astype(bool)

    def column(self, top: np.ndarray, bottom: np.ndarray, y0: float, y1: float) -> np.ndarray:
        """A vertical gradient (H, 1, 3) from ``top`` at y0 to ``bottom`` at y1."""
        t = np.clip((self.rows - y0) / max(1e-6, y1 - y0), 0.0, 1.0)
        if self.bands:
            t = np.floor(t * self.bands) / max(1, self.bands - 1)
            t = np.clip(t, 0.0, 1.0)
        return (top[None, :] * (1 - t[:, None]) + bottom[None, :] * t[:, None])[:, None, :]

    def fill(self, mask: np.ndarray, colour: np.ndarray, label: int | None) -> None:
        """Paint ``colour`` (RGB, an (H,1,3) column or an (H,W,3) image) where ``mask``."""
        colour = np.asarray(colour, np.float32)
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return
        top, bottom = rows[0], rows[-1] + 1  # work on the mask's rows only
        sub = mask[top:bottom]
        if colour.ndim == 1:
            self.img[top:bottom][sub] = colour
        else:
            self.img[top:bottom][sub] = np.broadcast_to(colour, self.img.shape)[top:bottom][sub]
        if label is not None:
            self.labels[top:bottom][sub] = label


def _draw_sky(cv: _Canvas, scene: Scene) -> None:
    everywhere = np.ones((cv.size, cv.size), bool)
    if cv.detailed:
        cv.fill(everywhere, cv.column(_rgb(scene.sky), _rgb(scene.sky_low), 0.0, scene.horizon), 0)
        if scene.time == "night":
            _draw_stars(cv, scene)
    else:
        cv.fill(everywhere, _rgb(scene.sky), LABEL_IDS["sky"])


def _draw_stars(cv: _Canvas, scene: Scene) -> None:
    count = int(cv.rng.integers(20, 70))
    xs = cv.rng.integers(0, cv.size, count)
    ys = (cv.rng.random(count) ** 1.5 * scene.horizon * 0.9 * cv.size).astype(int)
    bright = cv.rng.uniform(150, 255, count)
    for x, y, b in zip(xs, ys, bright):
        cv.img[y, x] = np.maximum(cv.img[y, x], b)


def _draw_glow(cv: _Canvas, obj: SceneObject, radius: float, colour: np.ndarray) -> None:
    """A soft halo around the sun or moon (inside its bounding box only)."""
    y0, y1 = (max(0, int((obj.y - radius) * cv.size)), min(cv.size, int((obj.y + radius) * cv.size) + 1))
    x0, x1 = (max(0, int((obj.x - radius) * cv.size)), min(cv.size, int((obj.x + radius) * cv.size) + 1))
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    d = np.hypot((xx + 0.5) / cv.size - obj.x, (yy + 0.5) / cv.size - obj.y)
    glow = (np.clip(1.0 - d / radius, 0.0, 1.0) ** 2 * (0.55 if obj.kind == "sun" else 0.3)).astype(np.float32)
    if cv.bands:
        glow = np.floor(glow * cv.bands) / cv.bands
    box = cv.img[y0:y1, x0:x1]
    box[:] = box * (1 - glow[..., None]) + colour * glow[..., None]


def _draw_celestial(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    r = obj.w / 2
    colour = _rgb(obj.colour)
    if cv.detailed:
        _draw_glow(cv, obj, r * (3.2 if scene.time == "sunset" else 2.2), colour)
    mask = cv.ellipse_mask(obj.x, obj.y, r, r)
    if obj.variant == "crescent":
        mask &= ~cv.ellipse_mask(obj.x + 0.45 * r, obj.y - 0.2 * r, r * 0.95, r * 0.95)
    cv.fill(mask, colour, LABEL_IDS[obj.kind])


def _draw_cloud(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    rng = np.random.default_rng([scene.seed, int(obj.x * 1e6), 7])  # shape only: same in every render
    mask = np.zeros((cv.size, cv.size), bool)
    puffs = 3 + int(obj.w * 14)
    for i in range(puffs):
        t = (i + 0.5) / puffs
        px = obj.x - obj.w / 2 + t * obj.w
        py = obj.y + rng.uniform(-0.25, 0.15) * obj.h
        pr = obj.h * (0.35 + 0.5 * math.sin(math.pi * t)) * rng.uniform(0.8, 1.15)
        mask |= cv.ellipse_mask(px, py, pr * 1.2, pr)
    mask &= np.broadcast_to((cv.rows <= obj.y + obj.h * 0.35)[:, None], mask.shape)
    colour = _rgb(obj.colour)
    if cv.detailed:
        shade = cv.column(colour * 1.05, _mix(colour, _rgb(scene.sky_low), 0.35) * 0.9,
                          obj.y - obj.h, obj.y + obj.h * 0.4)
        cv.fill(mask, np.clip(shade, 0, 255), LABEL_IDS["clouds"])
    else:
        cv.fill(mask, colour, LABEL_IDS["clouds"])


def _draw_mountains(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    ridge = np.asarray(obj.shape, np.float64).reshape(-1, 2)
    poly = np.concatenate([ridge, [[ridge[-1, 0], scene.horizon + 0.02],
                                   [ridge[0, 0], scene.horizon + 0.02]]])
    mask = cv.poly_mask(poly)
    colour = lit(obj.colour, scene.time)
    if cv.detailed:
        hazy = _mix(colour, _rgb(scene.sky_low), 0.45)
        cv.fill(mask, cv.column(colour * 1.05, hazy, obj.y, scene.horizon), LABEL_IDS["mountains"])
        _shade_mountain_faces(cv, ridge, mask, colour)
        if obj.variant == "snowy":
            snow_line = obj.y + 0.35 * obj.h
            snow = mask & np.broadcast_to((cv.rows < snow_line)[:, None], mask.shape)
            cv.fill(snow, _rgb("white") * 0.97, None)
    else:
        cv.fill(mask, np.clip(colour, 0, 255), LABEL_IDS["mountains"])


def _shade_mountain_faces(cv: _Canvas, ridge: np.ndarray, mask: np.ndarray,
                          colour: np.ndarray) -> None:
    """Darken the slopes that face away from the light (left of each peak is lit)."""
    shade = np.zeros((cv.size, cv.size), np.uint8)
    tris = [cv.px([(x0, y0), (x1, y1), (x0 + (x1 - x0) * 0.3, y0 + 0.25)])
            for (x0, y0), (x1, y1) in zip(ridge[:-1], ridge[1:]) if y1 >= y0]  # falling slopes
    if tris:
        for tri in tris:
            cv2.fillConvexPoly(shade, tri, 1)
        dark = shade.astype(bool) & mask
        np.multiply(cv.img, 0.82, out=cv.img, where=dark[..., None])


def _draw_hills(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    xs = np.linspace(0.0, 1.0, 64)
    top = hills_top(obj, scene.horizon, xs)
    poly = np.concatenate([np.stack([xs, top], 1), [[1.0, scene.horizon + 0.02],
                                                     [0.0, scene.horizon + 0.02]]])
    mask = cv.poly_mask(poly)
    colour = lit(obj.colour, scene.time)
    if cv.detailed:
        hazy = _mix(colour, _rgb(scene.sky_low), 0.3)
        cv.fill(mask, cv.column(colour * 1.08, hazy, obj.y, scene.horizon), LABEL_IDS["hills"])
    else:
        cv.fill(mask, colour, LABEL_IDS["hills"])


def _draw_ground(cv: _Canvas, scene: Scene) -> None:
    mask = np.broadcast_to((cv.rows >= scene.horizon)[:, None], (cv.size, cv.size))
    colour = lit(scene.ground, scene.time)
    if cv.detailed:
        far = _mix(colour, _rgb(scene.sky_low), 0.3)
        cv.fill(mask, np.clip(cv.column(far, colour * 0.82, scene.horizon, 1.0), 0, 255),
                LABEL_IDS["ground"])
    else:
        cv.fill(mask, colour, LABEL_IDS["ground"])


def _field_polygon(obj: SceneObject) -> np.ndarray:
    x0, x1, phase = obj.shape
    xs = np.linspace(x0, x1, 32)
    top = obj.y + 0.015 * np.sin(phase + xs * 9.0)
    return np.concatenate([np.stack([xs, top], 1), [[x1, 1.01], [x0, 1.01]]])


def _draw_field(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    mask = cv.poly_mask(_field_polygon(obj))
    colour = lit(obj.colour, scene.time)
    label = LABEL_IDS[obj.kind]
    if not cv.detailed:
        cv.fill(mask, colour, label)
        return
    if obj.kind == "field":
        cv.fill(mask, cv.column(_mix(colour, _rgb(scene.sky_low), 0.15), colour * 0.85, obj.y, 1.0),
                label)
        _draw_furrows(cv, obj, mask, colour)
    else:
        ground = lit(scene.ground, scene.time)
        cv.fill(mask, cv.column(ground * 0.95, ground * 0.8, obj.y, 1.0), label)
        _draw_flower_dots(cv, obj, mask, colour)


def _draw_furrows(cv: _Canvas, obj: SceneObject, mask: np.ndarray, colour: np.ndarray) -> None:
    t = np.clip((cv.rows - obj.y) / max(1e-6, 1 - obj.y), 0, 1)
    stripes = np.sin((t ** 0.6) * 40.0) > 0.6
    band = np.broadcast_to(stripes[:, None], mask.shape) & mask
    cv.img[band] = cv.img[band] * 0.9


def _draw_flower_dots(cv: _Canvas, obj: SceneObject, mask: np.ndarray, colour: np.ndarray) -> None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    count = min(len(ys), int(len(ys) / 18) + 1)
    pick = cv.rng.choice(len(ys), count, replace=False)
    radius = max(1, cv.size // 128)
    jitter = cv.rng.uniform(0.8, 1.15, (count, 1))
    for (y, x), c in zip(zip(ys[pick], xs[pick]), np.clip(colour[None, :] * jitter, 0, 255)):
        r = radius + int(radius * (y / cv.size - obj.y) * 2)
        cv2.circle(cv.img, (int(x), int(y)), max(1, r), tuple(float(v) for v in c), -1)


def water_polygon(obj: SceneObject, horizon: float) -> np.ndarray:
    """Outline of a sea / lake / river in image fractions."""
    if obj.variant == "sea":
        return np.array([[-0.01, obj.y], [1.01, obj.y], [1.01, obj.y + obj.h], [-0.01, obj.y + obj.h]])
    if obj.variant == "lake":
        a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([obj.x + obj.w / 2 * np.cos(a), obj.y + obj.h / 2 * np.sin(a)], 1)
    ys = np.linspace(horizon, 1.01, 40)
    c, hw = river_centre(obj, horizon, ys), river_half_width(obj, horizon, ys)
    return np.concatenate([np.stack([c - hw, ys], 1), np.stack([c + hw, ys], 1)[::-1]])


def _draw_water(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    mask = cv.poly_mask(water_polygon(obj, scene.horizon))
    colour = lit(obj.colour, scene.time)
    label = LABEL_IDS["water"]
    if not cv.detailed:
        cv.fill(mask, colour, label)
        return
    near = _mix(colour, _rgb(scene.sky_low), 0.45)
    y_top = scene.horizon if obj.variant != "lake" else obj.y - obj.h / 2
    cv.fill(mask, cv.column(near, colour * 0.8, y_top, min(1.0, obj.y + obj.h)), label)
    _draw_ripples(cv, scene, mask)


def _draw_ripples(cv: _Canvas, scene: Scene, mask: np.ndarray) -> None:
    """Short horizontal highlights, and a reflection column under the sun or moon."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    count = max(1, len(ys) // 300)
    pick = cv.rng.choice(len(ys), count, replace=False)
    thin = max(1, cv.size // 256)
    for y, x in zip(ys[pick], xs[pick]):
        half = int(cv.size * cv.rng.uniform(0.01, 0.035) * (0.4 + y / cv.size))
        cv2.line(cv.img, (int(x) - half, int(y)), (int(x) + half, int(y)),
                 tuple(float(v) for v in cv.img[y, x] * 1.18), thin)
    for light in scene.of("sun") + scene.of("moon"):
        colour = _rgb(light.colour)
        cx = int(light.x * cv.size)
        for y in range(int(scene.horizon * cv.size), cv.size, max(2, cv.size // 64)):
            half = int(cv.size * light.w * 0.5 * cv.rng.uniform(0.3, 1.0))
            xj = cx + int(cv.rng.normal(0, cv.size * 0.008))
            seg = mask[y, max(0, xj - half):xj + half]
            if seg.size and seg.mean() > 0.9:
                cv2.line(cv.img, (xj - half, y), (xj + half, y),
                         tuple(float(v) for v in _mix(cv.img[y, xj], colour, 0.6)), thin)


def _draw_house(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    wall, roof = lit(obj.colour, scene.time), lit(obj.colour2, scene.time)
    x0, x1, top = obj.x - obj.w / 2, obj.x + obj.w / 2, obj.y - obj.h
    body = cv.poly_mask([(x0, top), (x1, top), (x1, obj.y), (x0, obj.y)])
    over = obj.w * 0.08
    roof_mask = cv.poly_mask([(x0 - over, top), (x1 + over, top), (obj.x, top - obj.h * 0.55)])
    cv.fill(body, wall, LABEL_IDS["house"])
    cv.fill(roof_mask, roof, LABEL_IDS["house"])
    if cv.detailed:
        _house_details(cv, scene, obj, wall)


def _house_details(cv: _Canvas, scene: Scene, obj: SceneObject, wall: np.ndarray) -> None:
    x0, top = obj.x - obj.w / 2, obj.y - obj.h
    side = cv.poly_mask([(obj.x + obj.w * 0.2, top), (obj.x + obj.w / 2, top),
                         (obj.x + obj.w / 2, obj.y), (obj.x + obj.w * 0.2, obj.y)])
    cv.img[side] *= 0.85
    window = (np.array([255, 214, 120], np.float32) if scene.time == "night"
              else np.array([60, 70, 90], np.float32))
    ww, wh = obj.w * 0.14, obj.h * 0.22
    for cx in (x0 + obj.w * 0.22, x0 + obj.w * 0.78):
        cv.fill(cv.poly_mask([(cx - ww / 2, top + obj.h * 0.25), (cx + ww / 2, top + obj.h * 0.25),
                              (cx + ww / 2, top + obj.h * 0.25 + wh), (cx - ww / 2, top + obj.h * 0.25 + wh)]),
                window, None)
    dw = obj.w * 0.14
    cv.fill(cv.poly_mask([(obj.x - dw / 2, obj.y - obj.h * 0.45), (obj.x + dw / 2, obj.y - obj.h * 0.45),
                          (obj.x + dw / 2, obj.y), (obj.x - dw / 2, obj.y)]), wall * 0.45, None)


def _draw_tree(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    crown, trunk = lit(obj.colour, scene.time), lit(obj.colour2, scene.time)
    label = LABEL_IDS["tree"]
    tw = obj.w * 0.16
    if obj.variant == "pine":
        trunk_top = obj.y - obj.h * 0.2
        cv.fill(cv.poly_mask([(obj.x - tw / 2, trunk_top), (obj.x + tw / 2, trunk_top),
                              (obj.x + tw / 2, obj.y), (obj.x - tw / 2, obj.y)]), trunk, label)
        for i in range(3):
            base = trunk_top - i * obj.h * 0.22
            half = obj.w / 2 * (1.0 - 0.22 * i)
            mask = cv.poly_mask([(obj.x - half, base + obj.h * 0.04), (obj.x + half, base + obj.h * 0.04),
                                 (obj.x, base - obj.h * 0.38)])
            cv.fill(mask, crown * (1.0 + 0.06 * i) if cv.detailed else crown, label)
        return
    trunk_top = obj.y - obj.h * 0.5
    cv.fill(cv.poly_mask([(obj.x - tw / 2, trunk_top), (obj.x + tw / 2, trunk_top),
                          (obj.x + tw / 2, obj.y), (obj.x - tw / 2, obj.y)]), trunk, label)
    cy, r = obj.y - obj.h * 0.66, obj.w / 2
    cv.fill(cv.ellipse_mask(obj.x, cy, r, obj.h * 0.34), crown, label)
    if cv.detailed:
        highlight = cv.ellipse_mask(obj.x - r * 0.25, cy - obj.h * 0.1, r * 0.55, obj.h * 0.18)
        cv.fill(highlight, np.clip(crown * 1.15 + 8, 0, 255), None)


def _draw_boat(cv: _Canvas, scene: Scene, obj: SceneObject) -> None:
    hull = lit(obj.colour, scene.time)
    label = LABEL_IDS["boat"]
    x0, x1, top = obj.x - obj.w / 2, obj.x + obj.w / 2, obj.y - obj.h
    cv.fill(cv.poly_mask([(x0, top), (x1, top), (x1 - obj.w * 0.15, obj.y),
                          (x0 + obj.w * 0.15, obj.y)]), hull, label)
    if obj.variant == "sailboat":
        sail = lit(obj.colour2, scene.time)
        mast = obj.x - obj.w * 0.05
        cv.fill(cv.poly_mask([(mast, top - obj.h * 0.15), (mast, top - obj.h * 2.0),
                              (mast + obj.w * 0.38, top - obj.h * 0.15)]), sail, label)


_DRAWERS: dict[str, Callable[[_Canvas, Scene, SceneObject], None]] = {
    "sun": _draw_celestial, "moon": _draw_celestial, "clouds": _draw_cloud,
    "mountains": _draw_mountains, "hills": _draw_hills, "water": _draw_water,
    "field": _draw_field, "flowers": _draw_field, "house": _draw_house, "tree": _draw_tree,
    "boat": _draw_boat,
}
_LAYERS = {"sun": 1, "moon": 1, "clouds": 2, "mountains": 3, "hills": 4, "field": 6,
           "flowers": 6, "water": 7, "house": 8, "tree": 8, "boat": 8}


def _rasterise(scene: Scene, size: int, detailed: bool, bands: int | None = None,
               rng: Rng | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw the scene back to front; returns (float32 RGB image, uint8 label map)."""
    cv = _Canvas(size, detailed, bands, rng if rng is not None else np.random.default_rng(scene.seed))
    _draw_sky(cv, scene)
    ordered = sorted(scene.objects, key=lambda o: (_LAYERS[o.kind], o.y if _LAYERS[o.kind] == 8 else 0))
    ground_drawn = False
    for obj in ordered:
        if _LAYERS[obj.kind] > 4 and not ground_drawn:
            _draw_ground(cv, scene)
            ground_drawn = True
        _DRAWERS[obj.kind](cv, scene, obj)
    if not ground_drawn:
        _draw_ground(cv, scene)
    return cv.img, cv.labels


def render_scribble(scene: Scene, size: int = 256) -> np.ndarray:
    """The flat colour layout a person would draw: (H, W, 3) uint8, no texture."""
    img, _ = _rasterise(scene, size, detailed=False)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def region_name(scene: Scene, kind: str) -> str:
    """Name of a region as a prompt would say it ("lake", "trees", ...)."""
    if kind == "water" and scene.water is not None:
        return scene.water.variant
    if kind in ("tree", "house", "boat"):
        return kind + ("s" if len(scene.of(kind)) > 1 else "")
    return kind


def render_region_map(scene: Scene, size: int = 256
                      ) -> tuple[np.ndarray, dict[int, str], dict[int, RGB]]:
    """(label map (H, W) int32, {label: region name}, {label: scribble colour}).

    Labels are the stable ids of :data:`LABEL_IDS`; only labels visible in the map are
    listed. The colour of a label is its main colour in :func:`render_scribble`.
    """
    img, labels = _rasterise(scene, size, detailed=False)
    present = [int(v) for v in np.unique(labels)]
    id_to_kind = {v: k for k, v in LABEL_IDS.items()}
    names = {lab: region_name(scene, id_to_kind[lab]) for lab in present}
    colours: dict[int, RGB] = {}
    for lab in present:  # objects may share a colour word; a painted map needs distinct colours
        colours[lab] = _distinct(_main_colour(scene, id_to_kind[lab]), list(colours.values()))
    return labels.astype(np.int32), names, colours


def _distinct(colour: RGB, taken: list[RGB], gap: int = 24) -> RGB:
    """``colour``, or the nearest shade of it at least ``gap`` away (max channel) from ``taken``."""
    for k in range(0, 256, 8):
        for sign in (1, -1):
            candidate = tuple(int(np.clip(v + sign * k, 0, 255)) for v in colour)
            if all(max(abs(a - b) for a, b in zip(candidate, t)) >= gap for t in taken):
                return candidate  # type: ignore[return-value]
    return colour


def _main_colour(scene: Scene, kind: str) -> RGB:
    if kind == "sky":
        c = _rgb(scene.sky)
    elif kind == "ground":
        c = lit(scene.ground, scene.time)
    else:
        obj = scene.of(kind)[0]
        c = _rgb(obj.colour) if kind in ("sun", "moon", "clouds") else lit(obj.colour, scene.time)
    r, g, b = (int(v) for v in np.clip(np.round(c), 0, 255))
    return r, g, b


# -------------------------------------------------------------------------------- crops

# What an object-centred crop is centred on, with how often (small objects more often: the
# whole scenes show the big areas anyway).
_CROP_TARGETS = {"sun": 3.0, "moon": 3.0, "house": 2.0, "tree": 2.0, "boat": 2.0, "flowers": 1.5,
                 "field": 1.5, "mountains": 1.5, "clouds": 1.0, "water": 1.0, "hills": 1.0}
_CROP_MIN_SHARE = 0.06  # a kind is named in a crop's caption when it covers this much of it


@dataclass(frozen=True)
class Crop:
    """An object-centred square view of a scene: the window in image fractions and the
    share of the view each visible kind covers."""

    target: str
    x0: float
    y0: float
    side: float
    shares: dict[str, float]  # kind (or "sky", "ground") -> fraction of the view


def sample_crop(scene: Scene, rng: Rng, size: int = 128) -> Crop | None:
    """A square window (1/3 to 2/3 of the picture wide) centred near one object; None when
    the scene has nothing to centre on. ``size`` is the label-map resolution used to measure."""
    _, labels = _rasterise(scene, size, detailed=False)
    id_to_kind = {v: k for k, v in LABEL_IDS.items()}
    present = {id_to_kind[int(v)] for v in np.unique(labels)}
    kinds = [k for k in _CROP_TARGETS if k in present]
    if not kinds:
        return None
    weights = np.array([_CROP_TARGETS[k] for k in kinds])
    target = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    ys, xs = np.nonzero(labels == LABEL_IDS[target])
    pick = int(rng.integers(len(xs)))
    side = float(rng.uniform(1 / 3, 2 / 3))
    cx = (xs[pick] + 0.5) / size + rng.uniform(-0.15, 0.15) * side
    cy = (ys[pick] + 0.5) / size + rng.uniform(-0.15, 0.15) * side
    x0 = float(np.clip(cx - side / 2, 0.0, 1.0 - side))
    y0 = float(np.clip(cy - side / 2, 0.0, 1.0 - side))
    r0, r1 = int(round(y0 * size)), int(round((y0 + side) * size))
    c0, c1 = int(round(x0 * size)), int(round((x0 + side) * size))
    window = labels[r0:r1, c0:c1]
    shares = {id_to_kind[int(v)]: float(np.mean(window == v)) for v in np.unique(window)}
    return Crop(target, x0, y0, side, shares)


def render_crop(scene: Scene, crop: Crop, size: int = 256, style: str = "watercolor") -> np.ndarray:
    """The painting of ``scene`` rendered large enough that ``crop`` is ``size`` pixels wide,
    cut out: (size, size, 3) uint8."""
    big = int(np.ceil(size / crop.side / 8)) * 8
    img = render_painting(scene, big, style)
    r0, c0 = int(round(crop.y0 * big)), int(round(crop.x0 * big))
    out = img[r0:r0 + size, c0:c0 + size]
    if out.shape[:2] != (size, size):  # rounding at the far edge
        out = cv2.resize(img[r0:, c0:], (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


def _crop_scene(scene: Scene, crop: Crop) -> Scene:
    """The scene with only the objects the crop shows (so counts and colours are right)."""
    def inside(o: SceneObject) -> bool:
        if o.kind not in ("house", "tree", "boat", "clouds"):
            return True
        cy = o.y - o.h / 2 if o.kind in ("house", "tree", "boat") else o.y
        return crop.x0 <= o.x <= crop.x0 + crop.side and crop.y0 <= cy <= crop.y0 + crop.side
    kept = [o for o in scene.objects if inside(o)]
    return Scene(scene.seed, scene.time, scene.horizon, scene.sky, scene.sky_low, scene.ground, kept)


def crop_labels(crop: Crop) -> dict[str, bool]:
    """Presence of the attribute objects in a crop (as :func:`scene_labels`' "objects")."""
    shown = {_KIND_TO_ATTRIBUTE.get(k, k) for k, share in crop.shares.items() if share > 0}
    return {name: name in shown for name in ATTRIBUTE_OBJECTS}


def crop_sky_colour(scene: Scene, crop: Crop) -> str:
    """The sky colour word of the crop: the top colour high up, the horizon colour lower."""
    centre = crop.y0 + crop.side / 2
    return scene.sky if centre < 0.5 * scene.horizon else scene.sky_low


def crop_caption(scene: Scene, crop: Crop, style: str, rng: Rng) -> str:
    """Describe what a crop shows: its objects with their colours (largest first, the
    target always), its sky and ground, sometimes the time of day, and the style."""
    shown = _crop_scene(scene, crop)
    order = sorted((k for k in crop.shares if k not in ("sky", "ground")), key=lambda k: -crop.shares[k])
    kinds = [k for k in order if (k == crop.target or crop.shares[k] >= _CROP_MIN_SHARE) and shown.has(k)]
    if crop.target in kinds:  # the target first
        kinds.remove(crop.target)
        kinds.insert(0, crop.target)
    items = [coloured_phrase(shown, k, rng) if k == crop.target else _noun_phrase(shown, k, rng) for k in kinds[:3]]
    if crop.shares.get("ground", 0.0) >= 0.25 and rng.random() < 0.6:
        items.append(f"{scene.ground} ground")
    sky = ""
    if crop.shares.get("sky", 0.0) >= 0.15:
        colour = crop_sky_colour(scene, crop)
        sky = f" {_pick(rng, ['in', 'under'])} {_with_article(colour)} sky"
    style_phrase = _pick(rng, _STYLE_PHRASES[normalise_style(style)])
    times = [t for t in _TIME_PHRASES[scene.time] if not (sky and "sky" in t)]  # not "a sky under the sky"
    time_phrase = f" {_pick(rng, times)}" if rng.random() < 0.5 else ""
    subject = _join(items) if items else f"{_with_article(crop_sky_colour(scene, crop))} sky"
    if rng.random() < 0.5:
        text = f"{style_phrase} of {subject}{sky}{time_phrase}"
    else:
        text = f"{subject}{sky}{time_phrase}, {style_phrase}"
    return text[0].lower() + text[1:]


# ------------------------------------------------------------------------------- styles


def _noise(rng: Rng, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1], (size, size) float32."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """1 where a pixel's label differs from its right or lower neighbour, float32."""
    edge = np.zeros(labels.shape, np.float32)
    edge[:, :-1] += labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] += labels[:-1, :] != labels[1:, :]
    return np.minimum(edge, 1.0)


def _warp(rng: Rng, images: list[np.ndarray], amount: float, cells: int = 8) -> list[np.ndarray]:
    """Displace images by one smooth random field (labels use nearest neighbour)."""
    size = images[0].shape[0]
    dx = (_noise(rng, size, cells) - 0.5) * 2 * amount
    dy = (_noise(rng, size, cells) - 0.5) * 2 * amount
    gx, gy = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    mx, my = gx + dx, gy + dy
    out = []
    for im in images:
        interp = cv2.INTER_NEAREST if im.dtype == np.uint8 and im.ndim == 2 else cv2.INTER_LINEAR
        out.append(cv2.remap(im, mx, my, interp, borderMode=cv2.BORDER_REFLECT))
    return out


def _paper(rng: Rng, size: int, strength: float) -> np.ndarray:
    """Paper grain: a multiplicative (H, W, 1) texture around 1."""
    fine = rng.random((size, size)).astype(np.float32)
    fine = cv2.GaussianBlur(fine, (0, 0), 0.7)
    coarse = _noise(rng, size, max(4, size // 16))
    grain = 0.6 * fine + 0.4 * coarse
    return (1.0 - strength * (grain - 0.5) * 2)[..., None]


def _saturate(img: np.ndarray, amount: float) -> np.ndarray:
    grey = img.mean(axis=2, keepdims=True)
    return grey + (img - grey) * amount


def _style_watercolor(base: np.ndarray, labels: np.ndarray, rng: Rng) -> np.ndarray:
    size = base.shape[0]
    s = size / 256
    warped, lab = _warp(rng, [base, labels], 3.0 * s, cells=10)
    wet = cv2.GaussianBlur(warped, (0, 0), 2.2 * s)
    img = 0.55 * wet + 0.45 * cv2.GaussianBlur(warped, (0, 0), 0.8 * s)
    img = 255 - (255 - img) * 0.78  # transparent pigment on white paper
    edges = cv2.GaussianBlur(_boundaries(lab), (0, 0), 1.3 * s)
    img *= (1.0 - 0.55 * np.clip(edges * 2.2, 0, 1))[..., None]  # pigment pools at edges
    blotches = _noise(rng, size, max(4, size // 20))
    img *= (0.9 + 0.14 * blotches)[..., None]  # uneven washes
    img = 255 - (255 - img) * _paper(rng, size, 0.12)  # granulation follows the paper
    ramp = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    border = np.minimum(ramp[None, :], ramp[:, None])
    ragged = border + _noise(rng, size, 12) * 6 * s
    keep = np.clip((ragged - 2.5 * s) / (3 * s), 0, 1)[..., None]
    paper = np.array([246, 242, 232], np.float32)
    return img * keep + paper * (1 - keep)


def _stroke_angles(base: np.ndarray, rng: Rng, sigma: float) -> np.ndarray:
    """Brush direction per pixel: along edges where there are edges, swirling elsewhere."""
    lum = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3)
    jxx = cv2.GaussianBlur(gx * gx, (0, 0), sigma)
    jyy = cv2.GaussianBlur(gy * gy, (0, 0), sigma)
    jxy = cv2.GaussianBlur(gx * gy, (0, 0), sigma)
    along = 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2
    strength = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2)
    swirl = (_noise(rng, base.shape[0], 5) - 0.5) * 2.0 + rng.uniform(-0.3, 0.3)
    weight = np.clip(strength / (strength.mean() * 2 + 1e-3), 0, 1)
    return weight * along + (1 - weight) * swirl


def _style_oil(base: np.ndarray, labels: np.ndarray, rng: Rng) -> np.ndarray:
    size = base.shape[0]
    spacing = max(2.0, size / 52)
    canvas = np.zeros((size, size, 4), np.uint8)
    canvas[..., :3] = np.clip(cv2.GaussianBlur(base, (0, 0), spacing), 0, 255)
    canvas[..., 3] = 100
    angles = _stroke_angles(base, rng, spacing)
    for scale, density in ((1.6, 0.55), (1.0, 1.0)):
        _paint_strokes(canvas, base, angles, rng, spacing * scale, density)
    small = np.isin(labels, [LABEL_IDS[k] for k in ("sun", "moon", "house", "tree", "boat")])
    if small.any():  # fine strokes keep small objects readable
        near = cv2.dilate(small.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        _paint_strokes(canvas, base, angles, rng, spacing * 0.5, 1.0, where=near)
    colour = canvas[..., :3].astype(np.float32)
    height = cv2.GaussianBlur(canvas[..., 3].astype(np.float32), (0, 0), 0.8)
    bristles = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 0.6) * 18
    height = height + bristles
    hx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    hy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    light = np.clip(-(hx * 0.7 + hy * 0.7) / 1100.0, -0.22, 0.22)
    img = colour * (1.0 + light[..., None]) + np.maximum(light, 0)[..., None] * 60
    return _saturate(img, 1.15)


def _paint_strokes(canvas: np.ndarray, base: np.ndarray, angles: np.ndarray, rng: Rng,
                   spacing: float, density: float, where: np.ndarray | None = None) -> None:
    """Short thick strokes on a jittered grid, colour from ``base``, random order
    (only at pixels where ``where`` is True, if given)."""
    size = base.shape[0]
    n = int(size / spacing)
    gy, gx = np.mgrid[0:n, 0:n].reshape(2, -1).astype(np.float32)
    keep = rng.random(gx.size) < density
    xs = np.clip((gx[keep] + rng.random(keep.sum())) * spacing, 0, size - 1).astype(np.int32)
    ys = np.clip((gy[keep] + rng.random(keep.sum())) * spacing, 0, size - 1).astype(np.int32)
    if where is not None:
        inside = where[ys, xs]
        xs, ys = xs[inside], ys[inside]
    order = rng.permutation(len(xs))
    xs, ys = xs[order], ys[order]
    theta = angles[ys, xs] + rng.normal(0, 0.15, len(xs))
    length = spacing * rng.uniform(0.9, 1.8, len(xs))
    dx, dy = np.cos(theta) * length, np.sin(theta) * length
    cols = np.clip(base[ys, xs] * rng.uniform(0.9, 1.1, (len(xs), 1)) + rng.normal(0, 6, (len(xs), 3)), 0, 255)
    heights = rng.uniform(110, 255, len(xs))
    thick = max(1, int(round(spacing * 0.8)))
    starts = np.stack([xs - dx, ys - dy], 1).astype(int).tolist()
    ends = np.stack([xs + dx, ys + dy], 1).astype(int).tolist()
    paints = np.concatenate([cols, heights[:, None]], 1).tolist()  # colour + paint height
    for p0, p1, paint in zip(starts, ends, paints):
        cv2.line(canvas, p0, p1, paint, thick, cv2.LINE_AA)


def _style_poster(base: np.ndarray, labels: np.ndarray, rng: Rng) -> np.ndarray:
    size = base.shape[0]
    img = _saturate(base, 1.3) * 1.04
    img = np.round(img / 32.0) * 32.0  # few inks per channel
    lines = _boundaries(labels)
    thick = max(1, int(round(size / 128)))
    lines = cv2.dilate(lines, np.ones((thick + 1, thick + 1), np.uint8))
    grey = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    detail = (cv2.Canny(grey, 60, 140) > 0).astype(np.float32)
    lines = np.maximum(lines, detail * 0.7)
    ink = np.array([30, 26, 40], np.float32)
    img = img * (1 - lines[..., None]) + ink * lines[..., None]
    frame = max(2, size // 40)
    img[:frame], img[-frame:], img[:, :frame], img[:, -frame:] = 245, 245, 245, 245
    return img


def _style_pointillism(base: np.ndarray, labels: np.ndarray, rng: Rng) -> np.ndarray:
    size = base.shape[0]
    paper = np.array([240, 234, 220], np.float32)
    img = 0.55 * paper + 0.45 * cv2.GaussianBlur(base, (0, 0), size / 100)
    cell = max(3, int(round(size / 48)))
    smooth = cv2.GaussianBlur(base, (0, 0), 1.0)
    half = cell // 2
    for oy, ox in ((0, 0), (half, half), (0, half), (half, 0)):
        img = _dot_layer(img, smooth, rng, cell, ox, oy)
    return _saturate(img, 1.2)


def _dot_layer(img: np.ndarray, colours: np.ndarray, rng: Rng, cell: int, ox: int, oy: int) -> np.ndarray:
    """One layer of round dots, one per grid cell, blended with soft edges.

    Cell (i, j) covers pixels [i*cell - cell + oy, ...) x [j*cell - cell + ox, ...); the
    per-pixel work is done on a (n, cell, n, cell) view, so no gathers are needed.
    """
    size = img.shape[0]
    n = size // cell + 2
    centre_x = ((0.5 + rng.uniform(-0.12, 0.12, (n, n))) * cell).astype(np.float32)
    centre_y = ((0.5 + rng.uniform(-0.12, 0.12, (n, n))) * cell).astype(np.float32)
    radius = (rng.uniform(0.3, 0.48, (n, n)) * cell).astype(np.float32)
    present = (rng.random((n, n)) < 0.85).astype(np.float32)
    sx = np.clip(np.arange(n)[None, :] * cell - cell + ox + centre_x, 0, size - 1).astype(int)
    sy = np.clip(np.arange(n)[:, None] * cell - cell + oy + centre_y, 0, size - 1).astype(int)
    dot = colours[sy, sx] * rng.uniform(0.85, 1.15, (n, n, 1)) + rng.normal(0, 9, (n, n, 3))
    shift = rng.random((n, n)) < 0.18  # divisionism: a few dots in a neighbouring hue
    dot[shift] = dot[shift][:, [1, 2, 0]] * 0.35 + dot[shift] * 0.65
    u = np.arange(cell, dtype=np.float32) + 0.5
    dx = u[None, None, None, :] - centre_x[:, None, :, None]
    dy = u[None, :, None, None] - centre_y[:, None, :, None]
    alpha = np.clip((radius[:, None, :, None] - np.sqrt(dx * dx + dy * dy)) * 1.2, 0, 1)
    alpha *= present[:, None, :, None]
    big = n * cell
    alpha = alpha.reshape(big, big)
    colour = np.broadcast_to(dot.astype(np.float32)[:, None, :, None, :], (n, cell, n, cell, 3))
    colour = colour.reshape(big, big, 3)
    y0, x0 = cell - oy, cell - ox
    a = alpha[y0:y0 + size, x0:x0 + size, None]
    return img * (1 - a) + colour[y0:y0 + size, x0:x0 + size] * a


def _style_ink(base: np.ndarray, labels: np.ndarray, rng: Rng) -> np.ndarray:
    size = base.shape[0]
    s = size / 256
    warped, lab = _warp(rng, [base, labels], 1.2 * s, cells=16)
    tone = cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY) / 255.0
    tone = cv2.GaussianBlur(tone, (0, 0), 1.0 * s)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wobble = (_noise(rng, size, 12) - 0.5) * 4 * s
    period = max(3.0, 5.0 * s)
    ink = np.zeros((size, size), np.float32)
    for threshold, coord in ((0.62, xx + yy), (0.42, xx - yy), (0.24, yy * 1.4)):
        lines = (np.mod(coord + wobble, period) < 1.0 * max(1.0, s)).astype(np.float32)
        ink = np.maximum(ink, lines * (tone < threshold + 0.05 * (_noise(rng, size, 6) - 0.5)))
    outline = _boundaries(lab)
    grey = np.clip(warped, 0, 255).astype(np.uint8)
    detail = (cv2.Canny(cv2.cvtColor(grey, cv2.COLOR_RGB2GRAY), 50, 120) > 0).astype(np.float32)
    outline = np.maximum(outline, detail)
    outline = cv2.dilate(outline, np.ones((2, 2), np.uint8)) if s >= 1 else outline
    broken = _noise(rng, size, 24) > 0.18
    ink = np.maximum(ink * 0.75, outline * broken)
    paper = np.array([246, 240, 226], np.float32)
    wash = paper * (0.78 + 0.22 * tone[..., None])  # a light ink wash under the lines
    sepia = np.array([40, 32, 30], np.float32)
    img = wash * (1 - ink[..., None]) + sepia * ink[..., None]
    return img * _paper(rng, size, 0.05)


_STYLE_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray, Rng], np.ndarray]] = {
    "watercolor": _style_watercolor, "oil": _style_oil, "poster": _style_poster,
    "pointillism": _style_pointillism, "ink": _style_ink,
}


def normalise_style(style: str) -> str:
    """Canonical style name (accepts aliases such as "watercolour", "impasto")."""
    key = style.strip().lower()
    key = STYLE_ALIASES.get(key, key)
    if key not in _STYLE_FUNCS:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    return key


def render_painting(scene: Scene, size: int = 256, style: str = "watercolor") -> np.ndarray:
    """Render ``scene`` as a painting in ``style``: (size, size, 3) uint8, deterministic."""
    style = normalise_style(style)
    rng = np.random.default_rng([scene.seed, STYLES.index(style), size])
    bands = 5 if style == "poster" else None
    base, labels = _rasterise(scene, size, detailed=True, bands=bands, rng=rng)
    img = _STYLE_FUNCS[style](base, labels, rng)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ captions

_STYLE_PHRASES = {
    "watercolor": ["a watercolor painting", "a watercolor", "watercolor", "a soft watercolor painting",
                   "a loose watercolor sketch"],
    "oil": ["an oil painting", "an impasto oil painting", "a thick oil painting", "oil on canvas"],
    "poster": ["a flat poster", "a vintage travel poster", "a flat vector poster",
               "a poster illustration"],
    "pointillism": ["a pointillist painting", "a pointillism painting", "a pointillist dot painting"],
    "ink": ["an ink sketch", "a pen and ink drawing", "an ink drawing", "an ink and wash sketch"],
}
_TIME_PHRASES = {
    "day": ["during the day", "on a sunny day", "in daytime", "by day"],
    "sunset": ["at sunset", "during sunset", "in the sunset light"],
    "night": ["at night", "by night", "under the night sky"],
}
_TIME_ADJ = {"day": "daytime", "sunset": "sunset", "night": "night"}
_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven"]
_PLACE_PHRASES = {"left": "on the left", "right": "on the right", "centre": "in the middle"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _where(objs: list[SceneObject], rng: Rng) -> str:
    """An optional place phrase when all instances agree on a place or depth."""
    if rng.random() > 0.45:
        return ""
    places, depths = {o.place for o in objs}, {o.depth for o in objs}
    options = []
    if objs[0].kind == "hills" or objs[0].variant == "sea":
        return ""
    if len(places) == 1:
        options.append(_PLACE_PHRASES[places.pop()])
    if len(depths) == 1 and objs[0].kind not in ("sun", "moon", "clouds", "mountains", "hills"):
        options.append(f"in the {depths.pop()}")
    return " " + _pick(rng, options) if options else ""


def _counted(objs: list[SceneObject], singular: str, plural: str, adjective: str) -> str:
    n = len(objs)
    adj = f"{adjective} " if adjective else ""
    if n == 1:
        return _with_article(f"{adj}{singular}")
    return f"{_NUMBERS[min(n, 7)]} {adj}{plural}"


def _noun_phrase(scene: Scene, kind: str, rng: Rng) -> str:
    objs = scene.of(kind)
    o = objs[0]
    c = o.colour
    if kind == "sun":
        return _with_article(f"{c} sun")
    if kind == "moon":
        return _with_article(f"{c} {'crescent moon' if o.variant == 'crescent' else 'moon'}")
    if kind == "clouds":
        return _counted(objs, "cloud", "clouds", c) if rng.random() < 0.5 else f"{c} clouds"
    if kind == "mountains":
        return (f"snowy {c} mountains" if o.variant == "snowy" else
                _pick(rng, [f"{c} mountains", f"a range of {c} mountains"]))
    if kind == "hills":
        return _pick(rng, [f"{c} hills", f"rolling {c} hills"])
    if kind == "water":
        return _pick(rng, [_with_article(f"{c} {o.variant}"), f"a {o.variant}"]) if o.variant != "sea" \
            else _pick(rng, ["the sea", f"a {c} sea"])
    if kind == "field":
        return _pick(rng, [_with_article(f"{c} field"), f"a field of {c} grass"
                           if c in ("green", "ochre") else _with_article(f"{c} field")])
    if kind == "flowers":
        return _pick(rng, [f"{c} flowers", f"a patch of {c} flowers", f"a meadow of {c} flowers"])
    if kind == "house":
        noun = _counted(objs, "house", "houses", c)
        return noun + (f" with {_with_article(o.colour2)} roof" if len(objs) == 1 and rng.random() < 0.5
                       else f" with {o.colour2} roofs" if len(objs) > 1 and rng.random() < 0.3 else "")
    if kind == "tree":
        return _counted(objs, "pine tree" if o.variant == "pine" else "tree",
                        "pine trees" if o.variant == "pine" else "trees", c)
    if kind == "boat":
        word = "sailboat" if o.variant == "sailboat" else "boat"
        noun = _counted(objs, word, word + "s", c)
        return noun + (f" with {o.colour2} sails" if o.colour2 and rng.random() < 0.3 else "")
    raise ValueError(kind)


def coloured_phrase(scene: Scene, kind: str, rng: Rng) -> str:
    """How a caption names the objects of one kind, always with their colour ("a turquoise river", not "a river")."""
    phrase = _noun_phrase(scene, kind, rng)
    obj = scene.of(kind)[0]
    if obj.colour not in phrase:  # water may be "a river" / "the sea"
        phrase = _with_article(f"{obj.colour} {region_name(scene, kind)}")
    return phrase


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" before it."""
    return _with_article(phrase)


def style_phrase(style: str, rng: Rng) -> str:
    """One of the ways a caption names ``style`` ("a watercolor painting", "oil on canvas")."""
    return _pick(rng, _STYLE_PHRASES[normalise_style(style)])


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _scene_noun(scene: Scene, rng: Rng) -> str:
    water = scene.water
    options = ["landscape", "countryside scene"]
    if water is not None and water.variant == "sea":
        options = ["seascape", "coastal landscape"]
    elif scene.has("mountains"):
        options.append("mountain landscape")
    if water is not None and water.variant == "lake":
        options.append("lakeside landscape")
    return _pick(rng, options)


def _object_phrases(scene: Scene, rng: Rng) -> tuple[str | None, list[str]]:
    """(an optional "X over Y" lead phrase, the other object phrases in random order)."""
    kinds = [k for k in ("sun", "moon", "mountains", "water", "hills", "field", "flowers", "house",
                         "tree", "boat", "clouds") if scene.has(k)]
    kinds = [k for k in kinds if not (k in ("clouds", "hills") and rng.random() < 0.35)]
    phrases = {k: _noun_phrase(scene, k, rng) + _where(scene.of(k), rng) for k in kinds}
    lead = None
    light = next((k for k in ("sun", "moon") if k in phrases), None)
    below = [k for k in ("mountains", "water", "hills") if k in phrases]
    if light and below and rng.random() < 0.6:
        target = _pick(rng, below)
        lead = f"{phrases.pop(light)} {_pick(rng, ['over', 'above', 'rising over'])} {phrases.pop(target)}"
    rest = list(phrases.values())
    order = rng.permutation(len(rest))
    return lead, [rest[i] for i in order]


def caption(scene: Scene, style: str, rng: Rng) -> str:
    """Describe ``scene`` painted in ``style``: names the style, the time of day, the
    objects with their colours and sometimes their places, in varied phrasing."""
    style = normalise_style(style)
    style_phrase = _pick(rng, _STYLE_PHRASES[style])
    time_phrase = _pick(rng, _TIME_PHRASES[scene.time])
    lead, rest = _object_phrases(scene, rng)
    items = ([lead] if lead else []) + rest
    sky = f" under {_with_article(scene.sky)} sky" if rng.random() < 0.2 else ""
    if not items:
        items = [f"an empty {_scene_noun(scene, rng)}"]
    template = int(rng.integers(5))
    if template == 0:
        text = f"{style_phrase} of {_join(items)}{sky} {time_phrase}"
    elif template == 1 and lead:
        tail = f" with {_join(rest)}" if rest else ""
        text = f"{style_phrase} of {lead} {time_phrase}{tail}"
    elif template == 2:
        noun = _with_article(f"{_TIME_ADJ[scene.time]} {_scene_noun(scene, rng)}")
        text = f"{noun} with {_join(items)}, {style_phrase}"
    elif template == 3:
        text = f"{_join(items)} {time_phrase}{sky}, {style_phrase}"
    else:
        text = f"{style_phrase}: {_join(items)}, {time_phrase}"
    return text[0].lower() + text[1:]


def scene_labels(scene: Scene, style: str) -> dict:
    """Attribute labels for a classifier: style, time of day, presence of main objects."""
    present = {_KIND_TO_ATTRIBUTE.get(o.kind, o.kind) for o in scene.objects}
    water = scene.water
    return {
        "style": normalise_style(style),
        "time": scene.time,
        "objects": {name: name in present for name in ATTRIBUTE_OBJECTS},
        "water": water.variant if water is not None else None,
    }


def scene_object_names(scene: Scene) -> list[str]:
    """Sorted names of the object kinds present ("boats", "lake", "sun", ...)."""
    names = set()
    for o in scene.objects:
        names.add(o.variant if o.kind == "water" else _KIND_TO_ATTRIBUTE.get(o.kind, o.kind))
    return sorted(names)
