"""A generated partial Speech Commands release for tests (no Speech Commands data is needed)."""

from __future__ import annotations

import torch

SR = 16000
LENGTH = 1600  # 0.1 s clips keep the generated tree small


def _write(path, value: float, n: int = LENGTH):
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), torch.full((n,), value).numpy(), SR, subtype="FLOAT")


def make_release(folder, words, clips_per_word=3, missing_per_list=2, background=True):
    """A partial release: ``clips_per_word`` files per word; speaker ``s0`` is listed for testing, ``s1`` for
    validation, the rest trains. Each list also names ``missing_per_list`` files that do not exist.
    Every clip holds a constant whose value identifies it (``values[relpath]``)."""
    values, testing, validation = {}, [], []
    k = 0
    for word in words:
        for s in range(clips_per_word):
            rel = f"{word}/s{s}_nohash_0.wav"
            k += 1
            values[rel] = k / 1000
            _write(folder / rel, values[rel])
            (testing if s == 0 else validation if s == 1 else []).append(rel)
    testing += [f"{words[0]}/gone{i}_nohash_0.wav" for i in range(missing_per_list)]
    validation += [f"{words[-1]}/gone{i}_nohash_0.wav" for i in range(missing_per_list)]
    (folder / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (folder / "validation_list.txt").write_text("\n".join(validation) + "\n")
    if background:
        _write(folder / "_background_noise_" / "white_noise.wav", 0.5, n=20 * LENGTH)
    return values
