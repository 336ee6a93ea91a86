"""Untrusted input (issue #17): edited recipes, huge or odd images, wrong JSON, bad output
paths, transparent scribbles, out-of-range steps and wrong types through the API.

Through the CLI every case must exit 2 with exactly one line on stderr, no traceback and no
output file; through the API it must raise StudioError and nothing else. Hostile files are
made here (a PNG whose header claims 30000x30000 is an 8x8 PNG with its IHDR patched).
"""
from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import stat
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from core.cli import main
from core.engine import Engine
from core.errors import StudioError
from core.inputs import MAX_INPUT_PIXELS, alpha_channel, open_image
from core.loading import LoadOptions
from core.panorama import MultiDiffusionRequest
from core.recipe import image_to_record, make_recipe, read_recipe, request_from_recipe, save_png
from core.region_map import MAX_REGIONS, Region, load_prompt_table
from core.requests import DEFAULT_MAX_PIXELS, GenerationRequest
from core.schedulers import check_steps, max_steps
from core.stroke_guidance import StrokeRequest, stroke_request


# --- hostile files ------------------------------------------------------------------------------


def png_bytes(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def claimed_png(width: int, height: int) -> bytes:
    """An 8x8 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed, so the header is valid)."""
    data = bytearray(png_bytes(Image.new("RGB", (8, 8), "red")))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def claimed_bmp(width: int, height: int) -> bytes:
    """An 8x8 BMP whose header claims ``width`` x ``height`` (the non-PNG path)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def scribble(mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", (64, 64), (90, 160, 230))
    ImageDraw.Draw(image).rectangle([16, 8, 40, 36], fill=(160, 160, 160))
    return image.convert(mode)


def region_map(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), "#ffffff")
    ImageDraw.Draw(image).rectangle((0, 0, 31, 31), fill="#ff0000")
    image.save(path)
    return path


# --- the CLI contract ---------------------------------------------------------------------------


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is loaded: the error must come before any work."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(Engine, "load", classmethod(refuse))


def refused(capsys: pytest.CaptureFixture, out: Path | None, *args: Any) -> str:
    """Run the CLI; assert exit 2, one stderr line, no traceback, no bomb warning, no output
    file; return the line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([*map(str, args), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f"*{out.stem}*")), list(out.parent.iterdir())
    return lines[0]


# --- replay of edited recipes ---------------------------------------------------------------------


def recipe_png(path: Path, recipe: Any, pixels: Image.Image | None = None) -> Path:
    """A PNG carrying ``recipe`` (any JSON) in its recipe chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("recipe", recipe if isinstance(recipe, str) else json.dumps(recipe), zip=True)
    (pixels or Image.new("RGB", (8, 8))).save(path, pnginfo=info)
    return path


def base_recipe(model: Path, **request: Any) -> dict:
    fields = dict(prompt="a red sun", steps=1, seed=3, width=64, height=64) | request
    return make_recipe(GenerationRequest(**fields), {"name": model.name, "location": str(model), "source": "folder"},
                       0, [fields["seed"]])


def embedded(data: bytes) -> dict:
    return {"__image__": {"sha256": hashlib.sha256(data).hexdigest(), "png_base64": base64.b64encode(data).decode()}}


def edit(recipe: dict, path: str, value: Any) -> dict:
    """A copy of ``recipe`` with the dotted ``path`` set to ``value`` (``!`` deletes)."""
    recipe = copy.deepcopy(recipe)
    *parents, last = path.split(".")
    node = recipe
    for key in parents:
        node = node[key]
    if value == "!":
        del node[last]
    else:
        node[last] = value
    return recipe


def _regions_recipe(model: Path, count: int, **request: Any) -> dict:
    mask = {"__dataclass__": "Region", "mask": {"__image__": image_to_record(Image.new("L", (8, 8), 255))},
            "prompt": "a tree", "negative_prompt": None, "seed": None, "weight": 1.0, "guidance_scale": None,
            "name": ""}
    fields = dict(prompt="sky", width=64, height=64, steps=1)
    recipe = make_recipe(MultiDiffusionRequest(**fields), {"name": model.name}, 0, [0])
    recipe["request"]["regions"] = [mask] * count
    recipe["request"].update(request)
    return recipe


EDITS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "a JSON list": (lambda m: [1, 2, 3], "must be a JSON object"),
    "a JSON string": (lambda m: '"hello"', "must be a JSON object"),
    "not JSON": (lambda m: "{oops", "not valid JSON"),
    "deeply nested JSON": (lambda m: "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "another version": (lambda m: edit(base_recipe(m), "version", 99), "Unsupported recipe"),
    "an unknown kind": (lambda m: edit(base_recipe(m), "kind", "os.system"), "Unsupported recipe"),
    "a kind that is a list": (lambda m: edit(base_recipe(m), "kind", ["txt2img"]), "Unsupported recipe"),
    "a request that is a string": (lambda m: edit(base_recipe(m), "request", "steps=5"), "must be an object"),
    "an unknown request field": (lambda m: edit(base_recipe(m), "request.eval", "1"), "unknown field"),
    "a missing prompt": (lambda m: edit(base_recipe(m), "request.prompt", "!"), "lacks field(s) prompt"),
    "a non-numeric image index": (lambda m: edit(base_recipe(m), "index", "first"), "image index"),
    "an index past the batch": (lambda m: edit(base_recipe(m), "index", 5), "image index"),
    "steps as text": (lambda m: edit(base_recipe(m), "request.steps", "10"), "Steps must be a whole number"),
    "a float width": (lambda m: edit(base_recipe(m), "request.width", 64.0), "whole number of pixels"),
    "a boolean seed": (lambda m: edit(base_recipe(m), "request.seed", True), "Seed must be a whole number"),
    "a scheduler that is a number": (lambda m: edit(base_recipe(m), "request.scheduler", 123), "scheduler"),
    "a prompt that is an object": (lambda m: edit(base_recipe(m), "request.prompt", {"a": 1}), "plain value"),
    "an image reference that is a path": (lambda m: edit(edit(base_recipe(m), "request.init_image", "/etc/passwd"),
                                                         "kind", "img2img"), "must be an embedded image"),
    "an embedded image with bad base64": (lambda m: edit(edit(base_recipe(m), "request.init_image", {"__image__": {
        "sha256": "00", "png_base64": "***not base64***"}}), "kind", "img2img"), "not valid base64"),
    "an embedded image that is not an image": (lambda m: edit(edit(base_recipe(m), "request.init_image",
                                                                   embedded(b"plain text, not a PNG")),
                                                              "kind", "img2img"), "Cannot read"),
    "an embedded image with a wrong checksum": (lambda m: edit(edit(base_recipe(m), "request.init_image", {
        "__image__": {"sha256": "0" * 64, "png_base64": base64.b64encode(png_bytes(Image.new("RGB", (8, 8)))).decode()}}),
        "kind", "img2img"), "checksum"),
    "an embedded image claiming 30000x30000": (lambda m: edit(edit(base_recipe(m), "request.init_image",
                                                                   embedded(claimed_png(30000, 30000))),
                                                              "kind", "img2img"), "over the limit"),
    "4096x4096 with a raised pixel limit": (lambda m: edit(edit(edit(base_recipe(m), "request.width", 4096),
                                                                "request.height", 4096), "request.max_pixels", 10**12),
                                            f"over the limit of {DEFAULT_MAX_PIXELS:,}"),
    "more regions than the local limit, with a raised limit": (
        lambda m: _regions_recipe(m, MAX_REGIONS + 1, max_regions=1000), f"over the limit of {MAX_REGIONS}"),
    "an unregistered nested class": (lambda m: edit(_regions_recipe(m, 1), "request.regions",
                                                    [{"__dataclass__": "Popen", "args": ["ls"]}]), "Region"),
    "a region whose mask is an array": (lambda m: edit(_regions_recipe(m, 1), "request.regions",
                                                       [{**_regions_recipe(m, 1)["request"]["regions"][0],
                                                         "mask": [[1, 0], [0, 1]]}]), "embedded image"),
    "a region seed that is text": (lambda m: edit(_regions_recipe(m, 1), "request.regions",
                                                  [{**_regions_recipe(m, 1)["request"]["regions"][0],
                                                    "seed": "abc"}]), "seed must be a whole number"),
    "a model record that is a list": (lambda m: edit(base_recipe(m), "model", ["x"]), "model record"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_replay_of_an_edited_recipe_is_refused_before_any_work(tiny_model_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture, no_load: None,
                                                               case: str) -> None:
    make, message = EDITS[case]
    source = recipe_png(tmp_path / "edited.png", make(tiny_model_dir))
    out = tmp_path / "out.png"
    line = refused(capsys, out, "replay", source, "--out", out)
    assert message.lower() in line.lower(), line


def test_replay_of_a_huge_png_is_refused_from_its_header(tmp_path: Path, capsys, no_load) -> None:
    out = tmp_path / "out.png"
    line = refused(capsys, out, "replay", write(tmp_path / "huge.png", claimed_png(30000, 30000)), "--out", out)
    assert "30000x30000" in line and "over the limit" in line


def test_a_recipe_may_lower_a_limit_but_never_raise_it(tiny_model_dir: Path) -> None:
    lower = request_from_recipe(edit(base_recipe(tiny_model_dir), "request.max_pixels", 64 * 64))
    assert lower.max_pixels == 64 * 64
    higher = request_from_recipe(edit(base_recipe(tiny_model_dir), "request.max_pixels", 10**12))
    assert higher.max_pixels == DEFAULT_MAX_PIXELS
    regions = request_from_recipe(_regions_recipe(tiny_model_dir, 1, max_regions=10**6, max_pixels=10**12))
    assert regions.max_regions == MAX_REGIONS and regions.max_pixels == DEFAULT_MAX_PIXELS


def test_an_untouched_recipe_still_replays(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    source = recipe_png(tmp_path / "good.png", base_recipe(tiny_model_dir))
    code = main(["replay", str(source), "--out", str(tmp_path / "again.png"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "again.png").size == (64, 64)


def test_a_recipe_over_pils_text_limit_is_read_and_its_png_opens(tmp_path: Path) -> None:
    """PIL refuses PNG text over 1 MB; a recipe embedding a 600x600 photo-like image is larger."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8))
    request = GenerationRequest(prompt="p", init_image=noise, steps=1)
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "big.png", make_recipe(request, {"name": "m"}, 0, [0]), "p")
    rebuilt = request_from_recipe(read_recipe(path))
    assert np.array_equal(np.asarray(rebuilt.init_image), np.asarray(noise))
    assert open_image(path).size == (8, 8)


def test_a_recipe_over_the_local_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.recipe

    monkeypatch.setattr(core.recipe, "MAX_RECIPE_BYTES", 1000)
    path = recipe_png(tmp_path / "r.png", {"padding": "x" * 5000})
    with pytest.raises(StudioError, match="over 1,000 bytes"):
        read_recipe(path)


# --- huge and odd images ---------------------------------------------------------------------------


def _commands(model: Path, image: Path, out: Path, prompts: Path) -> dict[str, list[Any]]:
    common = ["--model", model, "--steps", "1", "--out", out]
    return {
        "img2img": ["img2img", "--prompt", "p", "--image", image, *common],
        "stroke": ["stroke", "--prompt", "p", "--strokes", image, *common],
        "regions": ["regions", "--regions", image, "--prompts", prompts, *common],
        "panorama": ["panorama", "--prompt", "p", "--image", image, "--width", "64", "--height", "64", *common],
    }


@pytest.mark.parametrize("command", ["img2img", "stroke", "regions", "panorama"])
@pytest.mark.parametrize("claim", [(30000, 30000), (10000, 10000), "bmp"])
def test_huge_images_are_refused_from_the_header_with_no_warning(tiny_model_dir, tmp_path, capsys, no_load,
                                                                  command, claim) -> None:
    data = claimed_bmp(30000, 30000) if claim == "bmp" else claimed_png(*claim)
    image = write(tmp_path / ("huge.bmp" if claim == "bmp" else "huge.png"), data)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"#ff0000": "sun"}))
    out = tmp_path / "out.png"
    line = refused(capsys, out, *_commands(tiny_model_dir, image, out, prompts)[command])
    assert "over the limit" in line or "above the limit" in line, line
    assert "shrink it" in line


@pytest.mark.parametrize("case, message", [("truncated", "damaged or truncated"), ("text", "Cannot read image"),
                                           ("folder", "is a folder"), ("missing", "not found")])
def test_unreadable_images_exit_2(tiny_model_dir, tmp_path, capsys, no_load, case, message) -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    image = {"truncated": write(tmp_path / "t.png", png_bytes(noisy)[:-2000]),
             "text": write(tmp_path / "text.png", b"not an image"), "folder": tmp_path,
             "missing": tmp_path / "missing.png"}[case]
    out = tmp_path / "out.png"
    line = refused(capsys, out, *_commands(tiny_model_dir, image, out, tmp_path / "p.json")["img2img"])
    assert message in line


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    ImageDraw.Draw(image).rectangle((0, 0, 3, 7), fill=0)  # left half transparent
    return image


@pytest.mark.parametrize("make, fmt, mode, pixel", [
    (_palette_with_transparency, "PNG", "RGBA", (255, 0, 0, 255)),
    (lambda: Image.new("LA", (8, 8), (100, 255)), "PNG", "RGBA", (100, 100, 100, 255)),
    (lambda: Image.fromarray(np.full((8, 8), 32896, np.uint16)), "PNG", "RGB", (128, 128, 128)),
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", "RGB", None),
    (lambda: Image.new("RGBA", (8, 8), (1, 2, 3, 4)), "PNG", "RGBA", (1, 2, 3, 4)),
    (lambda: Image.new("1", (8, 8), 1), "PNG", "RGB", (255, 255, 255)),
    (lambda: Image.new("L", (8, 8), 7), "PNG", "RGB", (7, 7, 7)),
])
def test_every_mode_is_converted_consistently(make, fmt, mode, pixel) -> None:
    buffer = io.BytesIO()
    make().save(buffer, format=fmt)
    image = open_image(buffer.getvalue())
    assert image.mode == mode
    if pixel is not None:
        assert image.getpixel((7, 0)) == pixel
    if fmt == "JPEG":  # CMYK magenta: red and blue high, green low
        r, g, b = image.getpixel((4, 4))
        assert r > 200 and b > 200 and g < 60


def test_palette_transparency_is_alpha() -> None:
    image = _palette_with_transparency()
    assert alpha_channel(image)[:, :4].max() == 0 and alpha_channel(image)[:, 4:].min() == 1
    assert alpha_channel(open_image(png_bytes(image)))[:, :4].max() == 0


def test_the_input_limit_is_stated_and_a_fitting_size_suggested() -> None:
    with pytest.raises(StudioError, match=rf"over the limit of {MAX_INPUT_PIXELS:,} pixels: shrink it to \d+x\d+"):
        open_image(claimed_png(30000, 15000))


# --- fully transparent scribbles, whatever their mode --------------------------------------------


def _transparent_palette() -> Image.Image:
    image = Image.new("P", (64, 64), 0)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("make", [lambda: Image.new("LA", (64, 64), (120, 0)),
                                  lambda: Image.new("RGBA", (64, 64), (9, 9, 9, 0)), _transparent_palette,
                                  lambda: Image.new("RGB", (64, 64), (5, 5, 5)).convert("RGBa").convert("RGBA")
                                  .convert("LA").convert("RGBA")])
def test_a_fully_transparent_scribble_is_refused_in_every_mode(tiny_model_dir, tmp_path, capsys, no_load,
                                                               make) -> None:
    image = make()
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[1] > 0:
        image.putalpha(0)
    for mode in {image.mode, "PA"}:
        with pytest.raises(StudioError, match="empty"):
            StrokeRequest(prompt="p", strokes=image if mode == image.mode else Image.new("PA", (64, 64), (1, 0)))
    path = tmp_path / "s.png"
    image.save(path)
    out = tmp_path / "out.png"
    line = refused(capsys, out, "stroke", "--model", tiny_model_dir, "--prompt", "p", "--strokes", path, "--out", out)
    assert "empty" in line


# --- PROMPTS.json and WORDS.json -------------------------------------------------------------------


PROMPT_CASES = {
    "weight as text": ({"#ff0000": {"prompt": "sun", "weight": "heavy"}}, "weight must be a number"),
    "cfg as a list": ({"#ff0000": {"prompt": "sun", "cfg": [7]}}, "guidance scale must be a number"),
    "cfg out of range": ({"#ff0000": {"prompt": "sun", "cfg": 500}}, "between 0 and 50"),
    "seed as a float": ({"#ff0000": {"prompt": "sun", "seed": 1.5}}, "seed must be a whole number"),
    "seed as a boolean": ({"#ff0000": {"prompt": "sun", "seed": True}}, "seed must be a whole number"),
    "a negative seed": ({"#ff0000": {"prompt": "sun", "seed": -1}}, "between 0 and"),
    "a prompt that is a number": ({"#ff0000": {"prompt": 5}}, "must be text"),
    "a negative prompt that is a list": ({"#ff0000": {"prompt": "sun", "negative": ["x"]}}, "must be text"),
    "an entry that is a list": ({"#ff0000": ["sun"]}, "must be text, null"),
    "a weight of zero": ({"#ff0000": {"prompt": "sun", "weight": 0}}, "above 0"),
    "both cfg and guidance_scale": ({"#ff0000": {"prompt": "sun", "cfg": 1, "guidance_scale": 2}}, "keep one"),
    "a list": ([{"#ff0000": "sun"}], "JSON object"),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_prompts_file_with_wrong_types(tiny_model_dir, tmp_path, capsys, no_load, case) -> None:
    table, message = PROMPT_CASES[case]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(table))
    with pytest.raises(StudioError, match=message):
        load_prompt_table(prompts)
    out = tmp_path / "out.png"
    line = refused(capsys, out, "regions", "--model", tiny_model_dir, "--regions", region_map(tmp_path / "m.png"),
                   "--prompts", prompts, "--out", out)
    assert message in line


@pytest.mark.parametrize("case, message", [("folder", "is a folder"), ("binary", "not UTF-8"),
                                           ("huge", "over 1,000,000 bytes"), ("missing", "not found")])
def test_prompts_and_words_files_that_are_not_small_json(tiny_model_dir, tmp_path, capsys, no_load,
                                                         case, message) -> None:
    path = {"folder": tmp_path, "missing": tmp_path / "missing.json"}.get(case, tmp_path / "f.json")
    if case == "binary":
        path.write_bytes(b"\xff\xfe\x00{")
    elif case == "huge":
        path.write_text(json.dumps({"#ff0000": "x" * 1_100_000}))
    out = tmp_path / "out.png"
    line = refused(capsys, out, "regions", "--model", tiny_model_dir, "--regions", region_map(tmp_path / "m.png"),
                   "--prompts", path, "--out", out)
    assert message in line
    strokes = tmp_path / "s.png"
    scribble().save(strokes)
    line = refused(capsys, out, "stroke", "--model", tiny_model_dir, "--prompt", "a castle", "--strokes", strokes,
                   "--words", path, "--out", out)
    assert message in line and "Words file" in line


@pytest.mark.parametrize("words, message", [({"#a0a0a0": 5}, "phrase or a list"), ([["#a0a0a0", "castle"]], "map colours"),
                                            ({"#a0a0a0": [["castle"]]}, "phrase or a list"),
                                            ({"#a0a0a0": []}, "phrase or a list"), ({"red": "castle"}, "colour")])
def test_words_file_with_wrong_types(tiny_model_dir, tmp_path, capsys, no_load, words, message) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(words))
    strokes = tmp_path / "s.png"
    scribble().save(strokes)
    out = tmp_path / "out.png"
    line = refused(capsys, out, "stroke", "--model", tiny_model_dir, "--prompt", "a castle", "--strokes", strokes,
                   "--words", path, "--out", out)
    assert message in line


# --- output paths --------------------------------------------------------------------------------


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()  # root ignores the mode: use a folder no one may write
    if os.path.isdir("/sys/fs"):
        try:
            Path("/sys/fs/studio-probe").touch()
        except OSError:
            return Path("/sys/fs")
    pytest.skip("no read-only folder available here")


@pytest.mark.parametrize("case, message", [("folder", "is a folder"), ("under a file", "which is a file"),
                                           ("read-only", "not writable"), ("jpeg", "must be a .png"),
                                           ("long name", "too long")])
def test_bad_output_paths_are_refused_before_any_work(tiny_model_dir, tmp_path, capsys, no_load, case,
                                                      message) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir.png").mkdir()
    out = {"folder": tmp_path / "dir.png", "under a file": tmp_path / "file.txt" / "sub" / "o.png",
           "read-only": None, "jpeg": tmp_path / "o.jpg", "long name": tmp_path / ("x" * 240 + ".png")}[case]
    if out is None:
        out = _read_only_folder(tmp_path) / "o.png"
    line = refused(capsys, None, "txt2img", "--model", tiny_model_dir, "--prompt", "p", "--out", out)
    assert message in line, line
    assert not out.is_file()
    source = recipe_png(tmp_path / "r.png", base_recipe(tiny_model_dir))
    assert message in refused(capsys, None, "replay", source, "--out", out)


def test_outputs_are_readable_by_others_as_the_umask_allows(tiny_model_dir, tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        code = main(["txt2img", "--model", str(tiny_model_dir), "--prompt", "p", "--steps", "1",
                     "--out", str(tmp_path / "o.png"), "--quiet"])
    finally:
        os.umask(old)
    assert code == 0, capsys.readouterr().err
    assert stat.S_IMODE((tmp_path / "o.png").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temp file left


def test_save_png_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudioError, match="Cannot write"):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "file" / "o.png", {}, "")


# --- steps the scheduler cannot take ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["txt2img", "stroke", "panorama"])
@pytest.mark.parametrize("scheduler, steps", [("default", 1000), ("ddim", 1000), ("lcm", 51), ("dpmpp_2m", 1000)])
def test_more_steps_than_the_scheduler_can_take(tiny_model_dir, tmp_path, capsys, command, scheduler,
                                                steps) -> None:
    config = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    most = max_steps(scheduler, config)
    assert 1 <= most < steps
    check_steps(scheduler, config, most)  # the named maximum is accepted
    strokes = tmp_path / "s.png"
    scribble().save(strokes)
    out = tmp_path / "out.png"
    extra = {"txt2img": ["--prompt", "p"], "stroke": ["--prompt", "p", "--strokes", strokes],
             "panorama": ["--prompt", "p", "--width", "64", "--height", "64"]}[command]
    if command == "stroke" and scheduler == "dpmpp_2m":
        extra += ["--method", "gradop"]  # gradop+ refuses multistep schedulers for another reason
    line = refused(capsys, out, command, *extra, "--model", tiny_model_dir, "--steps", steps,
                   "--scheduler", scheduler, "--out", out)
    assert f"at most {most}" in line, line


# --- the Python API trusts no types ----------------------------------------------------------------


API_CASES: dict[str, Callable[[], Any]] = {
    "steps as text": lambda: GenerationRequest(prompt="p", steps="10"),
    "a float width": lambda: GenerationRequest(prompt="p", width=64.0),
    "a float seed": lambda: GenerationRequest(prompt="p", seed=1.5),
    "no seed": lambda: GenerationRequest(prompt="p", seed=None),
    "a boolean seed": lambda: GenerationRequest(prompt="p", seed=True),
    "a scheduler that is a number": lambda: GenerationRequest(prompt="p", scheduler=123),
    "an init image that is a path": lambda: GenerationRequest(prompt="p", init_image="x.png"),
    "guidance as text": lambda: GenerationRequest(prompt="p", guidance_scale="7"),
    "a NaN strength": lambda: GenerationRequest(prompt="p", strength=float("nan")),
    "a negative prompt that is None": lambda: GenerationRequest(prompt="p", negative_prompt=None),
    "max pixels as text": lambda: GenerationRequest(prompt="p", max_pixels="many"),
    "a region seed as text": lambda: Region(mask=Image.new("L", (8, 8), 255), prompt="a", seed="abc"),
    "a region mask that is ragged": lambda: Region(mask=[[1, 0], [1]], prompt="a"),
    "a region mask of text": lambda: Region(mask=[["a", "b"]], prompt="a"),
    "a region name that is a number": lambda: Region(mask=Image.new("L", (8, 8), 255), prompt="a", name=5),
    "a float blur kernel": lambda: StrokeRequest(prompt="p", strokes=scribble(), blur_kernel=3.5),
    "fast as text": lambda: StrokeRequest(prompt="p", strokes=scribble(), fast="no"),
    "a method that is a list": lambda: StrokeRequest(prompt="p", strokes=scribble(), method=["gradop"]),
    "words that are pairs of letters": lambda: StrokeRequest(prompt="p", strokes=scribble(), words=["ab", "cd"]),
    "an unknown stroke setting": lambda: stroke_request("p", scribble(), bogus=1),
    "regions that are a number": lambda: MultiDiffusionRequest(prompt="p", regions=5),
    "max regions as text": lambda: MultiDiffusionRequest(prompt="p", max_regions="9"),
    "circular as text": lambda: MultiDiffusionRequest(prompt="p", circular="yes"),
    "a float window": lambda: MultiDiffusionRequest(prompt="p", window=8.0),
    "a model that is a number": lambda: Engine.load(model=123),
    "an unknown load option": lambda: Engine.load(turbo=True),
    "options that are not LoadOptions": lambda: Engine.load("cpu"),
    "a device that is a number": lambda: LoadOptions(device=0),
    "attention slicing as text": lambda: LoadOptions(attention_slicing="on"),
    "an image path that is a number": lambda: open_image(42),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_the_api_raises_studio_errors_for_wrong_types(case: str) -> None:
    with pytest.raises(StudioError) as info:
        API_CASES[case]()
    assert "\n" not in str(info.value)


def test_steps_past_the_schedule_through_the_api(tiny_engine: Engine) -> None:
    with pytest.raises(StudioError, match="at most 999"):
        tiny_engine.run(GenerationRequest(prompt="p", steps=1000, scheduler="ddim"))
    with pytest.raises(StudioError, match="at most 50"):
        tiny_engine.generate(GenerationRequest(prompt="p", steps=51, scheduler="lcm"))


# --- the app ---------------------------------------------------------------------------------------


def _upload_script() -> None:
    """Runs as an AppTest script: an uploaded hostile file goes through the app's reader."""
    import io as _io

    import streamlit as st

    from studio_ui.widgets import read_upload

    data = st.session_state["upload_bytes"]
    image = read_upload(_io.BytesIO(data))
    st.write("ok" if image is not None else "refused")


@pytest.mark.parametrize("case", ["huge", "not an image", "truncated"])
def test_the_app_shows_an_error_for_a_bad_upload(case: str) -> None:
    from streamlit.testing.v1 import AppTest

    data = {"huge": claimed_png(13000, 13000), "not an image": b"GIF89a nonsense",
            "truncated": png_bytes(scribble())[:100]}[case]
    at = AppTest.from_function(_upload_script, default_timeout=30)
    at.session_state["upload_bytes"] = data
    at.run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and at.markdown[0].value == "refused"
    assert "\n" not in at.error[0].value


def test_the_app_shrinks_a_large_upload() -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_upload_script, default_timeout=30)
    at.session_state["upload_bytes"] = png_bytes(Image.new("RGB", (4000, 100)))
    at.run()
    assert not at.exception and not at.error and at.markdown[0].value == "ok"


@pytest.fixture
def studio(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path) -> Path:
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tiny_model_dir.parent))
    monkeypatch.setenv("STUDIO_OUTPUTS_DIR", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def test_the_regions_page_shows_an_error_for_a_huge_map(studio: Path) -> None:
    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parent.parent / "app.py")
    at = AppTest.from_file(app, default_timeout=60)
    at.run()
    at.switch_page("pages/regions.py").run()
    at.session_state["regions.source"] = "upload"
    at.run()
    assert not at.exception, at.exception
    at.file_uploader[0].set_value(("huge.png", claimed_png(30000, 30000), "image/png")).run()
    assert not at.exception, at.exception
    assert any("30000x30000" in e.value and "shrink it" in e.value for e in at.error), [e.value for e in at.error]
