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
