"""Joint threat models for batches with several attackable inputs (multimodal batches)."""

from __future__ import annotations

from typing import Dict, Mapping, Union

from .base import ThreatModel


class Joint(Dict[str, ThreatModel]):
    """One threat model per named input, attacked together: each input stays within its own budget.

    ``Joint({"image": LinfBall(0.1, lower=0, upper=1), "audio": SNRBall(30)})`` lets any attack perturb the
    image and the waveform of a ``{"image", "audio", "y"}`` batch at once. An attack given a Joint with
    only some of the inputs perturbs those alone; that is how per-modality attribution is measured.

    Example:
        >>> from mmrobust.threats import Joint, LinfBall, SNRBall
        >>> threat = Joint({"image": LinfBall(0.1, lower=0, upper=1), "audio": SNRBall(30)})
        >>> sorted(threat), sorted(threat.only("audio"))
        (['audio', 'image'], ['audio'])
    """

    def __init__(self, threats: Mapping[str, ThreatModel]):
        if not isinstance(threats, Mapping) or not threats:
            raise ValueError("Joint needs a non-empty mapping {input name: ThreatModel}")
        for name, t in threats.items():
            if not isinstance(t, ThreatModel):
                raise TypeError(f"Joint threat for input {name!r} must be a ThreatModel, got {type(t).__name__}")
        super().__init__(threats)

    def only(self, *names: str) -> "Joint":
        """The joint threat restricted to some inputs (the others stay clean)."""
        unknown = set(names) - set(self)
        if unknown:
            raise KeyError(f"Joint has no threat for {sorted(unknown)}; it has {sorted(self)}")
        return Joint({k: self[k] for k in names})

    def scaled(self, factor: float) -> "Joint":
        """Every input's threat model with ``factor`` times its radius (see :meth:`ThreatModel.scaled`)."""
        return Joint({k: t.scaled(factor) for k, t in self.items()})

    def __repr__(self) -> str:
        return "Joint({" + ", ".join(f"{k!r}: {v!r}" for k, v in self.items()) + "})"


def scaled_threat(threat: Union[ThreatModel, Mapping[str, ThreatModel]], factor: float):
    """The threat model (or mapping of threat models, e.g. :class:`Joint`) with ``factor`` times every radius
    (or flip count), as each threat model defines it (:meth:`~mmrobust.threats.ThreatModel.scaled`: a dB level
    moves by ``20 log10 f``, an edge count becomes ``floor(f * count)``); a Joint stays a Joint."""
    if isinstance(threat, (ThreatModel, Joint)):
        return threat.scaled(factor)
    return {k: t.scaled(factor) for k, t in threat.items()}
