"""Colour extraction for region maps and scribbles, canvas JSON rendering, scribble alpha:
the app's pure-numpy helpers (no streamlit)."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio_ui.canvas import compose, drawing_colors, render_drawing, scale_drawing
from core.colors import (extract_regions, flatten, is_background, majority_filter, readable_name,
                              region_label_image, swatch_data_url, to_hex, to_rgb)
from studio_ui.methods import strokes_image

RED, BLUE, GREEN, WHITE = (229, 57, 53), (30, 136, 229), (67, 160, 71), (255, 255, 255)


def painted_map(size: int = 128, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """White map with a red disc and a blue bar, anti-aliased by 4x supersampling.

    Returns the image and the exact (4x-downsampled majority) red mask."""
    big = Image.new("RGB", (size * 4, size * 4), WHITE)
    draw = ImageDraw.Draw(big)
    draw.ellipse([40, 40, 260, 260], fill=RED)
    draw.rectangle([300, 60, 460, 420], fill=BLUE)
    exact = np.asarray(big.resize((size, size), Image.NEAREST))
    image = big.resize((size, size), Image.LANCZOS if antialias else Image.NEAREST)
    return np.asarray(image), (exact == RED).all(-1)


@pytest.mark.parametrize("text,rgb", [("#ff8800", (255, 136, 0)), ("F80", (255, 136, 0)), ("rgb(1, 2, 3)", (1, 2, 3)),
                                      ("rgba(10,20,30,0.5)", (10, 20, 30)), ("white", WHITE), ((1, 2, 3, 4), (1, 2, 3))])
def test_colour_parsing(text, rgb) -> None:
    assert to_rgb(text) == rgb
    assert to_hex(text) == "#%02x%02x%02x" % rgb


def test_bad_colour_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="#rrggbb"):
        to_rgb("not-a-colour")


def test_flat_map_gives_exact_regions() -> None:
    image, red_mask = painted_map(antialias=False)
    regions = extract_regions(image)
    assert {r.color for r in regions} == {RED, BLUE, WHITE}
    red = next(r for r in regions if r.color == RED)
    assert np.array_equal(red.mask, red_mask)
    assert sum(r.mask.sum() for r in regions) == image.shape[0] * image.shape[1]  # a partition
    assert regions == sorted(regions, key=lambda r: -r.fraction)


def test_antialiased_edges_join_the_painted_colours() -> None:
    image, red_mask = painted_map(antialias=True)
    assert len({tuple(p) for p in image.reshape(-1, 3)}) > 20  # many in-between edge colours
    regions = extract_regions(image)
    assert {r.color for r in regions} == {RED, BLUE, WHITE}
    red = next(r for r in regions if r.color == RED)
    assert abs(int(red.mask.sum()) - int(red_mask.sum())) <= 0.03 * red_mask.sum()
    total = np.zeros(red.mask.shape, int)
    for r in regions:
        total += r.mask
    assert (total == 1).all()  # every pixel in exactly one region


def test_specks_are_dropped_and_jpeg_noise_merged() -> None:
    image, _ = painted_map(antialias=True)
    noisy = image.copy()
    noisy[5, 5] = noisy[100, 20] = noisy[7, 120] = GREEN  # three stray pixels
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=80)
    jpeg = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    regions = extract_regions(jpeg)
    assert len(regions) == 3
    for found, want in zip(sorted(r.color for r in regions), sorted([RED, BLUE, WHITE])):
        assert np.abs(np.subtract(found, want)).max() <= 24
    assert all(r.fraction >= 0.002 for r in regions)


def test_transparent_pixels_are_background() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (*RED, 255)
    regions = extract_regions(rgba)
    assert {r.color for r in regions} == {RED, WHITE}
    assert flatten(rgba)[0, 0].tolist() == list(WHITE)


def test_label_image_and_majority_filter() -> None:
    image, _ = painted_map(antialias=True)
    regions = extract_regions(image)
    clean = region_label_image(regions)
    assert {tuple(p) for p in clean.reshape(-1, 3)} == {RED, BLUE, WHITE}
    labels = np.zeros((9, 9), int)
    labels[4, 4] = 1  # a lone pixel is voted away
    assert majority_filter(labels, 2).sum() == 0


def test_single_colour_and_names() -> None:
    assert [r.color for r in extract_regions(np.full((16, 16, 3), 200, np.uint8))] == [(200, 200, 200)]
    assert readable_name("#e53935") == "red" and readable_name("#1e88e5") == "blue"
    assert readable_name("#ffffff") == "white" and readable_name("#212121") == "black"
    assert is_background(WHITE) and not is_background(RED)
    assert swatch_data_url("#e53935").startswith("data:image/png;base64,")


# --- canvas JSON -> image -----------------------------------------------------------------------

def drawing(*objects: dict) -> dict:
    return {"version": "7.4.0", "objects": list(objects)}


def test_render_rect_circle_line_polygon_and_path() -> None:
    rect = {"type": "Rect", "left": 10, "top": 20, "width": 30, "height": 20, "fill": "#e53935", "stroke": "#e53935",
            "strokeWidth": 2, "originX": "left", "originY": "top", "scaleX": 1, "scaleY": 1, "angle": 0,
            "strokeUniform": True}
    circle = {"type": "Circle", "left": 60, "top": 70, "radius": 10, "width": 20, "height": 20, "fill": "#1e88e5",
              "stroke": "#1e88e5", "strokeWidth": 0, "originX": "left", "originY": "center", "angle": 0}
    line = {"type": "Line", "left": 10, "top": 90, "width": 80, "height": 0, "x1": -40, "y1": 0, "x2": 40, "y2": 0,
            "stroke": "#43a047", "strokeWidth": 4, "originX": "left", "originY": "center"}
    path = {"type": "Path", "left": 52, "top": 17, "width": 20, "height": 0, "stroke": "#212121", "strokeWidth": 6,
            "fill": None, "originX": "left", "originY": "top",
            "path": [["M", 55, 20], ["Q", 60, 20, 65, 20], ["L", 75, 20]]}
    image = np.asarray(render_drawing(drawing(rect, circle, line, path), 100, 100))
    assert tuple(image[30, 25]) == to_rgb("#e53935")  # inside the rectangle
    assert tuple(image[70, 70]) == to_rgb("#1e88e5")  # the circle's centre: left + radius
    assert tuple(image[90, 50]) == to_rgb("#43a047")
    assert tuple(image[5, 5]) == WHITE
    assert (image[15:30, 50:80] == to_rgb("#212121")).all(-1).any()  # the free-draw stroke is there
    polygon = {"type": "Polygon", "left": 0, "top": 0, "width": 40, "height": 40, "fill": "#fdd835", "stroke": None,
               "strokeWidth": 0, "originX": "left", "originY": "top",
               "points": [{"x": 10, "y": 10}, {"x": 50, "y": 10}, {"x": 50, "y": 50}, {"x": 10, "y": 50}]}
    image = np.asarray(render_drawing(drawing(polygon), 100, 100))
    assert tuple(image[20, 20]) == to_rgb("#fdd835") and tuple(image[60, 60]) == WHITE
    assert drawing_colors(drawing(rect, circle)) == ["#e53935", "#1e88e5"]


def test_scale_drawing_and_compose_over_background() -> None:
    rect = {"type": "Rect", "left": 10, "top": 10, "width": 10, "height": 10, "fill": "#e53935", "stroke": None,
            "originX": "left", "originY": "top"}
    scaled = scale_drawing(drawing(rect), 2, 2)
    image = np.asarray(render_drawing(scaled, 60, 60))
    assert tuple(image[35, 35]) == to_rgb("#e53935") and tuple(image[45, 45]) == WHITE
    strokes = np.zeros((20, 20, 4), np.uint8)
    strokes[5:10, 5:10] = (*RED, 255)
    background = Image.new("RGB", (40, 40), BLUE)
    out = np.asarray(compose(strokes, 20, 20, background))
    assert tuple(out[7, 7]) == RED and tuple(out[15, 15]) == BLUE


def test_strokes_image_leaves_white_free() -> None:
    image = Image.new("RGB", (16, 16), WHITE)
    ImageDraw.Draw(image).rectangle([4, 4, 8, 8], fill=RED)
    free = np.asarray(strokes_image(image, free_background=True))
    assert free.shape[-1] == 4 and free[0, 0, 3] == 0 and free[5, 5, 3] == 255
    assert strokes_image(image, free_background=False).mode == "RGB"
    assert strokes_image(Image.new("RGB", (8, 8), WHITE), True).mode == "RGB"  # nothing painted: stays RGB


def test_ui_helpers_never_import_streamlit() -> None:
    code = ("import sys; import core.colors, studio_ui.canvas, studio_ui.jobs, studio_ui.gallery, "
            "studio_ui.methods; assert 'streamlit' not in sys.modules, 'streamlit imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
