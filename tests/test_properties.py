"""Property tests (hypothesis) of the validation layer: whatever comes in, the result is a
valid request or a StudioError, never another exception; a recipe never raises a limit;
every CLI range's extremes either run (cheaply, on the tiny model) or are refused up front,
on every scheduler."""
from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.engine import Engine
from core.errors import StudioError
from core.inputs import open_image, read_json_file
from core.loading import LoadOptions
from core.panorama import MultiDiffusionRequest
from core.recipe import image_to_record, make_recipe, recipe_index, request_from_recipe
from core.region_map import MAX_REGIONS, ColorPrompt, Region, parse_prompt_table
from core.requests import DEFAULT_MAX_PIXELS, MAX_SEED, GenerationRequest
from core.schedulers import SCHEDULER_NAMES, check_steps, max_steps
from core.stroke_guidance import StrokeRequest, word_pairs
from core.tiled_refine import UpscaleRequest

SETTINGS = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
SMALL = settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])

# values of every wrong (and some right) type
WILD = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=12), st.none(), st.booleans(), st.lists(st.integers(-3, 300), max_size=3))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
                    | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4),
                    max_leaves=20)


def scribble(size: int = 16) -> Image.Image:
    image = Image.new("RGB", (size, size), (90, 160, 230))
    image.paste((160, 160, 160), (4, 4, 12, 12))
    return image


MASK = Image.new("L", (16, 16), 255)
REQUIRED = {GenerationRequest: {"prompt": "a red sun"}, StrokeRequest: {"prompt": "p", "strokes": scribble()},
            MultiDiffusionRequest: {"prompt": "p"}, Region: {"mask": MASK, "prompt": "a tree"},
            ColorPrompt: {"prompt": "a sun"}, LoadOptions: {}, UpscaleRequest: {"image": scribble()}}


def field_values(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Kwargs for ``cls``: each field left alone, or given a wild value (images too)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    wild = WILD | st.just(scribble()) | st.just(Image.new("LA", (16, 16), (0, 0)))
    return st.fixed_dictionaries({}, optional={name: wild for name in names}).map(
        lambda drawn: {**REQUIRED[cls], **drawn})


def built_or_refused(make: Any) -> Any:
    """``make()``'s value, or None when it raised StudioError (anything else fails the test)."""
    try:
        return make()
    except StudioError as exc:
        assert "\n" not in str(exc)
        return None


def check_valid(request: Any) -> None:
    """What a request that was accepted guarantees, whatever it was built from."""
    for name in ("steps", "seed", "num_images", "max_pixels", "max_regions", "blur_kernel", "grad_steps",
                 "scale", "tile", "overlap"):
        value = getattr(request, name, 0)
        assert isinstance(value, int) and not isinstance(value, bool), (name, value)
    for name in ("guidance_scale", "strength", "lr", "bootstrap", "feather", "refine"):
        value = getattr(request, name, 0.0)
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (name, value)
    for name in ("width", "height"):
        value = getattr(request, name, None)
        assert value is None or (isinstance(value, int) and value >= 8 and value % 8 == 0)
    if hasattr(request, "steps"):
        assert 1 <= request.steps <= 1000 and 0 <= request.seed <= MAX_SEED
        assert isinstance(request.prompt, str) and request.scheduler in SCHEDULER_NAMES


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_any_fields_give_a_valid_request_or_a_studio_error(cls: type, data: st.DataObject) -> None:
    kwargs = data.draw(field_values(cls))
    request = built_or_refused(lambda: cls(**kwargs))
    if request is not None and cls not in (Region, ColorPrompt, LoadOptions):
        check_valid(request)


@SETTINGS
@given(steps=st.integers(1, 1000), cfg=st.floats(0, 50), seed=st.integers(0, MAX_SEED), n=st.integers(1, 16),
       strength=st.floats(0, 1), side=st.sampled_from([8, 64, 512, 2048]), scheduler=st.sampled_from(SCHEDULER_NAMES))
def test_values_in_range_are_accepted(steps, cfg, seed, n, strength, side, scheduler) -> None:
    request = GenerationRequest(prompt="p", steps=steps, guidance_scale=cfg, seed=seed, num_images=n,
                                strength=strength, width=side, height=side, scheduler=scheduler)
    check_valid(request)


@SMALL
@given(kwargs=st.fixed_dictionaries({}, optional={"model": WILD, "device": WILD, "dtype": WILD, "vae_tiling": WILD,
                                                  "bogus": WILD}))
def test_engine_load_refuses_wrong_types_before_loading(kwargs: dict) -> None:
    if all(v is None or isinstance(v, str) for k, v in kwargs.items() if k in ("model", "device", "dtype")) \
            and "bogus" not in kwargs and isinstance(kwargs.get("vae_tiling", False), bool):
        return  # well-typed: would really load
    with pytest.raises(StudioError):
        Engine.load(**kwargs)


# --- recipes ------------------------------------------------------------------------------------


def _png(image: Image.Image) -> dict:
    return {"__image__": image_to_record(image)}


def valid_recipes() -> list[dict]:
    model = {"name": "tiny-sd", "location": "", "source": "folder"}
    region = Region(mask=MASK, prompt="a tree", seed=3, name="#00ff00")
    requests = [GenerationRequest(prompt="p", width=64, height=64, steps=2),
                GenerationRequest(prompt="p", init_image=scribble(), steps=2, num_images=2),
                StrokeRequest(prompt="p", strokes=scribble(), words=(("#a0a0a0", "p"),), steps=2),
                MultiDiffusionRequest(prompt="p", regions=(region,), width=64, height=64, steps=2),
                UpscaleRequest(image=scribble(), scale=4, upscaler="lanczos", refine=0.3, prompt="p", steps=2,
                               regions=(region,))]
    return [json.loads(json.dumps(make_recipe(r, model, 0, [0]))) for r in requests]


RECIPES = valid_recipes()


def parsed_or_refused(recipe: Any) -> Any:
    request = built_or_refused(lambda: request_from_recipe(recipe))
    if request is not None:
        check_valid(request)
        assert request.max_pixels <= DEFAULT_MAX_PIXELS
        assert getattr(request, "max_regions", 0) <= MAX_REGIONS
        built_or_refused(lambda: recipe_index(recipe, request))
    return request


def test_the_valid_recipes_parse() -> None:
    for recipe in RECIPES:
        assert parsed_or_refused(recipe) is not None


@SETTINGS
@given(recipe=JSON)
def test_arbitrary_json_recipes(recipe: Any) -> None:
    parsed_or_refused(recipe)


@SETTINGS
@given(which=st.integers(0, len(RECIPES) - 1), data=st.data())
def test_edited_recipes_are_valid_requests_or_studio_errors(which: int, data: st.DataObject) -> None:
    """A valid recipe with some fields (request, top level, nested region) replaced by anything."""
    recipe = json.loads(json.dumps(RECIPES[which]))
    request = recipe["request"]
    value = JSON | WILD.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))) \
        | st.just(_png(Image.new("P", (8, 8)))) | st.just({"__image__": {"sha256": "x", "png_base64": "!!"}}) \
        | st.just({"__dataclass__": "Region", "prompt": "x"}) | st.integers(DEFAULT_MAX_PIXELS, 2**62)
    for name in data.draw(st.lists(st.sampled_from(sorted(request) + ["__extra__"]), max_size=4)):
        request[name] = data.draw(value)
    if data.draw(st.booleans()):
        recipe[data.draw(st.sampled_from(["index", "kind", "version", "request", "model"]))] = data.draw(value)
    if request.get("regions") and isinstance(request["regions"], list) and isinstance(request["regions"][0], dict):
        region = request["regions"][0]
        region[data.draw(st.sampled_from(sorted(region)))] = data.draw(value)
    parsed_or_refused(recipe)


@SMALL
@given(limit=st.integers(-(2**40), 2**62), regions=st.integers(-5, 10**9))
def test_a_recipe_never_raises_a_limit(limit: int, regions: int) -> None:
    recipe = json.loads(json.dumps(RECIPES[3]))
    recipe["request"].update(max_pixels=limit, max_regions=regions)
    request = parsed_or_refused(recipe)
    if request is not None:
        assert request.max_pixels == min(limit, DEFAULT_MAX_PIXELS) and request.max_regions == min(regions, MAX_REGIONS)


# --- the JSON readers -------------------------------------------------------------------------------


ENTRY = st.fixed_dictionaries({}, optional={k: JSON | WILD for k in
                                            ("prompt", "negative", "seed", "weight", "guidance_scale", "cfg", "x")})
COLOURS = st.sampled_from(["#ff0000", "#00f", "0000ff", "red", "", "#ggg000"]) | st.text(max_size=8)
NEAR_VALID = st.fixed_dictionaries({"prompt": st.none() | st.text(max_size=8)}, optional={
    "seed": st.integers(-5, 2**33), "weight": st.floats(-1, 200) | st.integers(-1, 200), "cfg": st.floats(-1, 60),
    "negative": st.text(max_size=5) | st.none()})


@SETTINGS
@given(table=JSON | st.dictionaries(COLOURS, st.none() | st.text(max_size=8) | ENTRY | JSON, max_size=4)
       | st.dictionaries(st.sampled_from(["#ff0000", "#00ff00", "#fff"]), NEAR_VALID, min_size=1, max_size=3))
def test_prompt_tables_parse_or_say_what_is_wrong(table: Any) -> None:
    parsed = built_or_refused(lambda: parse_prompt_table(table))
    if parsed is not None:
        for entry in parsed.values():
            assert entry.prompt is None or isinstance(entry.prompt, str)
            assert entry.seed is None or (isinstance(entry.seed, int) and 0 <= entry.seed <= MAX_SEED)
            assert 0 < entry.weight <= 100


@SETTINGS
@given(words=JSON | st.dictionaries(COLOURS, JSON, max_size=3))
def test_words_parse_or_say_what_is_wrong(words: Any) -> None:
    pairs = built_or_refused(lambda: word_pairs(words))
    if pairs is not None:
        assert all(isinstance(c, str) and isinstance(p, str) for c, p in pairs)
        built_or_refused(lambda: StrokeRequest(prompt="p", strokes=scribble(), words=pairs))


@SMALL
@given(text=st.text(max_size=60) | JSON.map(json.dumps) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_json_files_parse_or_say_what_is_wrong(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("json") / "f.json"
    path.write_text(text, encoding="utf-8")
    data = built_or_refused(lambda: read_json_file(path, "Prompts file", "{}"))
    if data is not None:
        built_or_refused(lambda: parse_prompt_table(data))


@SMALL
@given(data=st.binary(max_size=200), keep=st.integers(0, 400))
def test_damaged_image_bytes_open_or_say_what_is_wrong(data: bytes, keep: int) -> None:
    buffer = io.BytesIO()
    scribble().save(buffer, format="PNG")
    for candidate in (data, buffer.getvalue()[:keep] + data):
        image = built_or_refused(lambda: open_image(candidate))
        assert image is None or image.mode in ("RGB", "RGBA")


# --- every CLI range's extremes on every scheduler --------------------------------------------------


EXTREMES = {"steps": (1, 1000), "guidance_scale": (0.0, 50.0), "seed": (0, MAX_SEED), "num_images": (1, 16),
            "strength": (0.0, 1.0)}


@pytest.fixture(scope="module")
def tiny_config(tiny_model_dir: Path) -> dict:
    return json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_extreme_steps_are_accepted_or_refused_up_front(tiny_config: dict, scheduler: str) -> None:
    most = max_steps(scheduler, tiny_config)
    assert most >= 50  # every scheduler takes the usual step counts
    check_steps(scheduler, tiny_config, 1)
    check_steps(scheduler, tiny_config, most)
    for steps in (most + 1, 1000):
        if steps > most:
            with pytest.raises(StudioError, match=f"at most {most}"):
                check_steps(scheduler, tiny_config, steps)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_extreme_values_run_on_the_tiny_model(tiny_engine: Engine, scheduler: str) -> None:
    """One step at 64x64 (and the minimum 8x8) with every other range at an extreme."""
    init = scribble(64)
    for value in (0, 1):
        extreme = {k: v[value] for k, v in EXTREMES.items() if k not in ("steps", "num_images")}
        request = GenerationRequest(prompt="p", steps=1, scheduler=scheduler, width=64, height=64,
                                    init_image=init if value else None, **extreme)
        assert tiny_engine.run(request).images[0].size == (64, 64)
    assert tiny_engine.run(GenerationRequest(prompt="p", steps=1, scheduler=scheduler, width=8, height=8,
                                             num_images=16)).images[15].size == (8, 8)
    for bad in ({"steps": 0}, {"steps": 1001}, {"guidance_scale": 50.5}, {"seed": MAX_SEED + 1}, {"num_images": 17},
                {"strength": -0.1}, {"width": 0}, {"width": 4096, "height": 4096}):
        with pytest.raises(StudioError):
            GenerationRequest(prompt="p", scheduler=scheduler, **bad)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_extreme_values_run_for_panorama_and_stroke(tiny_engine: Engine, scheduler: str) -> None:
    pano = MultiDiffusionRequest(prompt="p", kind="panorama", width=64, height=64, steps=1, scheduler=scheduler,
                                 guidance_scale=50.0, seed=MAX_SEED, bootstrap=1.0, feather=64.0, soft_masks=True)
    assert tiny_engine.run(pano).images[0].size == (64, 64)
    method = "gradop" if scheduler in ("dpmpp_2m", "default") else "gradop+"  # gradop+: single-step only
    stroke = StrokeRequest(prompt="p", strokes=scribble(64), method=method, steps=2, scheduler=scheduler,
                           grad_steps=1, iterative_steps=100, strength=1.0, seed=MAX_SEED)
    assert tiny_engine.run(stroke).images[0].size == (64, 64)
