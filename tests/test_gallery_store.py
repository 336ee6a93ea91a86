"""The gallery store: PNG + recipe + JSON sidecar with the UI state, listing, deleting."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from core.engine import Engine
from core.loading import LoadOptions
from core.outputs import replay
from core.recipe import read_recipe
from core.requests import GenerationRequest
from studio_ui.gallery import REPO_ROOT, GalleryStore, outputs_dir, shown_path

UI = {"page": "scribble", "seed": 5, "settings": {"prompt": "a red sun", "steps": 2},
      "canvas": {"drawing": {"objects": [{"type": "Rect", "left": 1}]}, "dims": [480, 480]}, "rows": {"#e53935": {"words": "sun"}}}


@pytest.fixture(scope="module")
def two_images(tiny_engine: Engine):
    init = Image.new("RGB", (64, 64), (229, 57, 53))
    return tiny_engine.run(GenerationRequest(prompt="a red sun", steps=2, seed=5, num_images=2, init_image=init,
                                             strength=0.5))


def test_save_writes_png_with_recipe_and_sidecar(tmp_path: Path, tiny_engine: Engine, two_images) -> None:
    store = GalleryStore(tmp_path)
    items = store.save(two_images, tiny_engine.bundle, page="scribble", title="a red sun", ui=UI)
    assert len(items) == 2
    for index, item in enumerate(items):
        assert item.image_path.is_file() and item.meta_path.is_file()
        meta = json.loads(item.meta_path.read_text())
        assert meta["ui"] == UI and meta["page"] == "scribble" and meta["title"] == "a red sun"
        assert meta["index"] == index and meta["seed"] == 5 + index and meta["count"] == 2
        assert meta["recipe"] == read_recipe(item.image_path)  # the same recipe as in the PNG
        assert meta["recipe"]["kind"] == "img2img" and "Seed: " in meta["parameters"]
        with Image.open(item.image_path) as png:
            assert "parameters" in png.info
    assert {it.id for it in store.items()} == {it.id for it in items}


def test_recipe_in_the_gallery_replays_exactly(tmp_path: Path, tiny_engine: Engine, two_images,
                                               tiny_model_dir: Path) -> None:
    item = GalleryStore(tmp_path).save(two_images, tiny_engine.bundle, page="scribble", title="x", ui=UI)[1]
    image, _, _ = replay(item.image_path, LoadOptions(model=str(tiny_model_dir), device="cpu"))
    with Image.open(item.image_path) as saved:
        assert list(image.getdata()) == list(saved.convert("RGB").getdata())


def test_list_get_delete_newest_first(tmp_path: Path, tiny_engine: Engine, two_images) -> None:
    store = GalleryStore(tmp_path)
    first = store.save(two_images, tiny_engine.bundle, page="scribble", title="first", ui=UI)
    time.sleep(0.01)
    second = store.save(two_images, tiny_engine.bundle, page="regions", title="second", ui={"page": "regions"})
    listed = store.items()
    assert len(listed) == 4 and {it.title for it in listed[:2]} == {"second"}
    got = store.get(first[0].id)
    assert got is not None and got.ui == UI and got.page == "scribble"
    assert store.delete(first[0].id)
    assert not first[0].image_path.exists() and not first[0].meta_path.exists()
    assert not store.delete(first[0].id)
    assert len(store.items()) == 3 and second[0].id in {it.id for it in store.items()}


def test_bad_ids_and_damaged_sidecars_are_ignored(tmp_path: Path, tiny_engine: Engine, two_images) -> None:
    store = GalleryStore(tmp_path)
    store.save(two_images, tiny_engine.bundle, page="scribble", title="ok", ui=UI)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "orphan.json").write_text(json.dumps({"format": "studio-gallery", "image": "missing.png"}))
    assert len(store.items()) == 2
    for bad in ("../etc/passwd", "", "a/b", ".hidden"):
        assert store.get(bad) is None and not store.delete(bad)
    assert GalleryStore(tmp_path / "nothing-yet").items() == []


def test_outputs_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STUDIO_OUTPUTS_DIR", str(tmp_path / "out"))
    assert outputs_dir() == tmp_path / "out" and GalleryStore().root == tmp_path / "out"
    monkeypatch.delenv("STUDIO_OUTPUTS_DIR")
    assert outputs_dir().name == "outputs"


def test_the_app_names_the_outputs_folder_short() -> None:
    assert shown_path(REPO_ROOT / "outputs") == "outputs/"
    assert shown_path(Path.home() / "art" / "studio") == "~/art/studio/"
    assert shown_path(Path("/srv/studio-outputs")) == "/srv/studio-outputs"
