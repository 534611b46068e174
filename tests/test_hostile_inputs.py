"""What a hostile user tried (issue 26): each ends in a clear error with exit code 2, or in the right behaviour."""

import fcntl
import json
import os

import pytest

from dmcp_tf.configs import fashion_mnist
from dmcp_tf.run import report
from dmcp_tf.run.rundir import LOCK, OUTPUTS, STEPS, RunDirectory
from tests.helpers import main_in_process


def test_a_run_directory_in_use_is_refused_naming_its_holder_also_with_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    holder = {"pid": os.getpid(), "host": "elsewhere", "started": "today", "command": "main.py --mode=search"}
    with open(run_dir / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a running process holds it
        json.dump(holder, lock)
        lock.flush()
        for extra in ([], ["--overwrite"]):
            code, out = main_in_process(f"--run_dir={run_dir}", "--mode=search", *extra)
            assert code == 2, out
            assert f"in use by another process (pid {os.getpid()} on elsewhere" in out and "--mode=search" in out
            assert "Traceback" not in out
    assert (run_dir / "config.json").read_text() == "{}"  # nothing replaced
    assert json.loads((run_dir / LOCK).read_text()) == holder


def test_the_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": "here", "started": "x", "command": "y"}))
    code, out = main_in_process(f"--run_dir={run_dir}", f"--data_dir={tmp_path / 'nowhere'}")
    assert code == 2 and "in use" not in out and "nowhere" in out, out  # past the lock, refused by the data check
    assert not (run_dir / LOCK).exists()


def test_a_refused_run_leaves_no_run_directory_behind(tmp_path):
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'nowhere'}")
    assert code == 2, out
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_is_a_file_is_named(tmp_path):
    (tmp_path / "run").write_text("notes")
    code, out = main_in_process(f"--run_dir={tmp_path / 'run'}")
    assert code == 2 and "is a file, not a directory" in out and "Errno" not in out, out
    assert (tmp_path / "run").read_text() == "notes"


def finished_run(root):
    """A run directory in which every step finished (empty stand-ins for the outputs)."""
    for step in STEPS:
        for name in (*OUTPUTS[step], f"{step}.json"):
            (root / name).write_text("{}")
    (root / "checkpoints" / "retrain").mkdir(parents=True)


def test_redoing_a_step_removes_the_outputs_of_the_steps_after_it_and_the_report_says_so(tmp_path):
    finished_run(tmp_path)
    rundir = RunDirectory(str(tmp_path), overwrite=True)
    assert rundir.begin(fashion_mnist.get_config(), ["sample"]) == ["retrain", "eval", "export"]
    for step in STEPS:
        assert all((tmp_path / name).exists() == (step in ("search", "sample"))
                   for name in (*OUTPUTS[step], f"{step}.json")), step
    assert not (tmp_path / "checkpoints" / "retrain").exists()
    [(title, text)] = report._missing_steps_section(rundir)
    assert text.startswith("retrain, eval, export: not run since an earlier step was (re)done")
    assert "--mode=retrain" in text


def test_a_whole_run_or_a_resumed_step_removes_nothing(tmp_path):
    finished_run(tmp_path)
    rundir = RunDirectory(str(tmp_path), overwrite=True)
    assert rundir.begin(fashion_mnist.get_config(), list(STEPS)) == []
    assert rundir.begin(fashion_mnist.get_config(), ["export"]) == []
    assert all((tmp_path / f"{step}.json").exists() for step in STEPS)
    assert report._missing_steps_section(rundir) == []
