"""main.py under MultiWorkerMirroredStrategy: two processes on 127.0.0.1, as two machines would run it.

tests/search/test_multiworker.py tests the training loop; these start the product: two
`main.py --strategy=multi_worker` processes, each with its own `TF_CONFIG` task, on
a tiny search of the learnable Fashion-MNIST fixture (2 warm-up steps, 2 search
steps, a checkpoint at each epoch end). They share the run directory, as the
README asks of several machines.

- Only the chief writes the run directory. Where `strace` is available the other
  worker's file system calls are recorded: none of its successful writes touches
  the run directory, and its scratch folder (in its own TMPDIR) is gone at the end.
- The result equals a one-process run of the same command (see TOLERANCES).
- Both processes killed after a checkpoint and started again with the same
  command resume from it, to the result of the uninterrupted run.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import learnable_fashion_mnist
from tests.search.test_multiworker import free_ports

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
SEARCH = [
    "--mode=search", "--config.data.train_limit=512", "--config.data.test_limit=256",
    "--config.data.batch_size=64", "--config.model.options.channels=(16,)", "--config.model.options.blocks=1",
    "--config.search.epochs=2", "--config.search.steps_per_epoch=2", "--config.search.trajectory_every_steps=1",
]
STEPS = 4  # 2 warm-up steps (epoch 1), 2 architecture steps (epoch 2); checkpoints at steps 2 and 4
TIMEOUT = 900  # seconds for one two-process run (measured up to 6 min on a machine loaded 15 on 2 cores)
# Multi-worker against one process. Both see the same global batches and the same
# random sub-networks; what differs is float32 arithmetic: two half-batch gradients
# summed instead of one, and synchronized batch norm's moments (E[x^2] - E[x]^2 over
# the workers, where one process takes the two-pass variance). Measured on this
# one-stage supernet (2 architecture steps at arch learning rate 2.0): expected MACs
# 2e-6 apart (relative), gate fractions 7e-7, gate parameters (alpha, up to 1.7) 7e-6;
# on the three-stage (16, 32, 64) one 4e-5, 1.2e-4 and 1.4e-3, and over 4 architecture
# steps 2e-4, 3e-4, 4e-3. A one-process run whose batch norm merely takes the
# synchronized formula differs from the plain one by as much (3.6e-4 on the expected
# MACs over 4 steps): rounding, amplified by the large architecture learning rate, not
# another algorithm. The tolerances are about 8x the three-stage differences over the 2
# steps this test runs and still about 60x below a gate fraction step that moves one
# channel of 16 (0.0625).
TOLERANCES = {"expected_cost_rel": 1e-3, "fraction_abs": 1e-3, "alpha_abs": 1e-2}
# strace: the write-like calls of the non-chief worker (successful ones are checked).
WRITE_CALLS = ("open", "openat", "openat2", "creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2",
               "unlink", "unlinkat", "rmdir", "link", "linkat", "symlink", "symlinkat", "truncate")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(learnable_fashion_mnist(tmp_path_factory.mktemp("fashion")))


def command(data_dir, run_dir, strategy):
    return [sys.executable, os.path.join(ROOT, "main.py"), f"--data_dir={data_dir}", f"--run_dir={run_dir}",
            f"--strategy={strategy}", *SEARCH]


class Run:
    """Processes of one run: started, waited for, always killed on the way out (a context manager)."""

    def __init__(self, folder):
        self.folder = folder
        self.procs, self.logs = [], []

    def start(self, name, argv, env, trace=None):
        folder = self.folder / name
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        env = dict(env, TMPDIR=str(folder / "tmp"), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        if trace:
            argv = ["strace", "-ff", "-qq", "-y", "--seccomp-bpf", "-e", "trace=" + ",".join(WRITE_CALLS), "-o", str(trace),
                    *argv]
        log = folder / f"output{len(self.logs)}.log"  # a file: a full pipe would block the process
        with open(log, "w") as out:
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder))
        self.logs.append(log)

    def wait(self, until=None):
        """Polls until every process ended (or `until()` is true); a failed process ends the others.

        A worker whose peer died waits in a collective forever: it is killed.
        """
        deadline = time.time() + TIMEOUT
        while any(p.poll() is None for p in self.procs) and time.time() < deadline:
            if any(p.poll() not in (None, 0) for p in self.procs) or (until and until()):
                break
            time.sleep(0.1)
        self.kill()
        return [p.returncode for p in self.procs]

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    def output(self, i):
        return self.logs[i].read_text(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def start_workers(run, data_dir, run_dir, ports, trace=None):
    """The two `main.py` processes of a multi-worker run: worker 0 (the chief) and worker 1 (strace'd if `trace`)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        run.start(f"worker{index}", command(data_dir, run_dir, "multi_worker"), env,
                  trace=trace if index == 1 else None)


def strace_works():
    """strace is installed and may trace (containers can forbid ptrace)."""
    return bool(shutil.which("strace")) and subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "true"], capture_output=True).returncode == 0


def successful_writes(trace, cwd):
    """`[(call, absolute path)]` of the successful write-like calls in the logs of `strace -ff -y -o <trace>`.

    One log per thread (`<trace>.<tid>`): no call is split over lines. `-y` prints
    the directory of a descriptor (`unlinkat(9</a/dir>, "name", 0)`), so paths
    relative to one are resolved; paths relative to the working directory against `cwd`.
    """
    writes = []
    lines = [line for log in trace.parent.glob(trace.name + ".*") for line in log.read_text(errors="replace").splitlines()]
    assert lines, f"no strace logs {trace}.*"
    for line in lines:
        match = re.match(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)", line)
        if not match or match.group(1) not in WRITE_CALLS or int(match.group(3)) < 0:
            continue
        call, args = match.group(1), match.group(2)
        if call.startswith("open") and not any(flag in args for flag in WRITE_FLAGS):
            continue
        for directory, path in re.findall(r'(?:(?:\d+|AT_FDCWD)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"', args):
            written = os.path.join(directory or str(cwd), path)
            if "O_TMPFILE" in args:  # an unnamed file inside the directory opened (tempfile.TemporaryFile)
                written = os.path.join(written, "<unnamed>")
            writes.append((call, written))
    return writes


def result(run_dir):
    """What the search decided: search.json, the supernet's gate parameters and expected-sampling channels."""
    import keras  # noqa: PLC0415

    import dmcp_tf  # noqa: F401, PLC0415 (the supernet's layers)
    from dmcp_tf import sampling  # noqa: PLC0415
    from dmcp_tf.channels.graph import ChannelGraph  # noqa: PLC0415

    search = json.loads((run_dir / "search.json").read_text())
    supernet = keras.saving.load_model(run_dir / "supernet.keras", compile=False)
    return {
        "search": search,
        "fractions": search["trajectory"][-1]["fractions"],
        "weights": {v.path: v.numpy() for v in supernet.weights},
        "channels": sampling.expected_config(ChannelGraph(supernet)),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """A two-worker run and, at the same time, the one-process run of the same command."""
    folder = tmp_path_factory.mktemp("multiworker")
    trace = folder / "strace" / "worker1" if strace_works() else None  # one log per thread
    if trace:
        trace.parent.mkdir()
    start = time.time()
    with Run(folder) as run:
        start_workers(run, data_dir, folder / "run", free_ports(2), trace=trace)
        run.start("single", command(data_dir, folder / "single_run", "default"), dict(os.environ))
        codes = run.wait()
        for i, code in enumerate(codes):
            assert code == 0, run.output(i)[-3000:]
        outputs = [run.output(i) for i in range(3)]
    return {"folder": folder, "run_dir": folder / "run", "outputs": outputs, "trace": trace,
            "seconds": time.time() - start}


@pytest.mark.slow
@pytest.mark.xdist_group("multiworker_main")
def test_two_main_processes_write_once_and_match_one_process(uninterrupted):
    folder, run_dir = uninterrupted["folder"], uninterrupted["run_dir"]
    chief, worker, single = uninterrupted["outputs"]
    assert "Run directory:" in chief and "Run directory:" not in worker  # the chief prints the summary
    assert "Traceback" not in chief + worker
    names = sorted(os.listdir(run_dir))
    assert names == sorted(os.listdir(folder / "single_run")), names  # the same files as one process writes
    assert "checkpoints" not in names and not [n for n in names if n.startswith(".")]  # finished: no leftovers
    assert not os.listdir(folder / "worker1" / "tmp")  # the worker's scratch folder was removed
    if uninterrupted["trace"]:  # every file the worker wrote, TensorFlow's included
        scratch = str(folder / "worker1" / "tmp")
        writes = successful_writes(uninterrupted["trace"], cwd=folder / "worker1")
        assert any(path.startswith(scratch) and path.endswith("/supernet.keras") for _, path in writes), \
            "the worker's supernet.keras goes to its scratch folder"
        # Its scratch folder; devices, thread names; font caches of matplotlib (first use on a machine).
        allowed = (scratch + "/", "/dev/", "/proc/", os.path.expanduser("~/.cache/"), os.path.expanduser("~/.config/"))
        elsewhere = [(call, path) for call, path in writes if not path.startswith(allowed)]
        assert not elsewhere, elsewhere
        assert not [path for _, path in writes if path.startswith(str(run_dir))]
    multi, one = result(run_dir), result(folder / "single_run")
    assert multi["search"]["replicas"] == 2 and one["search"]["replicas"] == 1
    assert multi["search"]["steps"] == STEPS and multi["search"]["warmup_steps"] == STEPS // 2
    alphas = [name for name in one["weights"] if name.endswith("alpha")]
    assert alphas and max(np.abs(one["weights"][a]).max() for a in alphas) > 0.05  # the search moved the gates
    np.testing.assert_allclose(multi["search"]["expected_cost"], one["search"]["expected_cost"],
                               rtol=TOLERANCES["expected_cost_rel"])
    assert multi["fractions"].keys() == one["fractions"].keys()
    for gate, fraction in one["fractions"].items():
        assert abs(multi["fractions"][gate] - fraction) <= TOLERANCES["fraction_abs"], gate
    for name in alphas:
        np.testing.assert_allclose(multi["weights"][name], one["weights"][name], atol=TOLERANCES["alpha_abs"],
                                   err_msg=name)
    # What --mode=sample would write: the same, but a gate's expected channels near a
    # rounding boundary may round the other way.
    assert multi["channels"].keys() == one["channels"].keys()
    assert all(abs(multi["channels"][g] - c) <= 1 for g, c in one["channels"].items()), (multi, one)


@pytest.mark.slow
@pytest.mark.xdist_group("multiworker_main")
def test_two_main_processes_killed_after_a_checkpoint_resume_to_the_same_result(tmp_path, data_dir, uninterrupted):
    run_dir, ports = tmp_path / "run", free_ports(2)
    first = run_dir / "checkpoints" / "search" / "ckpt-000000002"  # the end of the warm-up epoch
    with Run(tmp_path / "killed") as run:
        start_workers(run, data_dir, run_dir, ports)
        codes = run.wait(until=first.exists)
        assert first.exists(), [run.output(i)[-2000:] for i in range(2)]
        assert codes == [-signal.SIGKILL] * 2, codes  # killed, not finished
    assert not (run_dir / "search.json").exists() and (run_dir / ".search.started").exists()
    kept = sorted(p.name for p in (run_dir / "checkpoints" / "search").iterdir())
    resume_step = int(kept[-1].split("-")[1])
    assert 2 <= resume_step < STEPS, kept

    with Run(tmp_path / "resumed") as run:
        start_workers(run, data_dir, run_dir, ports)  # the same command, the same ports
        codes = run.wait()
        assert codes == [0, 0], [run.output(i)[-3000:] for i in range(2)]
        chief = run.output(0)
    assert f"resuming from step {resume_step} of {STEPS}" in chief
    resumed, reference = result(run_dir), result(uninterrupted["run_dir"])
    assert resumed["search"]["resumed_from_step"] == resume_step
    # The same batches, sub-networks and all-reduced updates from the restored state: identical.
    assert resumed["search"]["expected_cost"] == reference["search"]["expected_cost"]
    assert resumed["channels"] == reference["channels"]
    for name, value in reference["weights"].items():
        np.testing.assert_array_equal(resumed["weights"][name], value, err_msg=name)
    assert resumed["search"]["trajectory"] == reference["search"]["trajectory"]
    assert not (run_dir / ".search.started").exists() and not (run_dir / "checkpoints").exists()
