"""Dataset writer and trainer, end to end on a few tiny images with the micro preset."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.errors import StudioError
from training import make_dataset, train
from training.checkpoint import EMA, latest_checkpoint, optimizer_from_safetensors, optimizer_to_safetensors
from training.data import EpochSampler, find_records
from training.procedural import ATTRIBUTE_OBJECTS, LABEL_IDS, STYLE_KEYWORDS, STYLES

MICRO = ["--resolution", "64", "--preset", "micro", "--vae-steps", "2", "--batch-size", "4",
         "--vae-batch-size", "4", "--checkpoint-every", "1", "--samples", "0", "--threads", "1",
         "--no-progress", "--lr-schedule", "constant", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paintings")
    make_dataset.main(["--out", str(out), "--count", "8", "--size", "64", "--seed", "3", "--with-scribbles"])
    return out


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "full"
    train.main(["--data", str(dataset), "--out", str(out), "--steps", "3", *MICRO])
    return out


def test_make_dataset_writes_an_imagefolder(dataset: Path) -> None:
    lines = [json.loads(x) for x in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert [x["file_name"] for x in lines] == [f"{i:06d}.png" for i in range(8)]
    for line in lines:
        img = cv2.imread(str(dataset / line["file_name"]))
        assert img.shape == (64, 64, 3)
        assert line["style"] in STYLES and STYLE_KEYWORDS[line["style"]] in line["text"]
        assert set(line["labels"]) == set(ATTRIBUTE_OBJECTS)
        assert line["time"] in line["text"]
        scribble = cv2.imread(str(dataset / line["scribble"]))
        regions = cv2.imread(str(dataset / line["region_map"]), cv2.IMREAD_UNCHANGED)
        assert scribble.shape == (64, 64, 3) and regions.shape == (64, 64)
        assert {int(v) for v in np.unique(regions)} <= set(LABEL_IDS.values())
        assert {int(k) for k in line["regions"]} == {int(v) for v in np.unique(regions)}
    assert len(find_records(dataset)) == 8


def test_make_dataset_is_the_same_with_workers(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    make_dataset.main(["--out", str(one), "--count", "4", "--size", "32", "--seed", "5"])
    make_dataset.main(["--out", str(two), "--count", "4", "--size", "32", "--seed", "5", "--workers", "2"])
    assert (one / "metadata.jsonl").read_text() == (two / "metadata.jsonl").read_text()
    for i in range(4):
        assert (one / f"{i:06d}.png").read_bytes() == (two / f"{i:06d}.png").read_bytes()


def test_text_file_captions(tmp_path: Path) -> None:
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), np.full((40, 50, 3), 60 * i, np.uint8))
        (tmp_path / f"img{i}.txt").write_text(f"caption {i}\n")
    records = find_records(tmp_path)
    assert [r.text for r in records] == ["caption 0", "caption 1"]


def test_trained_folder_loads_in_diffusers_and_samples(trained: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pickled = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
    weights = [p for p in trained.rglob("*") if p.is_file() and p.suffix in pickled]
    assert not weights, weights  # safetensors only, also in checkpoints/
    pipe = StableDiffusionPipeline.from_pretrained(trained)
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the data
    assert pipe.unet.config.sample_size == 8 and pipe.vae_scale_factor == 8
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a watercolor of a lake at night", num_inference_steps=2, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    info = json.loads((trained / "training_args.json").read_text())
    assert info["images"] == 8 and info["unet_steps_run"] == 3


def test_resume_continues_from_the_checkpoint_exactly(dataset: Path, trained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out, ckpt = tmp_path / "resumed", tmp_path / "ckpt"
    args = ["--data", str(dataset), "--out", str(out), "--checkpoint-dir", str(ckpt), *MICRO]
    train.main([*args, "--steps", "2"])
    assert latest_checkpoint(ckpt).step == 2
    train.main([*args, "--steps", "3", "--resume"])
    assert latest_checkpoint(ckpt).step == 3
    assert not (out / "checkpoints").exists()
    log = [json.loads(x) for x in (ckpt / "log.jsonl").read_text().splitlines()]
    assert {"stage": "unet", "resumed_from": 2}.items() <= next(x for x in log if "resumed_from" in x).items()
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(trained / part)), load_file(str(out / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_refuses_to_overwrite_checkpoints_without_resume(dataset: Path, trained: Path) -> None:
    with pytest.raises(FileExistsError):
        train.main(["--data", str(dataset), "--out", str(trained), "--steps", "3", *MICRO])


def test_init_from_fine_tunes_an_sd_folder(dataset: Path, trained: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "tuned"
    train.main(["--data", str(dataset), "--out", str(out), "--init-from", str(trained), "--steps", "1", *MICRO])
    pipe = StableDiffusionPipeline.from_pretrained(out)
    base = StableDiffusionPipeline.from_pretrained(trained)
    assert pipe.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    assert pipe.vae.config.scaling_factor == base.vae.config.scaling_factor
    te_a, te_b = pipe.text_encoder.state_dict(), base.text_encoder.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)  # frozen by default
    unet_a, unet_b = pipe.unet.state_dict(), base.unet.state_dict()
    assert any(not torch.equal(unet_a[k], unet_b[k]) for k in unet_a)
    config = json.loads((out / "training_args.json").read_text())["config"]
    assert config["noise_offset"] == 0.0  # no offset noise when fine-tuning unless asked


def test_vae_from_reuses_a_trained_vae(dataset: Path, trained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "reused"
    train.main(["--data", str(dataset), "--out", str(out), "--vae-from", str(trained), "--steps", "1", *MICRO])
    part = "vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(trained / part)), load_file(str(out / part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "checkpoints").glob("vae-*"))  # no stage A
    assert list((trained / "checkpoints" / "samples").glob("vae-*.png"))  # stage A previews


def test_decoder_stage_trains_the_decoder_only_and_is_reused_on_resume(dataset: Path, trained: Path,
                                                                       tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out, ckpt = tmp_path / "decoded", tmp_path / "ckpt"
    args = ["--data", str(dataset), "--out", str(out), "--checkpoint-dir", str(ckpt), "--vae-from", str(trained),
            "--steps", "1", "--decoder-steps", "2", "--decoder-lr", "1e-3", *MICRO]
    train.main(args)
    part = "vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(trained / part)), load_file(str(out / part))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    log = [json.loads(x) for x in (ckpt / "log.jsonl").read_text().splitlines()]
    assert any(x.get("stage") == "decoder" and "preview_l1" in x for x in log)
    train.main([*args, "--resume"])  # the finished stage C is reused, not run again
    log_again = [json.loads(x) for x in (ckpt / "log.jsonl").read_text().splitlines()]
    assert sum(x.get("stage") == "decoder" for x in log_again) == sum(x.get("stage") == "decoder" for x in log)
    again = load_file(str(out / part))
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_an_interrupted_decoder_stage_resumes_exactly(dataset: Path, trained: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    part = "vae/diffusion_pytorch_model.safetensors"
    outs = {}
    for name in ("whole", "stopped"):
        out, ckpt = tmp_path / name, tmp_path / f"ckpt-{name}"
        args = ["--data", str(dataset), "--out", str(out), "--checkpoint-dir", str(ckpt), "--init-from", str(trained),
                "--steps", "0", "--decoder-steps", "3", "--decoder-lr", "1e-3", *MICRO]
        train.main(args)
        if name == "stopped":  # as if killed after stage C's checkpoint at step 2
            assert latest_checkpoint(ckpt).stage == "decoder" and latest_checkpoint(ckpt).step == 2
            shutil.rmtree(ckpt / "vae-decoder")
            shutil.rmtree(out)
            train.main([*args, "--resume"])
            log = [json.loads(x) for x in (ckpt / "log.jsonl").read_text().splitlines()]
            assert {"stage": "decoder", "resumed_from": 2}.items() <= next(x for x in log if "resumed_from" in x).items()
        outs[name] = load_file(str(out / part))
    assert all(torch.equal(outs["whole"][k], outs["stopped"][k]) for k in outs["whole"])
    unet = "unet/diffusion_pytorch_model.safetensors"  # --steps 0: the UNet is the one it started from
    a, b = load_file(str(trained / unet)), load_file(str(tmp_path / "whole" / unet))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_optimizer_state_round_trips_through_safetensors() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_safetensors(opt)
    meta = json.loads(json.dumps(meta))
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer_from_safetensors(fresh, tensors, meta)
    a, b = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])


def test_ema_and_sampler() -> None:
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert not torch.equal(ema.shadow["weight"], model.weight)
    sampler = EpochSampler(10, 4, seed=1)
    first_epoch = torch.cat([sampler.indices(0), sampler.indices(1), sampler.indices(2)[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert torch.equal(EpochSampler(10, 4, seed=1).indices(2), sampler.indices(2))


def test_lr_schedule() -> None:
    assert train.lr_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert train.lr_at(10, 100, 1.0, 10, "cosine") == pytest.approx(1.0)
    assert train.lr_at(100, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert train.lr_at(50, 100, 1.0, 10, "constant") == 1.0


def _unet_inputs(offset: float) -> dict[str, torch.Tensor]:
    cfg = train.TrainConfig(data=Path("."), out=Path("."), batch_size=64, noise_offset=offset)
    mean = torch.zeros(64, 4, 8, 8, dtype=torch.float16)
    cache = train.LatentCache(mean=mean, std=torch.zeros_like(mean), ids=torch.zeros(64, 5, dtype=torch.long))
    alphas = train.train_scheduler().alphas_cumprod.float()
    return train.unet_batch(cfg, cache, torch.zeros(5, dtype=torch.long), EpochSampler(64, 64, 0), 1.0, alphas, 0)


def test_noise_offset_adds_a_constant_per_image_and_channel() -> None:
    plain, offset = _unet_inputs(0.0), _unet_inputs(0.5)
    shift = offset["noise"] - plain["noise"]  # same generator draws, then the offset
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0.3 < float(shift[:, :, 0, 0].std()) < 0.7
    assert torch.allclose(plain["noise"].mean(dim=(2, 3)).std(), torch.tensor(1 / 8), rtol=0.3)


@pytest.mark.parametrize("args, message", [
    (["--mixed-precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
    (["--resolution", "100"], "multiple of 8, got 100"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--steps", "many"], "invalid int value"),
])
def test_cli_user_errors_are_one_line_and_exit_2(dataset: Path, tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as exit_info:
        code = train.cli(["--data", str(dataset), "--out", str(out), *args])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err
    assert not out.exists()


def test_cli_without_images_writes_nothing(tmp_path: Path, capsys) -> None:
    assert train.cli(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "model")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no captioned images in {tmp_path / 'empty'}"
    assert not (tmp_path / "model").exists()


def test_mixed_precision_on_a_cpu() -> None:
    cpu = torch.device("cpu")
    assert train.autocast_dtype(cpu, "auto") is None
    assert train.autocast_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(StudioError, match="bf16"):
        train.autocast_dtype(cpu, "fp16")


def test_bf16_training_on_a_cpu_saves_fp32_weights_and_resumes_exactly(dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    bf16 = ["--data", str(dataset), "--mixed-precision", "bf16", *MICRO]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train.main(["--out", str(whole), "--steps", "3", *bf16])
    train.main(["--out", str(resumed), "--steps", "2", *bf16])
    train.main(["--out", str(resumed), "--steps", "3", "--resume", *bf16])
    part = "unet/diffusion_pytorch_model.safetensors"
    weights, again = load_file(str(whole / part)), load_file(str(resumed / part))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    info = json.loads((whole / "training_args.json").read_text())
    assert info["mixed_precision"] == "torch.bfloat16" and info["config"]["noise_offset"] == 0.1


def test_stage_a_can_learn_the_scribbles_too_and_continue_a_vae(dataset: Path, trained: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file
    from training.data import scribble_records

    scribbles = scribble_records(dataset)
    assert len(scribbles) == 8 and all(r.path.parent.name == "scribbles" and r.path.exists() for r in scribbles)
    seen: list[int] = []
    original = train.train_vae
    monkeypatch.setattr(train, "train_vae", lambda cfg, m, store, *a: seen.append(len(store)) or original(cfg, m, store, *a))
    out = tmp_path / "colour"
    train.main(["--data", str(dataset), "--out", str(out), "--steps", "1", "--vae-scribbles", "--vae-colour-weight", "2",
                "--vae-init", str(trained), *MICRO])
    assert seen == [16]  # 8 paintings + their 8 scribbles
    log = [json.loads(x) for x in (out / "checkpoints" / "log.jsonl").read_text().splitlines()]
    assert all("colour" in x for x in log if x.get("stage") == "vae" and "loss" in x)
    part = "vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(str(trained / part)), load_file(str(out / part))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(StudioError, match="lists no scribbles"):
        plain = tmp_path / "plain"
        plain.mkdir()
        cv2.imwrite(str(plain / "a.png"), np.zeros((64, 64, 3), np.uint8))
        (plain / "a.txt").write_text("a black square")
        train.main(["--data", str(plain), "--out", str(tmp_path / "x"), "--steps", "1", "--vae-scribbles", *MICRO])


def test_the_colour_term_is_the_l1_of_block_means() -> None:
    x = torch.zeros(1, 3, 16, 16)
    rec = x.clone()
    rec[:, 0, :8, :8] = 0.5  # one 8x8 block of one channel off by 0.5: block means differ by 0.5 there
    _, parts = train.reconstruction_loss(rec, x, 0.0, 1.0)
    assert parts["colour"] == pytest.approx(0.5 / 12)  # 1 of 3 channels x 4 blocks
    assert "colour" not in train.reconstruction_loss(rec, x, 0.0)[1]


def test_a_fine_tune_onto_another_vae_learns_its_latents(dataset: Path, trained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    other = tmp_path / "other"
    train.main(["--data", str(dataset), "--out", str(other), "--steps", "1", "--seed", "9", *MICRO])
    out = tmp_path / "swapped"
    train.main(["--data", str(dataset), "--out", str(out), "--init-from", str(trained), "--vae-from", str(other),
                "--steps", "1", *MICRO])
    part = "vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(other / part)), load_file(str(out / part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    cache = load_file(str(next((out / "checkpoints").glob("latents-*.safetensors"))))
    mean, std = cache["mean"].double(), cache["std"].double()
    scaling = json.loads((out / "vae" / "config.json").read_text())["scaling_factor"]
    assert scaling == pytest.approx(float(1 / (mean.var() + (std ** 2).mean()).sqrt()), rel=1e-3)
    assert scaling != json.loads((trained / "vae" / "config.json").read_text())["scaling_factor"]


def test_vae_norm_groups_override() -> None:
    from training.models import apply_overrides, build_vae, preset

    cfg = apply_overrides(preset("small"), vae_norm_groups=1)
    assert cfg.vae.norm_num_groups == 1 and build_vae(cfg.vae, 64).config.norm_num_groups == 1
    with pytest.raises(StudioError, match="must divide every VAE block's channels"):
        apply_overrides(preset("small"), vae_norm_groups=3)


def test_vae_only_stops_after_stage_a(dataset: Path, tmp_path: Path, capsys) -> None:
    from diffusers import AutoencoderKL

    out = tmp_path / "vae-only"
    train.main(["--data", str(dataset), "--out", str(out), "--vae-only", "--vae-scribbles", *MICRO])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "training_args.json", "vae"]
    info = json.loads((out / "training_args.json").read_text())
    assert info["vae_only"] and info["vae_images"] == 16 and info["images"] == 8
    vae = AutoencoderKL.from_pretrained(out / "vae")
    assert vae.config.scaling_factor == pytest.approx(info["scaling_factor"]) and vae.config.scaling_factor != 0.18215
    assert "saved" in capsys.readouterr().out
    assert train.cli(["--data", str(dataset), "--out", str(tmp_path / "y"), "--vae-only", "--init-from", str(out),
                      *MICRO]) == 2
