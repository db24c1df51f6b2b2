"""Digit-sequence data and the CTC recogniser, on generated recordings (no shared data needed)."""

from __future__ import annotations

import pytest
import torch

from mmrobust.audio.recogniser import BLANK, CTCRecogniser, DigitCTC, error_rates
from mmrobust.audio.sequences import (DigitSequenceDataset, FSDDSequenceDataModule, collate_sequences,
                                      target_lists, transcript)
from mmrobust.attacks.ctc import greedy_decode

SR = 8000


def tone(digit: int, speaker: int, n: int = 1200) -> torch.Tensor:
    """A clip whose pitch encodes the digit and whose sign encodes the speaker (for the tests' bookkeeping)."""
    t = torch.arange(n) / SR
    return (0.2 + 0.05 * speaker) * torch.sin(2 * torch.pi * (300 + 150 * digit) * t).abs()


def write_recordings(root, speakers=("anna", "bert", "carl"), per_digit=3):
    import soundfile as sf

    rec = root / "recordings"
    rec.mkdir(parents=True)
    for s, name in enumerate(speakers):
        for d in range(10):
            for i in range(per_digit):
                sf.write(str(rec / f"{d}_{name}_{i}.wav"), tone(d, s, 800 + 100 * i).numpy(), SR)
    return root


def test_sequence_dataset_is_deterministic_and_never_mixes_speakers():
    clips = [tone(d, s) for s in range(2) for d in range(10)]
    digits = [d for _ in range(2) for d in range(10)]
    speakers = ["a" if s == 0 else "b" for s in range(2) for _ in range(10)]
    ds = DigitSequenceDataset(clips, digits, speakers, 30, gap_seconds=(0.05, 0.1), seed=5)
    again = DigitSequenceDataset(clips, digits, speakers, 30, gap_seconds=(0.05, 0.1), seed=5)
    other = DigitSequenceDataset(clips, digits, speakers, 30, gap_seconds=(0.05, 0.1), seed=6)
    for i in range(30):
        wave, seq, length = ds[i]
        assert 3 <= len(seq) <= 7 and length == wave.shape[0] == ds.length(i)
        assert torch.equal(wave, again[i][0]) and torch.equal(seq, again[i][1])
        peak = wave.abs().max()
        assert abs(float(peak) - (0.2 if ds.speaker(i) == "a" else 0.25)) < 1e-3  # one speaker's clips only
        # every digit is a 1200-sample clip; at least 400 samples of silence between two (0.05 s)
        active = (wave != 0).float()
        assert int(active.sum()) <= 1200 * len(seq) and wave.shape[0] >= 1200 * len(seq) + 400 * (len(seq) - 1)
    assert any(not torch.equal(ds[i][1], other[i][1]) for i in range(30))
    with pytest.raises(ValueError, match="digits must lie in 0..9"):
        DigitSequenceDataset(clips, [12] * 20, speakers, 3)
    with pytest.raises(ValueError, match="gap_seconds"):
        DigitSequenceDataset(clips, digits, speakers, 3, gap_seconds=(-0.1, 0.2))
    with pytest.raises(IndexError):
        ds[30]


def test_collate_pads_waves_with_zeros_and_targets_with_minus_one():
    items = [(torch.ones(5), torch.tensor([1, 2, 3]), 5), (torch.ones(3), torch.tensor([4, 5, 6, 7]), 3)]
    wave, targets, lengths, target_lengths = collate_sequences(items)
    assert wave.tolist() == [[1] * 5, [1, 1, 1, 0, 0]] and lengths.tolist() == [5, 3]
    assert targets.tolist() == [[1, 2, 3, -1], [4, 5, 6, 7]] and target_lengths.tolist() == [3, 4]
    assert target_lists(targets, target_lengths) == [[1, 2, 3], [4, 5, 6, 7]]


def test_fsdd_sequences_hold_out_the_test_speakers(tmp_path):
    root = write_recordings(tmp_path)
    dm = FSDDSequenceDataModule(root, test_speakers=("carl",), num_train=20, num_val=6, num_test=8,
                                batch_size=4, val_fraction=0.2)
    dm.setup()
    assert dm.speakers == ["anna", "bert", "carl"]
    assert {dm.test_set.speaker(i) for i in range(8)} == {"carl"}
    assert {dm.train_set.speaker(i) for i in range(20)} <= {"anna", "bert"}
    # validation and training utterances are made of different clips of the training speakers
    key = lambda c: c.numpy().tobytes()  # noqa: E731 (every generated recording differs)
    assert not {key(c) for c in dm.train_set.clips} & {key(c) for c in dm.val_set.clips}
    assert len(dm.train_set.clips) + len(dm.val_set.clips) == 60 and len(dm.test_set.clips) == 30
    batches = list(dm.train_dataloader())
    assert sum(len(b[0]) for b in batches) == 20
    wave, targets, lengths, target_lengths = batches[0]
    assert wave.shape == (4, int(lengths.max())) and wave.dtype == torch.float32
    pad = torch.arange(wave.shape[1])[None] >= lengths[:, None]
    assert bool((wave[pad] == 0).all())
    assert bool(((targets >= 0).sum(1) == target_lengths).all()) and int(targets.max()) <= 9
    with pytest.raises(ValueError, match="proper subset"):
        FSDDSequenceDataModule(root, test_speakers=("zoe",)).setup()
    with pytest.raises(ValueError, match="at least one speaker"):
        FSDDSequenceDataModule(root, test_speakers=())


def test_train_batches_are_augmented_only_in_training(tmp_path):
    from mmrobust.audio import SpeechAugmentation

    root = write_recordings(tmp_path, speakers=("anna", "bert"), per_digit=1)
    dm = FSDDSequenceDataModule(root, test_speakers=("bert",), num_train=4, num_val=2, num_test=2, batch_size=4,
                                augment=SpeechAugmentation(speed=(0.8, 0.8), reverb_probability=0.0))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer attached: untouched
    dm.trainer = type("T", (), {"training": True})()
    wave, _, lengths, _ = dm.on_after_batch_transfer(batch, 0)
    assert bool((lengths >= batch[2]).all()) and not torch.equal(wave, batch[0])  # slower: longer
    pad = torch.arange(wave.shape[1])[None] >= lengths[:, None]
    assert bool((wave[pad] == 0).all())


def test_digit_ctc_frames_and_one_lightning_training_step(tmp_path):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    model = DigitCTC(width=8, hidden=8)
    wave = torch.randn(2, 4321) * 0.1
    assert model.eval()(wave).shape == (2, int(model.frame_lengths(torch.tensor(4321))), BLANK + 1)
    model.train()
    assert model.frame_lengths(torch.tensor([4321, 800])).tolist() == [28, 6]  # 1 + T // 80 STFT frames, halved (ceil)
    root = write_recordings(tmp_path, speakers=("anna", "bert"), per_digit=1)
    dm = FSDDSequenceDataModule(root, test_speakers=("bert",), num_train=8, num_val=4, num_test=4, batch_size=4)
    module = CTCRecogniser(model, lr=1e-2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and {"val/cer", "val/wer", "val/loss"} <= set(metrics)
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if k.endswith("weight"))
    test = trainer.test(module, dm, verbose=False)[0]
    assert {"test/cer", "test/wer"} <= set(test)
    with pytest.raises(TypeError, match="frame_lengths"):
        CTCRecogniser(torch.nn.Linear(2, 2))


def test_greedy_decoding_with_the_digit_blank_and_error_rates():
    frames = [0, 0, BLANK, 0, 3, 3, BLANK, BLANK, 7, 7]
    lp = torch.full((1, len(frames), BLANK + 1), -10.0)
    lp[0, torch.arange(len(frames)), torch.tensor(frames)] = 0.0
    assert greedy_decode(lp, BLANK) == [[0, 0, 3, 7]]
    assert greedy_decode(lp, BLANK, torch.tensor([6])) == [[0, 0, 3]]
    assert transcript([0, 0, 3, 7]) == "zero zero three seven"
    assert error_rates([[1, 2, 3]], [[1, 2, 3]]) == {"cer": 0.0, "wer": 0.0, "ser": 0.0}
    rates = error_rates([[1, 2], [4]], [[1, 2, 3], [4]])
    # "one two" vs "one two three": one of 4 reference words, 6 of 17 reference characters
    assert rates["wer"] == pytest.approx(1 / 4) and rates["cer"] == pytest.approx(6 / 17)
    assert rates["ser"] == 0.5
