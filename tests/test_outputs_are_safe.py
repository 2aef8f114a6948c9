"""Nothing outside the project's own output is deleted, and a failed or empty run replaces nothing: crafted
names, an output folder that holds the source log, bad ranges, kills mid-write; every CLI error is one line."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from ml.cli import main
from ml.config import DATA_DIR_ENV, Paths
from ml.loaders.load import load
from ml.outputs import MARKER, OutputError, checked_name, publish, staging

TIANCHI_LOG = Path(__file__).parent / "fixtures" / "real" / "tianchi_mobile_user_sample.csv"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "mlflow").mkdir(parents=True)
    (root / "mlflow" / "mlflow.db").write_text("the team's runs")
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    return root


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "q'||'", "", "a\\b", ".hidden", "x" * 101, 'a"b'])
def test_a_dataset_name_that_is_not_one_plain_folder_is_refused(name):
    with pytest.raises(OutputError, match="not a plain name"):
        Paths.default().dataset(name)
    assert checked_name("tianchi-mobile_2014.v2") == "tianchi-mobile_2014.v2"


@pytest.mark.parametrize("command", ["load", "generate"])
def test_cli_with_the_name_dotdot_deletes_nothing_and_says_why_in_one_line(data_dir, capsys, command):
    argv = (["load", "--format", "tianchi-mobile", str(TIANCHI_LOG), "--name", ".."] if command == "load"
            else ["generate", "--preset", "tiny", "--name", ".."])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a plain name" in err and "Traceback" not in err
    assert (data_dir / "mlflow" / "mlflow.db").read_text() == "the team's runs"


def test_load_never_replaces_the_folder_that_holds_its_source_log(tmp_path, capsys):
    mine = tmp_path / "my_logs"
    mine.mkdir()
    log, notes = mine / "log.csv", mine / "notes.txt"
    shutil.copy(TIANCHI_LOG, log)
    notes.write_text("keep me")
    assert main(["load", "--format", "tianchi-mobile", str(log), "--out", str(mine)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert log.read_bytes() == TIANCHI_LOG.read_bytes() and notes.read_text() == "keep me"
    # a folder the project made, with the source log put inside it: refused too
    out = tmp_path / "ours"
    load("tianchi-mobile", [TIANCHI_LOG], out)
    shutil.copy(TIANCHI_LOG, out / "log.csv")
    with pytest.raises(OutputError, match="is inside it"):
        load("tianchi-mobile", [out / "log.csv"], out)


def test_a_folder_the_project_did_not_make_is_never_replaced(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    with pytest.raises(OutputError, match="not a folder Purchase Crowd made"):
        load("tianchi-mobile", [TIANCHI_LOG], other)
    assert (other / "cat.jpg").read_text() == "meow" and not list(tmp_path.glob(".photos.partial-*"))


def test_a_bad_range_or_nothing_accepted_keeps_the_old_dataset(tmp_path, capsys):
    out = tmp_path / "t"
    m = load("tianchi-mobile", [TIANCHI_LOG], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert (out / MARKER).exists() and m["events"] > 0
    assert main(["load", "--format", "tianchi-mobile", str(TIANCHI_LOG), "--out", str(out),
                 "--start", "2014-12-10", "--end", "2014-12-01"]) == 2
    assert "after --end" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"no event .* was accepted"):
        load("tianchi-mobile", [TIANCHI_LOG], out, start=dt.date(2020, 1, 1), end=dt.date(2020, 2, 1))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not list(tmp_path.glob(".t.*"))  # no staging folder left behind


def test_a_directory_or_a_missing_file_as_input_is_one_clear_line_saying_which(tmp_path, capsys):
    assert main(["load", "--format", "tianchi-mobile", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a file" in err and err.count("\n") == 1
    # a path that is not there is said to be missing, not to be a folder
    assert main(["load", "--format", "tianchi-mobile", str(tmp_path / "UserBehaviour.csv")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("UserBehaviour.csv: no such file") and err.count("\n") == 1


def test_a_kill_before_publish_leaves_the_old_output_whole(tmp_path):
    """Staging is written beside the output; until the rename, the old one is untouched, and the next run
    of the same output clears the leftover."""
    out = tmp_path / "ds"
    first = staging(out)
    (first / "v").write_text("1")
    publish(first, out)
    killed = staging(out)
    (killed / "v").write_text("2, half written")  # the process dies here: no publish
    assert (out / "v").read_text() == "1"
    again = staging(out)
    assert not killed.exists() and again.exists()
    (again / "v").write_text("3")
    publish(again, out)
    assert (out / "v").read_text() == "3" and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_device_that_is_not_here_fails_before_any_work(capsys, data_dir):
    assert main(["train", "--model", "dnn", "--device", "cuda:7", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "CUDA device" in err and err.count("\n") == 1


def test_a_data_dir_that_cannot_be_written_fails_before_training(capsys, tmp_path, monkeypatch):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(DATA_DIR_ENV, str(blocked))
    assert main(["train", "--model", "dnn", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "not training" in err and err.count("\n") == 1


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import ml.cli

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(ml.cli, "_cmd_tasks", boom)
    assert main(["tasks"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyError" in err and "--debug" in err
    assert main(["--debug", "tasks"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_make_clean_leaves_a_data_directory_set_elsewhere(tmp_path):
    """`make clean` ran `rm -rf $(CROWD_DATA_DIR)`: a data directory of the user's (a loaded log and an MLflow
    history, or a folder of other things) went with the venv. It removes the checkout's own data/ only."""
    import os
    import subprocess

    checkout, elsewhere = tmp_path / "checkout", tmp_path / "my-data"
    for folder in (checkout / ".venv" / "bin", checkout / "data" / "raw", elsewhere / "mlflow"):
        folder.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "Makefile", checkout / "Makefile")
    (elsewhere / "mlflow" / "mlflow.db").write_text("runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "CROWD_DATA_DIR"))}
    done = subprocess.run(["make", "-s", "clean", f"CROWD_DATA_DIR={elsewhere}"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "mlflow" / "mlflow.db").read_text() == "runs" and f"left {elsewhere}" in done.stdout
    assert not (checkout / ".venv").exists() and not (checkout / "data").exists()
    (checkout / "data" / "raw").mkdir(parents=True)  # the default: the checkout's data/, removed without a word
    done = subprocess.run(["make", "-s", "clean"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (checkout / "data").exists() and "left" not in done.stdout
    help_text = subprocess.run(["make", "-s", "help"], cwd=checkout, env=env, capture_output=True, text=True,
                               timeout=60).stdout
    assert all(f"make {target} " in help_text for target in ("run", "test", "airflow", "mlflow", "clean", "lint"))
