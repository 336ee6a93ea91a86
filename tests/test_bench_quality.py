"""The quality bench's measures: colour naming, the Frechet distance, the held-out region scenes."""
from __future__ import annotations

import numpy as np

from bench import bench_quality as Q
from training import procedural as P


def test_every_colour_word_names_its_own_colour_and_lab_is_right() -> None:
    for word, rgb in P.PALETTE.items():
        assert Q.nearest_colour_word(rgb) == word
    assert np.allclose(Q.srgb_to_lab(np.array([255, 255, 255])), [100, 0, 0], atol=0.05)
    assert np.allclose(Q.srgb_to_lab(np.array([0, 0, 0])), [0, 0, 0], atol=1e-6)


def test_colour_families_group_each_word_under_one_colour_of_the_app_palette() -> None:
    from studio_ui.widgets import SWATCHES

    families = (set(SWATCHES) - {"eraser"}) | {"white", "grey"}
    assert set(Q.COLOUR_FAMILY) == set(P.PALETTE) and set(Q.COLOUR_FAMILY.values()) <= families
    for word, family in Q.COLOUR_FAMILY.items():
        if word.split()[-1] in families:  # "dark red" is red, "red" itself
            assert family == word.split()[-1], word
    item = Q.region_scenes(1)[0]
    assert all(Q.score_families(item.colours, item))
    same = [[w for w, f in Q.COLOUR_FAMILY.items() if f == Q.COLOUR_FAMILY[c]][-1] for c in item.colours]
    assert same != item.colours  # some region is named by another shade of its colour
    other = [next(w for w, f in Q.COLOUR_FAMILY.items() if f != Q.COLOUR_FAMILY[c]) for c in item.colours]
    assert all(Q.score_families(same, item)) and not any(Q.score_families(other, item))


def test_frechet_distance_is_zero_for_the_same_set_and_the_mean_shift_squared_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert abs(Q.frechet_distance(a, a)) < 1e-6
    shift = np.array([1.0, -2.0, 0, 0, 0, 0.5])
    assert abs(Q.frechet_distance(a, a + shift) - float(shift @ shift)) < 1e-6
    assert Q.frechet_distance(a, 2 * a) > 1.0  # a wider spread is far too


def test_region_scenes_are_held_out_daytime_with_a_coloured_prompt_per_region() -> None:
    items = Q.region_scenes(4)
    assert len(items) == 4
    for item in items:
        assert item.scene.time == "day" and "sky" in item.background
        for (kind, prompt, mask), colour in zip(item.regions, item.colours):
            assert colour in prompt and colour in P.PALETTE and mask.mean() >= Q.MIN_REGION and kind != "sky"
        flat = P.render_scribble(item.scene, Q.SIZE)
        assert all(Q.score_regions(flat, item))  # a flat scribble of the scene names every colour right


def test_the_sweep_covers_the_papers_comparison() -> None:
    names = Q.stroke_settings()
    assert {"SDEdit 0.6", "GradOP+ 1.00", "GradOP+ 0.00", "GradOP 0.50", "text-to-image"} <= set(names)
    rows = {"SDEdit 0.5": {"faithfulness": 0.02, "frechet": 10.0}, "SDEdit 0.6": {"faithfulness": 0.04, "frechet": 8.0},
            "GradOP+ 0.50": {"faithfulness": 0.05, "frechet": 6.0}, "GradOP+ 1.00": {"faithfulness": 0.01, "frechet": 7.0}}
    claims = Q.stroke_claims(rows)
    assert claims["below_sdedit"] and claims["fidelity1_as_faithful_as_sdedit06"]
    assert {c["sdedit"] for c in claims["compared"]} == {"SDEdit 0.5", "SDEdit 0.6"}


def test_the_panorama_part_scores_realism_and_seams_of_each_window_mode(tiny_engine) -> None:
    import torch

    from training import eval as E

    torch.manual_seed(0)
    net = E.AttributeNet(input_size=32, width=4).eval()
    real = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    result = Q.run_panorama(tiny_engine, 2, 2, 0, net, real, lambda _: None)
    assert result["canvas_px"] == [256, 64] and set(result["rows"]) == {*Q.PANORAMA_MODES, "text-to-image"}
    for mode in Q.PANORAMA_MODES:
        row = result["rows"][mode]
        assert row["images"] == 8 and np.isfinite(row["frechet"]) and row["seam_score"] > 0  # 2 captions x 4 crops
    assert result["rows"]["text-to-image"]["images"] == 8  # as many pictures as crops
    assert "## Panoramas" in Q.markdown({"model": "tiny", "real_count": 6, "name": "t", "steps": 2, "seed": 0,
                                          "threads": 1, "command": "x", "seconds": 1.0, "panorama": result})


def test_the_composed_part_scores_gradop_plus_with_region_prompts_beside_each_method_alone(tiny_engine) -> None:
    result = Q.run_composed(tiny_engine, 1, 4, 0, lambda _: None)
    assert result["scenes"] == 1 and result["regions"] == len(Q.region_scenes(1)[0].regions)
    assert set(result["rows"]) == set(Q.COMPOSED_ROWS)
    for row in result["rows"].values():
        assert 0 <= row["region_colour_accuracy"] <= 1 and 0 < row["faithfulness"] < 1
    # the composed run is guided by the scribble: closer to it than the region prompts alone
    rows = result["rows"]
    assert rows["GradOP+ 0.50 + region prompts"]["faithfulness"] < rows["MultiDiffusion (region prompts)"]["faithfulness"]
    table = Q.markdown({"model": "tiny", "real_count": 6, "name": "t", "steps": 4, "seed": 0, "threads": 1,
                        "command": "x", "seconds": 1.0, "composed": result})
    assert "## Composed" in table and "GradOP+ fast 0.50 + region prompts" in table
