"""Imports go downward only: the import-linter contracts of pyproject.toml (`[tool.importlinter]`).

Bottom to top: the utilities (tables, io_utils, config defaults, data), gates and the
channel graph (`channels`), the cost models (`costs`), the model zoo (`models`), the
search, deployment (`deploy`), `dmcp_tf.prune` (`pruning`), the run. No module imports
one above it, function-local imports included, and no package's modules import each
other in a circle.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint_imports(root):
    """Runs import-linter on the `dmcp_tf` under `root` with its pyproject.toml: (exit code, output)."""
    env = dict(os.environ, PYTHONPATH=root)
    done = subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return done.returncode, done.stdout + done.stderr


def test_imports_go_downward_only():
    code, output = lint_imports(ROOT)
    assert code == 0, output
    assert "0 broken" in output, output


@pytest.mark.parametrize("module, planted", [
    ("channels/walk.py", "from dmcp_tf.run import rundir"),  # upward: the graph's walk reading the run
    ("costs/kinds.py", "from dmcp_tf.search import sampling  # noqa: PLC0415"),  # upward, as costs.py once did
    ("search/losses.py", "from dmcp_tf.search import supernet"),  # a circle: supernet imports losses
])
def test_a_planted_bad_import_breaks_the_contracts(tmp_path, module, planted):
    shutil.copytree(os.path.join(ROOT, "dmcp_tf"), tmp_path / "dmcp_tf",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    path = tmp_path / "dmcp_tf" / module
    indented = "\n\ndef _planted():\n    " + planted + "\n" if "PLC0415" in planted else "\n" + planted + "\n"
    path.write_text(path.read_text() + indented)
    code, output = lint_imports(str(tmp_path))
    assert code != 0, output
    assert "BROKEN" in output, output


def test_the_old_import_paths_still_work():
    import dmcp_tf
    from dmcp_tf import costs, tables
    from dmcp_tf.channels import gates
    from dmcp_tf.configs import base
    from dmcp_tf.costs import latency as table
    from dmcp_tf.deploy import latency
    from dmcp_tf.run import checkpoints, config, recipes, report
    from dmcp_tf.search import autogate, supernet
    from dmcp_tf.search import gates as old_gates
    from dmcp_tf.search import recipes as new_recipes

    assert old_gates.MarkovGate is gates.MarkovGate and old_gates.make_gate is gates.make_gate
    assert recipes.compile_classifier is new_recipes.compile_classifier and recipes.CoupledSGD is new_recipes.CoupledSGD
    assert config.base_config is base.base_config and checkpoints.seed_generator_states is supernet.seed_generator_states
    assert latency.load_latency_table is table.load_latency_table is costs.load_latency_table
    assert latency.LatencyTable is table.LatencyTable and latency.latency_cost is costs.latency_cost
    assert report.markdown_table is tables.markdown_table and report.format_count is costs.format_count
    assert dmcp_tf.make_supernet is autogate.make_supernet and dmcp_tf.analyze is autogate.analyze
    assert dmcp_tf.MarkovGate is gates.MarkovGate and dmcp_tf.count_macs is costs.count_macs
