"""``python -m core regions|panorama``: images from a folder model, replay, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.cli import main
from core.recipe import read_recipe

REPO = Path(__file__).resolve().parent.parent


def region_map(path: Path, size=(64, 64), extra: dict | None = None) -> Path:
    """White background, a red top-left quarter and a blue bottom-right quarter."""
    w, h = size
    image = Image.new("RGB", size, "#ffffff")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, w // 2 - 1, h // 2 - 1), fill="#ff0000")
    draw.rectangle((w // 2, h // 2, w - 1, h - 1), fill="#0000ff")
    for xy, color in (extra or {}).items():
        draw.rectangle(xy, fill=color)
    image.save(path)
    return path


def prompts(path: Path, table: dict) -> Path:
    path.write_text(json.dumps(table))
    return path


TABLE = {"#ffffff": None, "#ff0000": "a red sun", "#0000ff": {"prompt": "a lake", "negative": "boats", "seed": 3}}


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([*map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def same_pixels(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_regions_command_makes_an_image_that_replays_bit_exactly(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "regions.png"
    code, stdout, err = cli(capsys, "regions", "--model", tiny_model_dir, "--regions", region_map(tmp_path / "map.png"),
                            "--prompts", prompts(tmp_path / "p.json", TABLE), "--background-prompt", "a blue sky",
                            "--steps", "3", "--seed", "4", "--bootstrap", "0.4", "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["kind"] == "regions" and summary["outputs"] == [str(out)] and summary["warnings"] == []
    assert Image.open(out).size == (64, 64)  # the map's size
    recipe = read_recipe(out)
    assert recipe["kind"] == "regions" and len(recipe["request"]["regions"]) == 2
    code, _, err = cli(capsys, "replay", out, "--out", tmp_path / "again.png")
    assert code == 0, err
    assert same_pixels(out, tmp_path / "again.png")


def test_panorama_command_circular_with_a_region_map_replays_bit_exactly(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "pano.png"
    code, _, err = cli(capsys, "panorama", "--model", tiny_model_dir, "--prompt", "a lake at night", "--width", "160",
                       "--height", "64", "--window", "8", "--stride", "4", "--circular", "--steps", "2", "--seed", "1",
                       "--regions", region_map(tmp_path / "map.png", (80, 32)), "--prompts",
                       prompts(tmp_path / "p.json", TABLE), "--out", out)
    assert code == 0, err
    assert Image.open(out).size == (160, 64)
    assert read_recipe(out)["request"]["circular"] is True
    assert cli(capsys, "replay", out, "--out", tmp_path / "again.png")[0] == 0
    assert same_pixels(out, tmp_path / "again.png")


def test_panorama_command_plain_width_not_a_multiple_of_64(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "pano.png"
    code, stdout, err = cli(capsys, "panorama", "--model", tiny_model_dir, "--prompt", "a castle", "--width", "136",
                            "--height", "64", "--window", "8", "--stride", "2", "--steps", "2", "--seed", "2",
                            "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["kind"] == "panorama" and Image.open(out).size == (136, 64)


def test_the_example_assets_parse(tmp_path) -> None:
    from core.region_map import load_prompt_table, regions_from_map

    for name in ("landscape", "seaside_panorama"):
        table = load_prompt_table(REPO / f"assets/regions/{name}_prompts.json")
        regions, warnings = regions_from_map(Image.open(REPO / f"assets/regions/{name}_map.png"), table)
        assert regions and not warnings


# --- bad input: exit code 2 and one line -----------------------------------------------------------


def one_line_error(capsys, *args) -> str:
    code, stdout, err = cli(capsys, *args)
    assert code == 2 and not stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_colours_without_prompts_are_listed(tmp_path, capsys) -> None:
    line = one_line_error(capsys, "regions", "--regions", region_map(tmp_path / "m.png"), "--prompts",
                          prompts(tmp_path / "p.json", {"#ff0000": "a sun"}), "--out", tmp_path / "o.png")
    assert "#0000ff" in line and "#ffffff" not in line and "no prompt" in line  # white is the background


def test_map_of_another_aspect_ratio_than_the_canvas(tmp_path, capsys) -> None:
    line = one_line_error(capsys, "regions", "--regions", region_map(tmp_path / "m.png"), "--prompts",
                          prompts(tmp_path / "p.json", TABLE), "--width", "128", "--height", "64", "--out", tmp_path / "o.png")
    assert "aspect" in line


def test_more_regions_than_the_limit(tmp_path, capsys) -> None:
    line = one_line_error(capsys, "regions", "--regions", region_map(tmp_path / "m.png"), "--prompts",
                          prompts(tmp_path / "p.json", TABLE), "--max-regions", "1", "--out", tmp_path / "o.png")
    assert "over the limit of 1" in line


@pytest.mark.parametrize("content,message", [("{oops", "not valid JSON"), ('{"#ff0000": 3}', "must be text"),
                                             ('{"red": "x"}', "not a colour")])
def test_bad_prompts_file(tmp_path, capsys, content: str, message: str) -> None:
    (tmp_path / "p.json").write_text(content)
    line = one_line_error(capsys, "regions", "--regions", region_map(tmp_path / "m.png"), "--prompts",
                          tmp_path / "p.json", "--out", tmp_path / "o.png")
    assert message in line


def test_regions_without_prompts_file_and_missing_files(tmp_path, capsys) -> None:
    line = one_line_error(capsys, "panorama", "--prompt", "x", "--regions", region_map(tmp_path / "m.png"),
                          "--out", tmp_path / "o.png")
    assert "go together" in line
    line = one_line_error(capsys, "regions", "--regions", tmp_path / "none.png", "--prompts", tmp_path / "p.json",
                          "--out", tmp_path / "o.png")
    assert "not found" in line


def test_absent_colour_and_speck_regions_warn(tiny_model_dir, tmp_path, capsys) -> None:
    """A prompt for a colour not in the map, and a region too small for one latent pixel: warnings."""
    table = {**TABLE, "#00ff00": "grass", "#ffff00": "a bee"}
    speck = {(41, 9, 45, 13): "#ffff00"}  # 5x5 px: above the stray-colour threshold, below one 8x8 latent cell
    code, stdout, err = cli(capsys, "regions", "--model", tiny_model_dir, "--regions",
                            region_map(tmp_path / "m.png", extra=speck), "--prompts", prompts(tmp_path / "p.json", table),
                            "--steps", "1", "--seed", "0", "--out", tmp_path / "o.png", "--json")
    assert code == 0, err
    warnings = json.loads(stdout)["warnings"]
    assert any("#00ff00" in w and "not in the region map" in w for w in warnings)
    assert any("#ffff00" in w and "ignored" in w for w in warnings)
    assert "warning: " in err


def _maps() -> dict[str, Image.Image]:
    """The example maps, and a hand-painted one as a browser canvas exports it (anti-aliased
    brush edges, stray specks) saved as JPEG."""
    import io

    from PIL import ImageFilter

    maps = {name: Image.open(REPO / f"assets/regions/{name}_map.png").convert("RGB")
            for name in ("landscape", "seaside_panorama")}
    painted = Image.new("RGB", (300, 200), "white")
    draw = ImageDraw.Draw(painted)
    draw.ellipse((180, 20, 260, 100), fill=(229, 57, 53))
    draw.rectangle((0, 130, 300, 200), fill=(67, 160, 71))
    draw.point([(20, 20), (21, 20), (150, 60)], fill=(30, 136, 229))
    buffer = io.BytesIO()
    painted.filter(ImageFilter.GaussianBlur(1.2)).save(buffer, "JPEG", quality=80)
    maps["hand-painted jpeg"] = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return maps


@pytest.mark.parametrize("name", ["landscape", "seaside_panorama", "hand-painted jpeg"])
def test_the_app_and_the_cli_read_a_map_into_the_same_regions(name: str, monkeypatch) -> None:
    from core.region_map import regions_from_map
    from studio_ui import widgets
    from studio_ui.methods import RegionSpec, region_masks

    monkeypatch.setattr(widgets, "ss", {})  # the app's session state, outside streamlit
    image = _maps()[name]
    found = widgets.find_regions("regions", image, ignore_white=True)  # the app's colour table
    assert found and len(found) <= 4
    table = {r.hex: f"prompt {i}" for i, r in enumerate(found)}
    app = {spec.color: np.asarray(mask) > 0 for spec, mask in
           region_masks(widgets.cleaned_map("regions", image), [RegionSpec(h, p) for h, p in table.items()],
                        image.size)}
    cli, _ = regions_from_map(image, table)
    assert [r.name for r in cli] == list(app)
    for region in cli:
        assert np.array_equal(np.asarray(region.mask) > 0, app[region.name]), region.name


def test_a_region_map_can_keep_its_colours(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "kept.png"
    code, _, err = cli(capsys, "regions", "--model", tiny_model_dir, "--regions", region_map(tmp_path / "m.png"),
                       "--prompts", prompts(tmp_path / "p.json", TABLE), "--keep-colours", "--fidelity", "0.8",
                       "--steps", "4", "--seed", "1", "--device", "cpu", "--out", out)
    assert code == 0, err
    recipe = read_recipe(out)
    assert recipe["kind"] == "stroke" and recipe["request"]["method"] == "gradop+"
    assert [r["prompt"] for r in recipe["request"]["regions"]] == ["a red sun", "a lake"]
    assert recipe["request"]["fidelity"] == 0.8 and recipe["request"]["prompt"] == "a red sun, a lake"


def test_one_pass_regions_and_kept_colours_with_them_replay(tiny_model_dir, tmp_path, capsys) -> None:
    common = ["--model", tiny_model_dir, "--regions", region_map(tmp_path / "m.png"), "--prompts",
              prompts(tmp_path / "p.json", TABLE), "--steps", "3", "--seed", "2", "--attention"]
    out = tmp_path / "one-pass.png"
    code, _, err = cli(capsys, "regions", *common, "--background-prompt", "a blue sky", "--out", out)
    assert code == 0, err
    assert read_recipe(out)["request"]["attention"] is True
    assert cli(capsys, "replay", out, "--out", tmp_path / "again.png")[0] == 0
    assert same_pixels(out, tmp_path / "again.png")
    kept = tmp_path / "kept.png"
    code, _, err = cli(capsys, "regions", *common, "--keep-colours", "--out", kept)
    assert code == 0, err
    assert read_recipe(kept)["request"]["region_attention"] is True
    code, _, err = cli(capsys, "regions", *common, "--fast", "--out", tmp_path / "x.png")
    assert code != 0 and "Choose one region mode" in err and "Traceback" not in err
