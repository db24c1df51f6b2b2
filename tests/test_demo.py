"""``mmrobust demo``: every modality's runner joins, the report is complete and its numbers are the runners'."""

from __future__ import annotations

import json

import pytest
import torch

import mmrobust.audio.demo as audio_demo
import mmrobust.demo as demo
import mmrobust.graph.demo as graph_demo
from mmrobust.cli import main

SUMMARY = "Clean and robust accuracy, all modalities"
NUMBERS = ("clean acc", "robust acc")


def test_audio_and_graph_runners_join_the_demo():
    demo._register_optional_runners()
    assert demo.RUNNERS["audio"] is audio_demo.run and demo.RUNNERS["graph"] is graph_demo.run


def test_graph_demo_refuses_a_folder_without_cora(tmp_path):
    with pytest.raises(FileNotFoundError, match="cora_root"):
        graph_demo.demo_datamodule(str(tmp_path))


def test_graph_demo_default_is_the_generated_csbm():
    name, dm = graph_demo.demo_datamodule()
    dm.setup("fit")
    assert name == "CSBM" and dm.data.num_nodes == graph_demo.CSBM["num_nodes"] == 300
    assert int(dm.data.y.max()) + 1 == graph_demo.CSBM["num_classes"]
    assert int(dm.data.train_mask.sum()) == 30 and int(dm.data.test_mask.sum()) == 240
    again = graph_demo.demo_datamodule()[1]
    again.setup("fit")
    assert torch.equal(again.data.edge_index, dm.data.edge_index)      # the same graph on every run


@pytest.mark.slow
def test_quick_demo_writes_a_consistent_report(tmp_path, monkeypatch):
    returned = {}

    def recording(name, runner):
        def run(report, args):
            rows = runner(report, args)
            returned[name] = rows
            return rows
        return run

    # the demo looks the runners up at call time; wrap them to keep what each one returned
    monkeypatch.setitem(demo.RUNNERS, "image", recording("image", demo.RUNNERS["image"]))
    monkeypatch.setattr(audio_demo, "run", recording("audio", audio_demo.run))
    monkeypatch.setattr(graph_demo, "run", recording("graph", graph_demo.run))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0

    assert set(returned) == {"image", "audio", "graph"}
    for name in ("report.md", "report.html", "results.json"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3 and all(p.stat().st_size > 1000 for p in pngs)
    markdown, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for png in pngs:
        assert f"]({png.name})" in markdown and f'src="{png.name}"' in html

    tables = {t["title"]: t["rows"] for t in json.loads((out / "results.json").read_text())["tables"]}
    summary = tables[SUMMARY]
    expected = [row for name in ("image", "audio", "graph") for row in returned[name]]
    assert [r["model"] for r in summary] == [r["model"] for r in expected]
    for saved, row in zip(summary, expected):
        for key in NUMBERS:
            assert saved[key] == pytest.approx(row[key])
        assert 0 <= saved["robust acc"] <= saved["clean acc"] <= 1
    assert {r["modality"].split()[0] for r in summary} == {"image", "speech", "graph"}


def test_cora_root_reaches_the_graph_runner(tmp_path, monkeypatch):
    seen = {}

    def fake_graph_run(report, args):
        seen["cora_root"] = args.cora_root
        report.section("Graph")
        return [{"modality": "graph (Cora)", "model": "GCN normal", "clean acc": 0.8, "robust acc": 0.5,
                 "attack": "PRBCD", "train s": 1.0}]

    monkeypatch.setattr(graph_demo, "run", fake_graph_run)
    main(["demo", "--modalities", "graph", "--cora-root", str(tmp_path / "planetoid"), "--out", str(tmp_path / "out")])
    assert seen["cora_root"] == str(tmp_path / "planetoid")
    rows = {t["title"]: t["rows"] for t in json.loads((tmp_path / "out" / "results.json").read_text())["tables"]}
    assert rows[SUMMARY][0]["modality"] == "graph (Cora)"


def test_speech_names_the_audio_part(tmp_path, monkeypatch):
    """The README calls the audio part "speech"; `--modalities speech` runs it (once, also when both are named)."""
    calls = []

    def fake_audio_run(report, args):
        calls.append(args.modalities)
        return [{"modality": "speech (synthetic digits)", "model": "M5 normal", "clean acc": 1.0, "robust acc": 0.1,
                 "attack": "PGD-10", "train s": 1.0}]

    monkeypatch.setattr(audio_demo, "run", fake_audio_run)
    main(["demo", "--modalities", "speech", "audio", "--out", str(tmp_path / "out")])
    assert calls == [["audio"]]
