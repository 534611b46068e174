"""`import dmcp_tf` turns on TensorFlow's oneDNN CPU kernels, unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = "import dmcp_tf, tensorflow\nfrom benchmarks.common import onednn_enabled\nprint(onednn_enabled())"


def _onednn_after_import(setting):
    """Whether oneDNN is on in a fresh process that imports dmcp_tf, with TF_ENABLE_ONEDNN_OPTS=`setting` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("setting, expected", [(None, True), ("0", False), ("1", True)])
def test_import_turns_on_onednn_unless_the_environment_says_otherwise(setting, expected):
    assert _onednn_after_import(setting) is expected
