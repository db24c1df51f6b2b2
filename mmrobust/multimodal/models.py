"""Late-fusion classifiers for dict batches with an image and a waveform.

Late (decision-level) fusion combines per-modality predictions (Baltrušaitis et al. 2019, "Multimodal
Machine Learning: A Survey and Taxonomy", https://arxiv.org/abs/1705.09406, Sec. 5.1):

.. math:: f(x^{img}, x^{aud}) = g\\big(f_{img}(x^{img}),\\ f_{aud}(x^{aud})\\big), \\qquad
   g_{sum}(a, b) = a + b, \\quad g_{concat}(a, b) = W [a; b] + c

Summed logits are a product of experts; an attack on one modality must then outweigh the other
modality's evidence, which is what single-modality attacks (``Joint(...).only("image")``) measure
(the single-source adversaries of Yang et al. 2021, "Defending Multimodal Fusion Models against
Single-Source Adversaries", CVPR).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..errors import check_choice, check_int

FUSIONS = ("sum", "concat")


class LateFusionClassifier(nn.Module):
    """An image branch and an audio branch, each returning ``num_classes`` logits, fused late.

    Called as ``model(image=..., audio=...)``, the convention of
    :class:`~mmrobust.adapters.MultimodalAdapter` for ``{"image", "audio", "y"}`` batches.

    Args:
        image_branch: ``(B, C, H, W) -> (B, num_classes)``.
        audio_branch: ``(B, T) -> (B, num_classes)``.
        num_classes: number of classes.
        fusion: ``"sum"`` (add the logits) or ``"concat"`` (a linear layer on the concatenated logits).
    """

    def __init__(self, image_branch: nn.Module, audio_branch: nn.Module, num_classes: int = 10,
                 fusion: str = "sum"):
        super().__init__()
        self.image_branch, self.audio_branch = image_branch, audio_branch
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.fusion = check_choice("fusion", fusion, FUSIONS)
        self.head: Optional[nn.Linear] = nn.Linear(2 * num_classes, num_classes) if fusion == "concat" else None

    def branches(self, image: Tensor, audio: Tensor) -> Dict[str, Tensor]:
        """Per-modality logits (for attribution and per-branch accuracy)."""
        out = {"image": self.image_branch(image), "audio": self.audio_branch(audio)}
        for name, logits in out.items():
            if logits.dim() != 2 or logits.shape[1] != self.num_classes:
                raise ValueError(f"the {name} branch must return (batch, {self.num_classes}) logits, got "
                                 f"{tuple(logits.shape)}")
        return out

    def forward(self, image: Tensor, audio: Tensor) -> Tensor:
        out = self.branches(image, audio)
        if self.head is None:
            return out["image"] + out["audio"]
        return self.head(torch.cat([out["image"], out["audio"]], dim=1))


def paired_digits_model(image_size: int = 8, num_classes: int = 10, fusion: str = "sum", image_width: float = 0.5,
                        image_hidden: int = 128, audio_width: int = 16) -> LateFusionClassifier:
    """The reference model of the paired-digits task: SmallCNN (Madry et al. 2018) on the image and M5
    (Dai et al. 2017) on the raw waveform, fused late."""
    from ..audio.models import M5
    from ..image.models import SmallCNN

    return LateFusionClassifier(
        SmallCNN(in_channels=1, num_classes=num_classes, image_size=image_size, width=image_width, hidden=image_hidden),
        M5(num_classes, width=audio_width), num_classes=num_classes, fusion=fusion)
