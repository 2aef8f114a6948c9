"""Settings fail early with the setting named; the CLI lists its commands and writes where it is told."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ml.cli import build_parser, main
from ml.config import Paths, Schedule, Windows, data_dir, parse_date


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_dir() == (tmp_path / "elsewhere").resolve()
    assert Paths.default().warehouse.is_relative_to(tmp_path)


def test_default_schedule_is_the_original_projects():
    s = Schedule()
    assert s.sample_dates[0] == dt.date(2013, 7, 1) and s.sample_dates[-1] == dt.date(2013, 9, 16)
    assert len(s.sample_dates) == 12
    assert s.all_dates[-1] == dt.date(2013, 9, 23)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: parse_date("2013-13-01", "first_sample"), "first_sample: expected a date"),
        (lambda: Schedule(target="shop"), "target: expected one of"),
        (lambda: Windows(label_days=0), "label_days"),
        (lambda: Windows(history_days=20, sequence_days=30), "sequence_days"),
        (lambda: Schedule(evaluation=dt.date(2013, 9, 1)), "evaluation"),
    ],
)
def test_bad_settings_fail_with_the_setting_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_help_lists_the_subcommands():
    text = build_parser().format_help()
    for command in ("generate", "load"):
        assert command in text


def test_generate_command_writes_a_dataset_and_skips_it_when_present(tmp_path, capsys):
    args = ["generate", "--preset", "tiny", "--users", "50", "--items", "80", "--brands", "8",
            "--no-oracle", "--quiet", "--out", str(tmp_path / "d")]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["sizes"]["users"] == 50 and manifest["events"] > 0
    assert main([*args, "--skip-if-present"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_generate_command_rejects_bad_sizes_cleanly(tmp_path, capsys):
    assert main(["generate", "--users", "10", "--items", "2", "--brands", "5", "--out", str(tmp_path / "d")]) == 2
    assert "--items" in capsys.readouterr().err
