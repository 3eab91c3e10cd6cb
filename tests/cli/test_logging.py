"""Quiet by default: warnings only unless -v; INFO lines go through tqdm while a progress bar runs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fastsample.cli import main


@pytest.fixture
def npz_pair(tmp_path):
    np.savez_compressed(tmp_path / "a.npz", mu=np.zeros(2), sigma=np.eye(2))
    np.savez_compressed(tmp_path / "b.npz", mu=np.ones(2), sigma=np.eye(2))
    return [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]


@pytest.mark.parametrize(
    "flags, level", [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG)]
)
def test_log_level(npz_pair, flags, level, monkeypatch):
    seen = {}

    def record(args):
        seen["level"] = logging.getLogger().level
        seen["handlers"] = [type(h).__name__ for h in logging.getLogger().handlers]
        logging.getLogger("fastsample.test").info("an info line")
        return 0

    monkeypatch.setattr("fastsample.cli.fid.run", record)
    assert main(["fid", *npz_pair, *flags]) == 0
    assert seen["level"] == level
    assert "_TqdmLoggingHandler" in seen["handlers"]  # log lines are written around progress bars


def test_default_run_prints_no_info(npz_pair, capsys):
    assert main(["fid", *npz_pair]) == 0
    captured = capsys.readouterr()
    assert "INFO" not in captured.err and captured.out.startswith("FID: 2.000000")
