"""README sample grids (training.grids) on the tiny model at 64 px: layout, tiles, determinism, CLI."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.panorama import MultiDiffusionRequest
from core.requests import GenerationRequest
from core.stroke_guidance import stroke_request
from training import grids as G
from training import procedural as P

TILE = 64


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def tile(grid: Image.Image, layout: G.Layout, row: int, col: int) -> np.ndarray:
    return pixels(grid.crop(layout.box(row, col)))


def direct(engine, request) -> np.ndarray:
    """The image of ``request`` run on its own (what the grid's tile must be)."""
    return pixels(engine.run(request).images[0])


def scene_layout(rows: int) -> G.Layout:
    return G.Layout(rows, 3, TILE, header=G.text_band(TILE, 1), caption=G.text_band(TILE, G.CAPTION_LINES))


def bigrams(text: str) -> set[tuple[str, str]]:
    words = re.findall(r"[a-z]+", text.lower())
    return set(zip(words, words[1:]))


# --- prompts -----------------------------------------------------------------------------------------


def test_prompts_cover_every_style_and_time_in_the_caption_grammar() -> None:
    assert len(G.PROMPTS) == 8 and len(set(G.PROMPTS)) == 8
    for style in P.STYLES:
        assert any(P.STYLE_KEYWORDS[style] in p for p in G.PROMPTS), style
    for time_words in (("by day", "sunny day", "during the day"), ("sunset",), ("night",)):
        assert any(w in p for p in G.PROMPTS for w in time_words), time_words
    rng = np.random.default_rng(0)
    seen: set[tuple[str, str]] = set()  # word pairs of the training captions
    for seed in range(300):
        scene = P.sample_scene(seed)
        for style in P.STYLES:
            seen |= bigrams(P.caption(scene, style, rng))
    for prompt in G.PROMPTS:
        assert not bigrams(prompt) - seen, (prompt, bigrams(prompt) - seen)


def test_layout_boxes_tile_the_grid_without_overlap() -> None:
    layout = G.Layout(2, 3, TILE, header=10, caption=20)
    assert layout.size == (G.GAP + 3 * (TILE + G.GAP), G.GAP + 10 + 2 * (TILE + 20 + G.GAP))
    boxes = [layout.box(r, c) for r in range(2) for c in range(3)]
    assert boxes[0] == (G.GAP, G.GAP + 10, G.GAP + TILE, G.GAP + 10 + TILE)
    assert boxes[-1][2] == layout.size[0] - G.GAP and boxes[-1][3] == layout.size[1] - G.GAP - 20
    assert len({b[:2] for b in boxes}) == 6


def test_wrap_keeps_lines_within_the_width_and_marks_cut_text() -> None:
    font = G.load_font(TILE)
    text = "a watercolor painting of a red sun over purple mountains at sunset"
    lines = G.wrap(text, font, 60, 2)
    assert len(lines) == 2 and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 60 for line in lines)
    assert " ".join(G.wrap(text, font, 1000, 3)) == text


def test_prompt_grid_places_each_prompt_and_seed_and_is_deterministic(tiny_engine) -> None:
    prompts = G.PROMPTS[:3]
    grid = G.prompt_grid(tiny_engine, prompts, seeds=2, size=TILE, steps=1, seed=7, cols=4)
    layout = G.Layout(2, 4, TILE, caption=G.text_band(TILE, G.CAPTION_LINES))  # 6 tiles in rows of 4
    assert grid.size == layout.size == (G.GAP + 4 * (TILE + G.GAP), G.GAP + 2 * (TILE + layout.caption + G.GAP))
    # tile 5 (row 1, col 1) is the third prompt at the second seed
    request = GenerationRequest(prompt=prompts[2], width=TILE, height=TILE, steps=1, seed=8)
    assert np.array_equal(tile(grid, layout, 1, 1), direct(tiny_engine, request))
    assert not np.array_equal(tile(grid, layout, 1, 0), tile(grid, layout, 1, 1))  # seeds 7 and 8 differ
    assert (tile(grid, layout, 1, 3) == 255).all()  # no seventh tile: blank
    left, _, right, bottom = layout.box(0, 0)
    band = pixels(grid.crop((left, bottom, right, bottom + layout.caption)))
    assert (band < 128).any()  # the caption is written under the tile
    again = G.prompt_grid(tiny_engine, prompts, seeds=2, size=TILE, steps=1, seed=7, cols=4)
    assert np.array_equal(pixels(grid), pixels(again))


# --- scribbles ---------------------------------------------------------------------------------------


def test_scribble_grid_columns_are_the_scribble_gradop_and_text_only(tiny_engine) -> None:
    scenes = G.SCRIBBLE_SCENES[:2]
    grid = G.scribble_grid(tiny_engine, scenes, size=TILE, steps=3, seed=5)  # 3 steps: one guided step
    layout = scene_layout(2)
    assert grid.size == layout.size
    for row, (scene_seed, style) in enumerate(scenes):
        scribble = P.render_scribble(P.sample_scene(scene_seed), TILE)
        assert np.array_equal(tile(grid, layout, row, 0), scribble)
    scene_seed, style = scenes[1]
    prompt = G.scene_caption(scene_seed, style)
    stroke = stroke_request(prompt, Image.fromarray(P.render_scribble(P.sample_scene(scene_seed), TILE)), steps=3,
                            seed=5)
    text = GenerationRequest(prompt=prompt, width=TILE, height=TILE, steps=3, seed=5, scheduler="ddim")
    assert np.array_equal(tile(grid, layout, 1, 1), direct(tiny_engine, stroke))
    assert np.array_equal(tile(grid, layout, 1, 2), direct(tiny_engine, text))
    assert not np.array_equal(tile(grid, layout, 1, 1), tile(grid, layout, 1, 2))  # the scribble changed it
    again = G.scribble_grid(tiny_engine, scenes, size=TILE, steps=3, seed=5)
    assert np.array_equal(pixels(grid), pixels(again))


# --- regions -----------------------------------------------------------------------------------------


def test_region_map_gives_every_colour_a_prompt_and_sky_and_ground_are_background() -> None:
    seed, style = G.REGION_SCENES[0]
    regions = G.region_map(seed, style, TILE)
    rgb = pixels(regions.image)
    colours = {"#{:02x}{:02x}{:02x}".format(*c) for c in np.unique(rgb.reshape(-1, 3), axis=0)}
    assert colours == set(regions.prompts) == set(regions.names)
    assert len(colours) == len(np.unique(regions.labels))  # one colour per region, none merged
    for colour, name in regions.names.items():
        prompt = regions.prompts[colour]
        if name in G.BACKGROUND_KINDS:
            assert prompt is None
        else:
            assert prompt.startswith(G.STYLE_PHRASE[style] + " of ") and name in prompt
    found, _ = G.fusion_regions(regions)
    assert found and {r.prompt for r in found} <= set(regions.prompts.values())


def test_regions_of_one_colour_word_stay_separate_in_the_map() -> None:
    for seed in (2, 4):  # houses and mountains (4), a boat and houses (2) share a colour word
        regions = G.region_map(seed, "oil", TILE)
        assert len(regions.prompts) == len(np.unique(regions.labels))


def test_region_grid_columns_are_the_map_fusion_and_text_only(tiny_engine) -> None:
    scenes = G.REGION_SCENES[:1]
    grid = G.region_grid(tiny_engine, scenes, size=TILE, steps=2, seed=3)
    layout = scene_layout(1)
    assert grid.size == layout.size
    seed, style = scenes[0]
    regions = G.region_map(seed, style, TILE)
    assert np.array_equal(tile(grid, layout, 0, 0), pixels(G.named_map(regions, TILE)))
    prompt = G.scene_caption(seed, style)
    found, _ = G.fusion_regions(regions)
    fused = MultiDiffusionRequest(prompt=prompt, regions=tuple(found), kind="regions", width=TILE, height=TILE,
                                  steps=2, seed=3)
    assert np.array_equal(tile(grid, layout, 0, 1), direct(tiny_engine, fused))
    text = GenerationRequest(prompt=prompt, width=TILE, height=TILE, steps=2, seed=3)
    assert np.array_equal(tile(grid, layout, 0, 2), direct(tiny_engine, text))
    again = G.region_grid(tiny_engine, scenes, size=TILE, steps=2, seed=3)
    assert np.array_equal(pixels(grid), pixels(again))


# --- command line ------------------------------------------------------------------------------------


def test_main_writes_the_three_grids_and_reports_seconds(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "samples"
    code = G.main(["--model", str(tiny_model_dir), "--out", str(out), "--size", "64", "--steps", "1", "--seed", "2",
                   "--threads", "1", "--device", "cpu"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert [Path(line.split("\t")[0]).name for line in lines] == ["prompts.png", "scribble.png", "regions.png"]
    assert all(re.fullmatch(r"\S+\t\d+\.\d s", line) for line in lines)
    caption = G.text_band(TILE, G.CAPTION_LINES)
    width3 = G.GAP + 3 * (TILE + G.GAP)
    expected = {
        "prompts.png": (G.GAP + 4 * (TILE + G.GAP), G.GAP + 4 * (TILE + caption + G.GAP)),  # 16 tiles, 4 columns
        "scribble.png": (width3, G.GAP + G.text_band(TILE, 1) + 4 * (TILE + caption + G.GAP)),
        "regions.png": (width3, G.GAP + G.text_band(TILE, 1) + 3 * (TILE + caption + G.GAP)),
    }
    for name, size in expected.items():
        assert Image.open(out / name).size == size, name


@pytest.mark.parametrize("args,message", [
    (["--size", "60"], "not a multiple of 8"),
    (["--size", "0"], "at least 8"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--steps", "0"], "Steps must be between"),
    (["--only", "panorama"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_code_2(tiny_model_dir, tmp_path, capsys, args, message) -> None:
    code = G.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--device", "cpu", *args])
    stdout, err = capsys.readouterr()
    assert code == 2 and not stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "o").exists()


def test_missing_model_and_out_that_is_a_file(tmp_path, tiny_model_dir, capsys) -> None:
    assert G.main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert G.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
