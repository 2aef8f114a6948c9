"""Settings fail early with the setting named; the CLI lists its commands and writes where it is told."""

from __future__ import annotations

import json
import os
import re

import pytest

from ml.cli import build_parser, main
from ml.config import Paths, data_dir, parse_date
from ml.task import TaskError, TaskPaths, load_task


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_dir() == (tmp_path / "elsewhere").resolve()
    assert Paths.default().mlflow_db.is_relative_to(tmp_path)
    assert TaskPaths.of(load_task()).warehouse.is_relative_to(tmp_path)


def test_a_bad_date_fails_with_the_setting_named():
    with pytest.raises(ValueError, match="first_sample: expected a date"):
        parse_date("2013-13-01", "first_sample")


def test_help_lists_the_subcommands():
    text = build_parser().format_help()
    for command in ("generate", "load"):
        assert command in text


def test_every_command_shows_its_defaults_and_examples_that_parse():
    import shlex

    from ml.cli import EXAMPLES

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "examples:" in text, name
        for action in sub._actions:  # an option with a default says it
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert "default" in (action.help or "") or "(default: " in text, (name, action.dest)
            if action.option_strings and action.dest != "help":
                assert action.help, f"crowd {name} {action.option_strings[0]} has no help"
        for line in EXAMPLES[name]:  # each example is a command line the parser takes
            args = shlex.split(line.split("#")[0])
            assert args[:2] == ["crowd", name], line
            parser.parse_args(args[1:])


def test_load_help_names_every_format_and_those_with_an_item_table():
    """The load command's line and its --items help were typed by hand and fell behind the formats (csv)."""
    from ml.loaders.formats import FORMATS

    parser = build_parser()
    load = parser._subparsers._group_actions[0].choices["load"]
    (items,) = (a for a in load._actions if a.dest == "items")
    listed = " ".join(parser.format_help().split())
    with_items = " ".join(items.help.split()).split("one: ")[1].rstrip(")").split(", ")
    assert set(with_items) == {name for name, fmt in FORMATS.items() if fmt.items is not None}
    for name in FORMATS:
        assert name in listed, name


def test_a_command_whose_reader_has_left_the_pipe_ends_quietly(tmp_path):
    """`crowd tasks | head -1`: the reader gone, the command ends as one in a pipe does (141, SIGPIPE's code) and
    says nothing; it said "crowd tasks: failed: Broken pipe" and exited 1."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has left before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "ml.cli", "tasks"], stdout=write, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "CROWD_DATA_DIR": str(tmp_path)})
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_generate_help_says_what_every_preset_is():
    from ml.synth.params import PRESETS

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    (preset,) = (a for a in generate._actions if a.dest == "preset")
    for name in PRESETS:
        assert f" {name} (" in preset.help, name


def test_generate_command_writes_a_dataset_and_skips_it_when_present(tmp_path, capsys):
    args = ["generate", "--preset", "tiny", "--users", "50", "--items", "80", "--brands", "8",
            "--no-oracle", "--quiet", "--out", str(tmp_path / "d")]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["sizes"]["users"] == 50 and manifest["events"] > 0
    assert main([*args, "--skip-if-present"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_another_presets_sizes_keep_the_tasks_days_and_world_and_its_own_dates_are_refused(tmp_path, monkeypatch,
                                                                                          capsys):
    """`make run TASK=tianchi-mobile-2014 PRESET=tiny` passed --preset tiny: it wrote the brand task's 2013 log as
    the item task's dataset, and the warehouse refused it next. The preset's sizes now come in the task's own days
    and world; the preset itself, whose days the task does not label, is refused before anything is written."""
    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path))
    dataset = Paths.default().dataset("tianchi-mobile")
    tianchi = ["generate", "--task", "tianchi-mobile-2014", "--no-oracle", "--quiet"]
    assert main([*tianchi, "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "preset tiny's log would run 2013-04-01 .. 2013-09-30, but task tianchi-mobile-2014 labels 2014-12-11" in err
    assert "--sizes-of tiny keeps the task's own preset (tianchi)" in err and not dataset.exists()
    assert main([*tianchi, "--sizes-of", "tiny", "--users", "40"]) == 0
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["sizes"] == {"users": 40, "items": 1_500, "brands": 60, "start": "2014-11-18", "end": "2014-12-19"}
    assert manifest["hourly"] and (dataset / "item_subset.parquet").exists()  # the Tianchi look-alike's world
    # a log too short for the task's own dates is refused too, and the one there is kept
    assert main(["generate", "--task", "tianchi-mobile-2014", "--end", "2014-12-18"]) == 2
    assert "--start 2014-12-10 or earlier and --end 2014-12-19 or later hold them" in capsys.readouterr().err
    assert json.loads((dataset / "manifest.json").read_text()) == manifest


def test_a_command_says_its_result_once_and_the_library_log_line_only_with_verbose(tmp_path):
    """`crowd generate` printed the dataset's size twice: its own line and the generator's log line (the
    ml.results loggers, which Airflow's task logs keep); -v shows both."""
    import subprocess
    import sys

    def run(*flags: str) -> str:
        done = subprocess.run([sys.executable, "-m", "ml.cli", *flags, "generate", "--preset", "tiny", "--users", "30",
                               "--no-oracle", "--quiet", "--out", str(tmp_path / f"d{len(flags)}")],
                              capture_output=True, text=True, env={**os.environ, "CROWD_DATA_DIR": str(tmp_path)})
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    said = run()
    assert said.startswith("wrote ") and len(said.strip().splitlines()) == 1, said
    assert "ml.results.synth: generated" in run("-v")


def test_progress_bars_stay_off_a_log_file(tmp_path):
    """`crowd generate > generate.log 2>&1` wrote the bar's carriage-return frames into the file; a bar is for a
    terminal (tqdm's disable=None), the result line for both."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ml.cli", "generate", "--preset", "tiny", "--users", "30",
                           "--no-oracle", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, env={**os.environ, "CROWD_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "\r" not in said and "user/s" not in said, said
    assert said.startswith("wrote "), said


def test_a_first_drawing_on_a_machine_adds_no_matplotlib_line_to_a_commands_output(tmp_path):
    """The first `crowd train` on a machine printed matplotlib's "generated new fontManager" at INFO, the font
    cache being built (a fresh MPLCONFIGDIR stands for a fresh machine); -v keeps it."""
    import subprocess
    import sys

    def run(*flags: str, config: str) -> str:
        code = (f"import sys; from ml.cli import main; main([*{list(flags)!r}, 'tasks']); "
                "import matplotlib.pyplot as plt; plt.figure()")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "MPLCONFIGDIR": str(tmp_path / config)})
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "fontManager" not in run(config="quiet")
    assert "generated new fontManager" in run("-v", config="verbose")


def test_the_result_lines_leave_a_commands_output_but_stay_in_the_task_logs(tmp_path, monkeypatch):
    """A command that prints its results leaves the library's result loggers out; `crowd run-dags` and `crowd
    airflow`, whose tasks write Airflow's task logs, keep them there (a run-dags' log lost its dbt build lines)."""
    import logging

    from ml.cli import RESULTS_LOGGER

    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path))
    results = logging.getLogger(RESULTS_LOGGER)
    try:
        results.setLevel(logging.NOTSET)
        assert main(["tasks"]) == 0 and results.level == logging.ERROR
        results.setLevel(logging.NOTSET)
        main(["run-dags", "--ds", "2013-07-03", "--no-training"])  # no period of the task: refused at once
        assert results.level == logging.NOTSET
        assert main(["-v", "tasks"]) == 0 and results.level == logging.NOTSET
    finally:
        results.setLevel(logging.NOTSET)


def test_run_dags_refuses_a_task_file_that_has_no_dags(tmp_path, monkeypatch, capsys):
    """The DAGs are made from tasks/*.yaml and read the task by name: a file elsewhere failed in the first DAG
    run with an AttributeError, and one named like a shipped task would have run the shipped file's settings."""
    from ml.task import TASKS_DIR

    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path / "data"))
    mine = tmp_path / "my-brands.yaml"
    mine.write_text((TASKS_DIR / "tmall-2013.yaml").read_text())
    assert main(["run-dags", "--task", str(mine), "--no-training"]) == 2
    said = capsys.readouterr().err
    assert "has no DAGs" in said and f"copy it to {TASKS_DIR / 'my-brands.yaml'}" in said
    same_name = tmp_path / "tmall-2013.yaml"
    same_name.write_text(mine.read_text())
    assert main(["run-dags", "--task", str(same_name), "--no-training"]) == 2
    assert "holds another task of that name" in capsys.readouterr().err
    # the file under tasks/, named by its path, is the DAGs' own: it gets past the check (to the missing data)
    assert main(["run-dags", "--task", str(TASKS_DIR / "tmall-2013.yaml"), "--no-training"]) == 2
    said = capsys.readouterr().err
    assert "has no DAGs" not in said and "holds no events" in said


def test_a_labelled_date_past_the_log_fails_before_the_warehouse_is_built(tiny_dataset, capsys):
    import datetime as dt

    from ml.crowds import log_days

    first, last = log_days(tiny_dataset)
    assert main(["warehouse", "--set", f"backtest={last}", "--ds", str(last)]) == 2
    captured = capsys.readouterr()
    assert f"{last}: its label window runs to " in captured.err and f"past the log's last day {last}" in captured.err
    assert "dbt" not in captured.out + captured.err  # no build began
    assert "warning" not in captured.out  # its history window is inside the log
    # a first sample date whose history window starts before the log is said (and the build goes on)
    early = first + dt.timedelta(days=3)
    assert main(["warehouse", "--set", f"samples.first={early}", "--set", f"backtest={last}"]) == 2
    said = capsys.readouterr().out
    assert f"warning: the history window (windows.history_days 90) of {early}, " in said
    assert f"starts before the log's first day {first}: their features see 3-" in said
    # a date asked for that is not labelled is checked all the same (its label window is past the log) ...
    after = last + dt.timedelta(days=5)
    assert main(["warehouse", "--ds", str(after)]) == 2
    captured = capsys.readouterr()
    assert f"{after}: its label window runs to " in captured.err and "dbt" not in captured.out + captured.err
    # ... and, when it can be built, said to be one no training reads
    assert f"{after}: not a labelled date of task tmall-2013" in captured.out
    # an outcome date is labelled too: its label window must be in the log; a forward date needs only the days
    # before it (crowd score's rule), and cannot be the outcome date
    assert main(["warehouse", "--outcome", str(last)]) == 2
    captured = capsys.readouterr()
    assert f"{last}: its label window runs to " in captured.err and "dbt" not in captured.out + captured.err
    assert main(["warehouse", "--as-of", str(after)]) == 2
    captured = capsys.readouterr()
    assert f"as_of {after}: the log ends on {last}" in captured.err and "dbt" not in captured.out + captured.err
    assert main(["warehouse", "--as-of", str(first), "--select", "samples_forward"]) == 2  # checked with --select too
    assert f"as_of {first}: the log starts on {first}" in capsys.readouterr().err
    assert main(["warehouse", "--as-of", str(early), "--outcome", str(early)]) == 2
    assert f"--as-of and --outcome are both {early}" in capsys.readouterr().err


def test_a_dataset_that_is_not_there_is_named_with_the_datasets_that_are(tiny_dataset, capsys):
    """A typo in a task file's dataset: said only "holds no events"; the datasets present are named."""
    assert main(["warehouse", "--set", "dataset=synthetik"]) == 2
    said = capsys.readouterr().err
    # (other tests of the session may have loaded datasets beside it)
    assert "synthetik holds no events" in said and re.search(rf"\(datasets there: [^)]*\b{tiny_dataset.name}\b", said)


def test_export_of_a_warehouse_never_built_says_so_and_makes_nothing(tmp_path, monkeypatch, capsys):
    """DuckDB's connect made an empty warehouse file where a reader looked (or failed with an IOException when
    its folder was missing), and the exports folder was made before."""
    monkeypatch.setenv("CROWD_DATA_DIR", str(tmp_path / "data"))
    assert main(["export", "--ds", "2013-09-16"]) == 1
    paths = TaskPaths.of(load_task())
    assert f"no warehouse at {paths.warehouse}: build it first" in capsys.readouterr().err
    paths.warehouse.parent.mkdir(parents=True)  # its folder there: still no file made in it
    assert main(["export", "--ds", "2013-09-16"]) == 1
    assert not paths.warehouse.exists() and not paths.exports.exists()


def test_an_unknown_option_is_named_by_its_command_with_where_the_settings_are(capsys):
    """argparse's top level said "crowd: error: unrecognized arguments: --batch-size 512": not which command,
    nor that every setting of the task takes --set."""
    with pytest.raises(SystemExit) as exited:
        main(["train", "--batch-size", "512"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2
    assert err.startswith("crowd train: error: unrecognized arguments: --batch-size 512 (`crowd train --help`")
    assert "--set training.batch_size=512" in err
    with pytest.raises(SystemExit):
        main(["tasks", "--verbose-please"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("crowd tasks: error: unrecognized arguments: --verbose-please") and "--set" not in err


def test_generate_command_rejects_bad_sizes_cleanly(tmp_path, capsys):
    assert main(["generate", "--users", "10", "--items", "2", "--brands", "5", "--out", str(tmp_path / "d")]) == 2
    assert "--items" in capsys.readouterr().err
    # a seed or a process count below zero is refused naming its option (numpy's or the pool's words before)
    for option, value in (("--seed", "-1"), ("--workers", "-2"), ("--seed", "x")):
        with pytest.raises(SystemExit) as exited:
            main(["generate", option, value, "--out", str(tmp_path / "d")])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and f"argument {option}: expected" in err, err
    with pytest.raises(TaskError, match=r"generate\.seed: Input should be greater than or equal to 0"):
        load_task("tmall-2013", {"generate.seed": -1})
