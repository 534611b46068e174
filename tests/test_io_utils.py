"""Atomic writes: permissions of a plain open under the umask, and no leftovers of a killed write."""

import os
import stat

import pytest

from dmcp_tf.io_utils import atomic_directory, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_directories_follow_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "report.md", "hello")
    assert _mode(tmp_path / "report.md") == 0o644  # mkstemp alone would leave 0o600
    with atomic_directory(tmp_path / "saved_model") as folder:
        atomic_write_text(os.path.join(folder, "x.txt"), "x")
    assert _mode(tmp_path / "saved_model") == 0o755 and _mode(tmp_path / "saved_model" / "x.txt") == 0o644


def test_leftovers_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    (tmp_path / ".tmp-saved_modelab12cd34").mkdir()  # what a killed export leaves
    (tmp_path / ".tmp-ab12cd34report.md").write_text("half")
    (tmp_path / ".tmp-notes.md").write_text("a user's file that only looks similar")
    with atomic_directory(tmp_path / "saved_model") as folder:
        atomic_write_text(os.path.join(folder, "x.txt"), "x")
    atomic_write_text(tmp_path / "report.md", "whole")
    assert sorted(os.listdir(tmp_path)) == [".tmp-notes.md", "report.md", "saved_model"]
    assert (tmp_path / "report.md").read_text() == "whole"
