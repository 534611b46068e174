"""TensorFlow loaded without its C++ start-up lines, unless the user asked for them.

TensorFlow 2.21 prints "WARNING: All log messages before absl::InitializeLog() ..."
and informational lines (the CUDA stub on a machine without GPU drivers, oneDNN) to
stderr while it loads, before `TF_CPP_MIN_LOG_LEVEL` takes effect, twice, and an error
line when it first looks for devices on a machine without an NVIDIA driver ("failed
call to cuInit"). They say nothing a user can act on. `import_tensorflow` loads it and
lists the devices with stderr captured, then writes back every line but those below
`TF_CPP_MIN_LOG_LEVEL` (2 unless the user set it, as TensorFlow reads it: errors stay) and, where
no NVIDIA driver is installed, the cuInit error. A failed import shows everything it printed.
"""

import os
import re
import sys
import tempfile

ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# absl's C++ log line: severity I/W/E/F, then MMDD (0000 before logging is initialised).
ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
NO_DRIVER = "failed call to cuInit"
NVIDIA_DRIVER = "/dev/nvidiactl"  # the device node every NVIDIA driver creates


def is_startup_noise(line, min_level, gpu_driver=True):
    """Whether a line TensorFlow printed while loading is below `min_level` (TF_CPP_MIN_LOG_LEVEL)
    or, without a `gpu_driver`, says that CUDA found none."""
    if line.startswith(ABSL_PREAMBLE):
        return min_level >= 1
    match = ABSL_LINE.match(line)
    return bool(match) and (SEVERITY[match.group(1)] < min_level or (not gpu_driver and NO_DRIVER in line))


def import_tensorflow():
    """Imports TensorFlow (once per process) with its start-up lines filtered; see the module docstring."""
    if "tensorflow" in sys.modules:
        return
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    min_level = int(level) if level.isdigit() else 0
    if min_level < 1:
        import tensorflow  # noqa: F401, PLC0415 (loaded here so that the filter below applies)
        return
    sys.stderr.flush()
    original = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow  # noqa: PLC0415

            tensorflow.config.list_physical_devices()  # CUDA's probe prints here
            failed = False
        finally:
            os.dup2(original, 2)
            os.close(original)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            gpu_driver = os.path.exists(NVIDIA_DRIVER)
            sys.stderr.write("".join(line for line in lines
                                     if failed or not is_startup_noise(line, min_level, gpu_driver)))
            sys.stderr.flush()
