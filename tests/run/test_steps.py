"""The steps' declarations (`dmcp_tf/run/steps/`): the run directory, the pipeline and the CLI read them."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

from dmcp_tf.run import cli, rundir
from dmcp_tf.run.context import RunContext
from dmcp_tf.run.steps import BY_NAME, STEPS
from tests.helpers import main_in_process

ROOT = str(pathlib.Path(__file__).resolve().parents[2])

FAKE_STEP = '''
"""A made-up step: writes fake.txt; reads channels.json."""

from dmcp_tf.io_utils import atomic_write_text
from dmcp_tf.run.steps.step import Step


def run(ctx):
    atomic_write_text(ctx.dir.path("fake.txt"), "made")
    return {"made": True}


STEP = Step("fake", run, outputs=("fake.txt",), inputs=("channels.json",))
'''

# With the fake step: its tables, then main.py --mode=fake without its input and with it.
FAKE_RUN = '''
import json, os, sys
from dmcp_tf.run import cli, rundir
from tests.helpers import main_in_process
print(json.dumps({"modes": cli.MODES, "pipeline": rundir.STEPS, "outputs": rundir.OUTPUTS["fake"],
                  "inputs": rundir.INPUTS["fake"], "training": rundir.TRAINING_STEPS}))
run_dir = sys.argv[1]
for _ in range(2):
    code, out = main_in_process("--mode=fake", f"--run_dir={run_dir}")
    print("exit", code, out)
    os.makedirs(run_dir, exist_ok=True)
    open(os.path.join(run_dir, "channels.json"), "w").write("{}")
'''


def test_the_tables_are_those_of_the_declarations():
    assert rundir.STEPS == ("search", "sample", "retrain", "eval", "export")
    assert rundir.TRAINING_STEPS == ("search", "retrain")
    assert cli.MODES == ("all", "search", "sample", "retrain", "eval", "export", "macs", "flops", "latency_table")
    assert [step.name for step in STEPS] == [*rundir.STEPS, "latency_table"] and list(BY_NAME) == [*rundir.STEPS,
                                                                                                  "latency_table"]
    for step in STEPS:
        assert rundir.OUTPUTS[step.name] == step.outputs and rundir.INPUTS.get(step.name, ()) == step.inputs


def test_a_new_step_is_one_module_and_one_entry_in_the_tuple(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(ROOT, "dmcp_tf"), copy / "dmcp_tf", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "dmcp_tf" / "run" / "steps" / "fake.py").write_text(FAKE_STEP)
    init = copy / "dmcp_tf" / "run" / "steps" / "__init__.py"
    text = init.read_text().replace("import evaluate,", "import evaluate, fake,")
    init.write_text(text.replace("export.STEP,", "export.STEP, fake.STEP,"))
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", FAKE_RUN, str(run_dir)], cwd=copy, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=f"{copy}:{ROOT}"), timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    tables = json.loads(done.stdout.splitlines()[0])
    assert tables["modes"] == ["all", *rundir.STEPS, "fake", "macs", "flops", "latency_table"]
    assert tables["pipeline"] == [*rundir.STEPS, "fake"] and tables["training"] == list(rundir.TRAINING_STEPS)
    assert tables["outputs"] == ["fake.txt"] and tables["inputs"] == ["channels.json"]
    assert "exit 2" in out and "Step(s) fake need channels.json" in out, out  # its input, checked first
    assert "exit 0" in out and (run_dir / "fake.txt").read_text() == "made", out
    assert json.loads((run_dir / "fake.json").read_text())["made"] is True


def test_macs_mode_builds_the_supernet_through_the_run_context_without_the_data(monkeypatch, tmp_path):
    built = []
    new_supernet = RunContext.new_supernet

    def recorded(ctx, *args, **kwargs):
        built.append(kwargs)
        return new_supernet(ctx, *args, **kwargs)

    monkeypatch.setattr(RunContext, "new_supernet", recorded)
    for mode in ("macs", "flops"):
        code, out = main_in_process(f"--mode={mode}", f"--data_dir={tmp_path / 'no_data'}")
        assert code == 0, out
        assert "fashion_resnet" in out and "12 gates" in out and "budget 0.25x = " in out, out
    assert built == [{"load_data": False}] * 2
    assert not (tmp_path / "no_data").exists()
    code, out = main_in_process("--mode=macs", "--config.data.name=image_folder", f"--data_dir={tmp_path}")
    assert code == 2 and "cannot count its classifier without loading it" in out, out
