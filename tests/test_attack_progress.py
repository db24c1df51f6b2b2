"""Long attacks show progress (issue 19): PRBCD's epochs and an Ensemble's members tick on a terminal, stay
quiet off one (logs, CI, this test's own stderr) and with ``progress=False``; the numbers do not change."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

from mmrobust.attacks import FGSM, PGD, Ensemble
from mmrobust.threats import LinfBall


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _tiny():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 6, generator=g)
    model = nn.Sequential(nn.Linear(6, 5)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(5, 6, generator=g) * 3)
        y = model(x).argmax(1)
    return model, (x, y)


def test_ensemble_members_tick_on_a_terminal_only(monkeypatch, capsys):
    model, batch = _tiny()
    threat = LinfBall(0.2, lower=0, upper=1)
    members = [FGSM(threat), PGD(threat, steps=2, seed=0)]
    quiet = Ensemble(members)(model, batch)  # pytest's stderr is no terminal
    assert "ensemble" not in capsys.readouterr().err
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    shown = Ensemble(members)(model, batch)
    text = term.getvalue()
    assert "ensemble" in text and "2/2" in text and "pgd" in text
    assert torch.equal(shown.success, quiet.success)
    off = _Terminal()
    monkeypatch.setattr("sys.stderr", off)
    Ensemble(members, progress=False)(model, batch)
    Ensemble.standard(threat, steps=1, n_target_classes=1, n_queries=2, progress=False)(model, batch)
    assert off.getvalue() == ""


def test_prbcd_epochs_tick_on_a_terminal_only(monkeypatch, capsys):
    pytest.importorskip("torch_geometric")
    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.graph.data import sbm_graph
    from mmrobust.graph.models import GCN
    from mmrobust.threats import EdgeFlips

    data = sbm_graph(num_nodes=40, num_classes=2, p_in=0.2, p_out=0.02, seed=0)
    torch.manual_seed(0)
    model = GCN(data.num_features, 2, hidden=8).eval()

    def prbcd(**kw):
        return PRBCD(EdgeFlips(0.1), block_size=500, epochs=6, adapter=GraphAdapter(mask="test"), seed=0, **kw)

    quiet = prbcd()(model, data)
    assert "PRBCD" not in capsys.readouterr().err
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    shown = prbcd()(model, data)
    # tqdm redraws at most every 0.1 s, so which epoch counts are drawn depends on the machine's speed
    assert "PRBCD" in term.getvalue() and re.search(r"\d/6", term.getvalue())
    assert torch.equal(shown.batch.edge_index, quiet.batch.edge_index)
    off = _Terminal()
    monkeypatch.setattr("sys.stderr", off)
    prbcd(progress=False)(model, data)
    assert off.getvalue() == ""


def test_sweep_shows_the_budget_on_a_terminal(monkeypatch):
    import mmrobust

    model, batch = _tiny()
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    mmrobust.sweep(model, [batch], FGSM(LinfBall(0.1, lower=0, upper=1)), [0.05, 0.2], progress=True,
                   checks=False)
    assert "budget sweep" in term.getvalue() and "budget 0.2" in term.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    mmrobust.sweep(model, [batch], FGSM(LinfBall(0.1, lower=0, upper=1)), [0.05, 0.2], progress=False,
                   checks=False)
    assert quiet.getvalue() == ""
