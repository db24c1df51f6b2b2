"""Recipes: the paired-digits task and late-fusion model, the run.py recipes' --quick mode, and
recipes/README.md listing every recipe."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from mmrobust.adapters import MultimodalAdapter, infer_adapter
from mmrobust.multimodal import LateFusionClassifier, PairedDigitsDataModule, pair_by_class, paired_digits_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


@pytest.fixture(scope="module")
def paired():
    data = PairedDigitsDataModule(num_train=60, num_val=20, num_test=40, max_length=1000, batch_size=20, seed=3)
    data.setup("fit")
    return data


def test_pairs_share_the_class_and_splits_stay_apart(paired):
    for split in ("train", "val", "test"):
        ds = paired.sets[split]
        image_labels = torch.stack([ds.image_set[int(j)][1] for j in ds.partner])
        audio_labels = ds.audio_set.labels
        assert torch.equal(image_labels, audio_labels)
    # images of the test pairs come from the image test split only (no test image seen in training)
    train_images = {tuple(paired.sets["train"].image_set[int(j)][0].flatten().tolist())
                    for j in paired.sets["train"].partner}
    test_images = {tuple(paired.sets["test"].image_set[int(j)][0].flatten().tolist())
                   for j in paired.sets["test"].partner}
    assert paired.sets["train"].image_set is not paired.sets["test"].image_set
    assert len(train_images & test_images) <= 2  # sklearn digits holds a few exact duplicate images


def test_pairing_is_seeded(paired):
    again = PairedDigitsDataModule(num_train=60, num_val=20, num_test=40, max_length=1000, seed=3)
    again.setup()
    assert torch.equal(again.sets["train"].partner, paired.sets["train"].partner)
    audio, images = torch.arange(200) % 10, torch.arange(1000) % 10
    draws = [pair_by_class(audio, images, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(images[draws[2]], audio)
    # every image of a class is a candidate partner (uniform over the class, not a fixed one)
    assert len(draws[0][audio == 3].unique()) > 10


def test_batches_are_multimodal_dicts_with_valid_lengths(paired):
    batch = next(iter(paired.train_dataloader()))
    assert set(batch) == {"image", "audio", "lengths", "y"}
    assert batch["image"].shape == (20, 1, 8, 8) and batch["audio"].shape == (20, 1000)
    assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1
    assert float(batch["audio"].abs().max()) <= 1
    adapter = infer_adapter(batch)
    assert isinstance(adapter, MultimodalAdapter)
    victim = adapter.victim(paired_digits_model(), batch)
    assert set(victim.inputs) == {"image", "audio"}
    # padding beyond each clip's length is masked out of the audio perturbation
    mask = victim.masks["audio"]
    assert torch.equal(mask.sum(-1).long().flatten(), batch["lengths"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image"):
        PairedDigitsDataModule(image="cifar")
    with pytest.raises(ValueError, match="mnist_root"):
        PairedDigitsDataModule(image="mnist")
    with pytest.raises(ValueError, match="fsdd_root"):
        PairedDigitsDataModule(audio="fsdd")
    with pytest.raises(ValueError, match="fusion"):
        paired_digits_model(fusion="attention")


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_late_fusion_combines_the_branch_logits(paired, fusion):
    torch.manual_seed(0)
    model = paired_digits_model(fusion=fusion).eval()
    batch = next(iter(paired.test_dataloader()))
    with torch.no_grad():
        out = model(image=batch["image"], audio=batch["audio"])
        branches = model.branches(batch["image"], batch["audio"])
        expected = branches["image"] + branches["audio"] if fusion == "sum" else \
            model.head(torch.cat([branches["image"], branches["audio"]], 1))
    assert out.shape == (20, 10)
    assert torch.allclose(out, expected)


def test_late_fusion_refuses_branches_with_the_wrong_width():
    model = LateFusionClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7)),
                                 torch.nn.Linear(100, 10), num_classes=10)
    with pytest.raises(ValueError, match="image branch must return"):
        model(image=torch.rand(2, 1, 8, 8), audio=torch.rand(2, 100))


@pytest.mark.data
def test_fsdd_and_mnist_pairs(tmp_path, shared_data):
    if not (shared_data / "fsdd" / "recordings").is_dir() or not (shared_data / "MNIST" / "raw").is_dir():
        pytest.skip("FSDD or MNIST missing from the shared data")
    data = PairedDigitsDataModule(image="mnist", audio="fsdd", mnist_root=shared_data / "MNIST" / "raw",
                                  fsdd_root=shared_data / "fsdd", max_length=2000, work_dir=tmp_path, seed=0)
    data.setup()
    assert len(data.sets["test"]) == 300  # FSDD official split: recordings 0-4 of 6 speakers x 10 digits
    batch = next(iter(data.test_dataloader()))
    assert batch["image"].shape[-2:] == (28, 28)
    ds = data.sets["test"]
    assert all(int(ds.image_set[int(ds.partner[i])][1]) == int(ds.audio_set.labels[i]) for i in range(0, 300, 37))


def _load_recipe(name: str):
    path = RECIPES / name / "run.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "-1"], "--epochs must be an integer >= 1, got -1"),  # Lightning's max_epochs=-1: endless
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--train-steps", "0"], "--train-steps must be an integer >= 1"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--eval-batches", "0"], "--eval-batches must be an integer >= 1"),
    (["--limit-train", "0"], "--limit-train must be an integer >= 1"),
    (["--quick", "--epochs", "-1"], "--epochs must be an integer >= 1, got -1"),
])
def test_multimodal_recipe_refuses_bad_counts_at_parse_time(capsys, flags, named):
    with pytest.raises(SystemExit):
        _load_recipe("multimodal").parse_args(flags)
    assert named in capsys.readouterr().err


def test_multimodal_recipe_quick_presets_are_defaults_that_flags_override():
    parse = _load_recipe("multimodal").parse_args
    quick = parse(["--quick"])
    assert (quick.epochs, quick.train_steps, quick.steps, quick.limit_train, quick.eval_batches) == (3, 2, 5, 600, 2)
    given = parse(["--quick", "--epochs", "7", "--train-steps", "4", "--steps", "9", "--limit-train", "50",
                   "--eval-batches", "1"])
    assert (given.epochs, given.train_steps, given.steps, given.limit_train, given.eval_batches) == (7, 4, 9, 50, 1)
    assert parse(["--quick", "--epochs", "6"]).epochs == 6  # a flag given with the full run's default wins too
    full = parse([])
    assert (full.epochs, full.train_steps, full.steps, full.limit_train, full.eval_batches) == (6, 5, 20, None, None)
    assert (full.eps, parse(["--mnist", "somewhere"]).eps, parse(["--eps", "0.3"]).eps) == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("flags, named", [
    (["--threads", "-1"], "--threads must be an integer >= 1"),  # torch.set_num_threads(-1) failed at the start
    (["--threads", "0"], "--threads must be an integer >= 1"),   # silently ignored before
    (["--sparsity", "1.5"], "--sparsity must lie in [0, 1]"),     # refused by Pruning only after the first model
])
def test_three_modalities_recipe_refuses_bad_flags_at_parse_time(capsys, flags, named):
    with pytest.raises(SystemExit):
        _load_recipe("three_modalities").parse_args(flags)
    assert named in capsys.readouterr().err


def test_three_modalities_recipe_parses_its_defaults():
    args = _load_recipe("three_modalities").parse_args(["--quick", "--modalities", "graph", "--threads", "1"])
    assert (args.quick, args.modalities, args.sparsity, args.threads) == (True, ["graph"], 0.5, 1)


@pytest.mark.slow
def test_multimodal_recipe_quick(tmp_path):
    rows = _load_recipe("multimodal").main(["--quick", "--out", str(tmp_path)])
    by_training = {r["training"]: r for r in rows}
    assert set(by_training) == {"normal", "joint PGD-AT"}
    for row in rows:
        # the joint attack is at least as strong as either single-modality attack (worst case per example)
        assert row["joint attack"] <= min(row["image only attack"], row["audio only attack"]) + 1e-6
        assert row["joint attack"] <= row["clean"]
    assert by_training["normal"]["clean"] > 0.4  # learns in 3 quick epochs (chance is 0.1)
    saved = json.loads((tmp_path / "results.json").read_text())["tables"][0]["rows"]
    assert [r["joint attack"] for r in saved] == pytest.approx([r["joint attack"] for r in rows])
    assert (tmp_path / "accuracy_by_attacked_modality.png").stat().st_size > 0


@pytest.mark.slow
def test_three_modalities_recipe_quick(tmp_path):
    rows = _load_recipe("three_modalities").main(["--quick", "--modalities", "image", "graph", "--out", str(tmp_path)])
    assert [(r["modality"], r["training"]) for r in rows] == [
        ("image", "normal"), ("image", "AT + pruning 50%"), ("graph", "normal"), ("graph", "AT + pruning 50%")]
    for row in rows:
        assert 0 <= row["robust acc"] <= row["clean acc"] <= 1
        assert row["sparsity"] == pytest.approx(0.0 if row["training"] == "normal" else 0.5, abs=0.01)
    image = {r["training"]: r for r in rows if r["modality"] == "image"}
    assert image["AT + pruning 50%"]["robust acc"] > image["normal"]["robust acc"] + 0.1
    assert (tmp_path / "report.md").is_file()


def test_readme_lists_every_recipe():
    text = (RECIPES / "README.md").read_text()
    recipes = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*")
                     if p.suffix in (".yaml", ".py") and "output" not in p.parts)
    missing = [r for r in recipes if f"recipes/{r}" not in text]
    assert not missing, f"recipes/README.md does not mention {missing}"
    assert "mmrobust demo" in text
