"""dmcp_tf.startup: TensorFlow's C++ start-up lines filtered, what matters kept."""

import os
import subprocess
import sys
import textwrap

import pytest

from dmcp_tf import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = "I0000 00:00:1796417095.537399   11517 cudart_stub.cc:31] Could not find cuda drivers on your machine"
CUINIT = "E0000 00:00:1796417261.787677   12628 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error"


@pytest.mark.parametrize("line, level, driver, noise", [
    (startup.ABSL_PREAMBLE, 2, True, True), (startup.ABSL_PREAMBLE, 0, True, False),
    (NOISE, 2, True, True), (NOISE, 0, True, False),
    ("W0000 00:00:1.0   1 x.cc:1] a warning", 1, True, False), ("W0000 00:00:1.0   1 x.cc:1] a warning", 2, True, True),
    ("E0000 00:00:1.0   1 x.cc:1] an error", 2, True, False), ("E0000 00:00:1.0   1 x.cc:1] an error", 3, True, True),
    (CUINIT, 2, True, False), (CUINIT, 2, False, True),
    ("Traceback (most recent call last):", 3, False, False), ("I am not a log line", 3, False, False),
])
def test_which_lines_are_start_up_noise(line, level, driver, noise):
    assert startup.is_startup_noise(line, level, gpu_driver=driver) is noise


def run_with_fake_tensorflow(tmp_path, body, **env):
    """`startup.import_tensorflow()` in a new Python whose `tensorflow` is a module running `body`."""
    (tmp_path / "tensorflow").mkdir(exist_ok=True)
    (tmp_path / "tensorflow" / "__init__.py").write_text(textwrap.dedent(body))
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", **env)
    code = ("import importlib.util, sys\n"  # dmcp_tf.startup alone: dmcp_tf/__init__ would import the real stack
            f"spec = importlib.util.spec_from_file_location('startup', {os.path.join(ROOT, 'dmcp_tf', 'startup.py')!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "module.import_tensorflow(); print('imported')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)


FAKE = f"""
    import os, sys
    os.write(2, b"{startup.ABSL_PREAMBLE}\\n{NOISE}\\nE0000 00:00:1.0   1 x.cc:1] an error\\nplain text\\n")
    class config:
        @staticmethod
        def list_physical_devices():
            os.write(2, b"{CUINIT}\\n")
"""


def test_start_up_lines_below_the_level_are_dropped_and_the_rest_kept(tmp_path):
    result = run_with_fake_tensorflow(tmp_path, FAKE)
    assert result.returncode == 0 and result.stdout.strip() == "imported"
    assert "an error" in result.stderr and "plain text" in result.stderr
    assert "cudart_stub" not in result.stderr and "absl::InitializeLog" not in result.stderr
    assert ("cuInit" in result.stderr) == os.path.exists(startup.NVIDIA_DRIVER)
    shown = run_with_fake_tensorflow(tmp_path, FAKE, TF_CPP_MIN_LOG_LEVEL="0")  # the user asked for everything
    assert "cudart_stub" in shown.stderr and "absl::InitializeLog" in shown.stderr


def test_a_failed_import_shows_everything_it_printed(tmp_path):
    result = run_with_fake_tensorflow(tmp_path, f"""
        import os
        os.write(2, b"{NOISE}\\n")
        raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
    """)
    assert result.returncode == 1 and "cudart_stub" in result.stderr and "cannot open shared object" in result.stderr


def test_importing_dmcp_tf_prints_no_tensorflow_start_up_lines():
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", "import dmcp_tf"], capture_output=True, text=True, cwd=ROOT,
                            env=dict(environ, PYTHONPATH=ROOT), timeout=300)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines()
                if startup.is_startup_noise(line, 2, os.path.exists(startup.NVIDIA_DRIVER))], result.stderr
