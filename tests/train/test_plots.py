"""The loss-curve figure: a log y-axis for positive losses, warm-up cropped otherwise, titled with what and when."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from train import plots


@pytest.mark.parametrize("offset, scale", [(1.0, "log"), (-1.5, "linear")])
def test_loss_curve_scale_and_titles(tmp_path, monkeypatch, offset, scale):
    seen = {}
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig))  # keep the figure to inspect it
    rows = [{"step": s, "kind": "train", "loss": 17.7 / s ** 0.5 + offset} for s in range(25, 801, 25)]
    rows.append({"step": 400, "kind": "eval", "val_loss": 1.5 + offset, "val_loss_per_t": [2.0] * 10})
    path = plots.plot_loss_curve(rows, tmp_path / "loss.png", "token2mel")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = seen["fig"].axes[0]
    assert ax.get_yscale() == scale
    assert ax.get_title() == "token2mel: train and validation loss, steps 1-800"
    assert seen["fig"]._suptitle.get_text().startswith("token2mel at step 800 (")
    if scale == "linear":  # the first 10 % of steps (loss up to 2.04) lie above the cropped range
        tail = [r["loss"] for r in rows[3:-1]]
        assert ax.get_ylim()[1] < rows[0]["loss"] and ax.get_ylim()[1] >= max(tail)


def test_speech_metrics_panels_baselines_and_title(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig))
    assert plots.plot_speech_metrics([{"step": 1, "kind": "train", "loss": 1.0}], tmp_path / "m.png") is None
    rows = [{"step": s, "kind": "eval", "val_mel_l1": 1.5 - s / 1000, "val_mel_l1_baseline": 1.41,
             "val_mel_l1_lookup": 0.70, "val_fd": 300.0 / s, "val_fd_baseline": 295.5, "val_fd_lookup": 15.0,
             "val_fd_truth": 6.1} for s in (400, 800)]
    path = plots.plot_speech_metrics(rows, tmp_path / "m.png", "token2mel")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = [a for a in seen["fig"].axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["mel L1 (lower is better)", "Fréchet distance (realism) (lower is better)"]
    l1, fd = axes
    assert fd.get_yscale() == "log" and l1.get_yscale() == "linear"
    # the model's points and one horizontal line per baseline/ceiling (mel L1's truth is 0 by construction)
    assert list(l1.lines[0].get_ydata()) == [1.1, 0.7]
    assert sorted(round(line.get_ydata()[0], 3) for line in l1.lines[1:]) == [0.0, 0.7, 1.41]
    assert sorted(round(line.get_ydata()[0], 3) for line in fd.lines[1:]) == [6.1, 15.0, 295.5]
    assert seen["fig"]._suptitle.get_text().startswith("token2mel: generation metrics vs step, steps up to 800 (")
