"""Command line: flags -> config -> pipeline steps (`main.py` and the `dmcp` command)."""

import errno
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dmcp_tf.run import rundir
from dmcp_tf.run.steps import BY_NAME

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# all (the pipeline), one step, counting (flops: the old name of macs); the steps outside the pipeline last
MODES = ("all", *rundir.STEPS, "macs", "flops", *(name for name in BY_NAME if name not in rundir.STEPS))

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS, argv=None):
    """Defines the command line (the config flag reads --config.* overrides from `argv`, default sys.argv).

    A `flag_values` other than absl's global `FLAGS` (with the `argv` it will parse) runs
    the command line in a process that already ran one (the tests).
    """
    config_flags.DEFINE_config_file(
        "config", os.path.join(CONFIG_DIR, "fashion_mnist.py"),
        "Config file (configs/<name>.py[:argument]); override keys with --config.<key>=<value>. The keys, "
        f"with the default run's values:\n{_config_keys()}",
        lock_config=True, flag_values=flag_values, sys_argv=argv,
    )
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("mode", "all", MODES, f"Pipeline step to run; `all` runs {', '.join(rundir.STEPS)}; "
                      "`latency_table` measures the supernet's per-layer TFLite latency into the run directory; "
                      "`macs` counts MACs and parameters (`flops` is its old name).", **fv)
    flags.DEFINE_string("model", None, "Prune your own model: a trained classifier saved with model.save('x.keras') "
                        "(pruned from its trained weights, as dmcp_tf.prune does; image size from its input), or "
                        "keras.applications.<Name> (built untrained for the data, searched from scratch) instead of "
                        "the config's zoo supernet.", **fv)
    flags.DEFINE_string("run_dir", None, "Run directory (default: runs/<config.name>).", **fv)
    flags.DEFINE_bool("overwrite", False, "Allow replacing outputs that already exist in the run directory.", **fv)
    flags.DEFINE_string("data_dir", None, "Shortcut for --config.data.data_dir.", **fv)
    flags.DEFINE_enum("strategy", "auto", ("auto", "default", "mirrored", "multi_worker"),
                      "Distribution: `mirrored` uses every visible GPU of this machine; `multi_worker` trains on "
                      "the machines listed in TF_CONFIG (start the same command on each; the run directory must "
                      "be shared); `auto` picks multi_worker when TF_CONFIG lists several tasks, else mirrored "
                      "when several GPUs are visible, else one device.", **fv)
    flags.DEFINE_float("worker_timeout", 600, "With multi_worker: seconds to wait for the other tasks of TF_CONFIG to "
                       "start (saying which, every 10 s) before giving up with exit code 2.", lower_bound=0, **fv)
    flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism and fixed seeds: two runs of the same "
                      "config give identical results (slower on GPUs).", **fv)
    flags.DEFINE_string("channels", None, "With --mode=macs: a channels.json to count.", **fv)
    flags.DEFINE_string("structure", None, "With --mode=macs: a paper structure, e.g. mobilenet_v2_210M or "
                        "resnet50_2.8G.", **fv)
    for name in ("config", "mode", "model", "run_dir", "overwrite", "data_dir", "strategy", "worker_timeout",
                 "deterministic", "channels", "structure"):  # what --help and --helpshort list
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def _config_keys():
    """Every config key with its value in the default config, one `  key = value` line each."""
    from dmcp_tf.configs import fashion_mnist  # noqa: PLC0415 (no TensorFlow: --help stays fast)

    def lines(section, prefix):
        for key, value in sorted(section.items()):
            if hasattr(value, "items") and key != "options":
                yield from lines(value, f"{prefix}{key}.")
            else:
                yield f"  {prefix}{key} = {value!r}"

    return "\n".join(lines(fashion_mnist.get_config(), ""))


def _strategy(name):
    from dmcp_tf.run import distributed  # noqa: PLC0415 (after flag parsing: --help stays fast)

    return distributed.make_strategy(name, worker_timeout=FLAGS.worker_timeout)


def _count(config):
    """Prints the MACs, parameters (and latency, given a table) of the supernet and its budget, or of a channel
    configuration or paper structure."""
    from dmcp_tf import costs, models, sampling  # noqa: PLC0415 (after flag parsing: --help stays fast)
    from dmcp_tf.channels.graph import ChannelGraph  # noqa: PLC0415
    from dmcp_tf.run.context import RunContext  # noqa: PLC0415

    kinds = [costs.MACS, costs.PARAMS]

    def describe(graph, config=None):
        values = {kind: kind.of(graph, config) for kind in kinds}
        return ", ".join(f"{kind.format(value)} ({value})" for kind, value in values.items())

    if FLAGS.structure:
        if FLAGS.structure not in models.PAPER_MODELS:
            raise ValueError(f"Unknown structure {FLAGS.structure!r}; choose one of {sorted(models.PAPER_MODELS)}.")
        print(f"{FLAGS.structure}: {describe(ChannelGraph(models.PAPER_MODELS[FLAGS.structure]()))}")
        return
    supernet = RunContext(config, None, strategy=_strategy("default")).new_supernet(load_data=False)
    graph = ChannelGraph(supernet)
    kinds += costs.latency_costs(config.search.latency_table)
    budget = costs.Budget.parse(config.search.budget, latency=costs.configured_cost(config.search))
    print(f"{supernet.name}: {describe(graph)}, {len(graph.gates)} gates; smallest sub-network "
          f"{describe(graph, graph.smallest_config())}; budget {config.search.budget} = "
          f"{budget.cost.format(budget.target(graph))}")
    if FLAGS.channels:
        channels = sampling.load_config(FLAGS.channels)
        graph.validate_config(channels, complete=True)
        print(f"{FLAGS.channels}: {describe(graph, channels)}")


def run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    if FLAGS.data_dir:
        config.data.data_dir = FLAGS.data_dir
    if FLAGS.mode in ("macs", "flops"):
        if FLAGS.model:
            raise ValueError("--mode=macs counts the config's zoo supernet; count your model's MACs in Python with "
                             "dmcp_tf.count_macs(keras.models.load_model(PATH)).")
        return _count(config)
    ignored = [f"--{name}" for name in ("channels", "structure") if getattr(FLAGS, name)]
    if ignored:
        raise ValueError(f"{' and '.join(ignored)} only apply to --mode=macs (counting a structure); "
                         f"--mode={FLAGS.mode} would ignore them. Drop them, or add --mode=macs.")
    strategy = _strategy(FLAGS.strategy)  # first: multi-worker set-up must precede other TensorFlow work
    from dmcp_tf.run import pipeline, report, user_model  # noqa: PLC0415

    if FLAGS.model:
        overridden = [name[len("config."):] for name in FLAGS if name.startswith("config.") and FLAGS[name].present]
        for note in user_model.configure(config, FLAGS.model, overridden):
            print(note)

    steps = rundir.STEPS if FLAGS.mode == "all" else (FLAGS.mode,)
    run_dir = FLAGS.run_dir or os.path.join("runs", config.name)
    runner = pipeline.Pipeline(config, run_dir, overwrite=FLAGS.overwrite, strategy=strategy,
                               deterministic=FLAGS.deterministic)
    rows = runner.run(steps)
    if not runner.chief:
        return  # the chief writes the report and prints the summary
    print()
    print(report.summary_table(rows, report.SUMMARY_COLUMNS))
    print(f"\nRun directory: {run_dir} (report.md sums it up)")


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: the run stops like on Ctrl-C."""


def _interrupt(signum, frame):
    raise Interrupted(signum)


def _main(argv):
    try:
        run(argv)
    except KeyboardInterrupt as interrupt:
        signum = interrupt.args[0] if isinstance(interrupt, Interrupted) else signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name}): finished steps and checkpoints are kept; the same "
              "command resumes the run.", file=sys.stderr)
        sys.exit(128 + signum)
    except OSError as error:
        _fail(_os_error_message(error))
    except (ValueError, RuntimeError) as error:
        _fail(str(error))
    except Exception as error:  # TensorFlow's own errors are not Python's: map those a user can fix
        message = _tensorflow_error_message(error, _data_config())
        if message is None:
            raise
        _fail(message)


def _os_error_message(error):
    """An OSError as one line: no permission or no space says what to do; a temporary file is named by its folder."""
    path = str(error.filename) if error.filename else None
    if path is None or error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        return str(error)
    if os.path.basename(path).startswith(".tmp-") or ".tmp" in os.path.basename(path):
        path = f"the folder {os.path.dirname(path)} (writing a file into it)"
    kept = "Finished steps and checkpoints are kept: rerun the same command afterwards and it resumes."
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{error.strerror}: {path}. Free disk space (or use another --run_dir). {kept}"
    return (f"{error.strerror}: {path}. Make it writable (a read-only run directory cannot be resumed) or use "
            f"another --run_dir. {kept}")


def _data_config():
    """The config's data section, or None where the flags are not parsed (to name a bad input file)."""
    try:
        return FLAGS.config.data
    except (flags.Error, AttributeError):
        return None


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _tensorflow_error_message(error, data=None):
    """What to do about a TensorFlow error a user can fix (disk full, no permission, a damaged file), or None.

    `data` is the config's data section (to name an image the input pipeline could not decode).
    """
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    detail = str(getattr(error, "message", error)).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    detail = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", detail)  # where in TensorFlow: nothing to act on
    kept = "Finished steps and checkpoints are kept: rerun the same command afterwards and it resumes."
    if isinstance(error, tf.errors.InvalidArgumentError) and "Iterator" in str(error):  # from the input pipeline
        decoding = _image_decoding_error(str(error))
        if decoding is None and re.search(r"Incompatible shapes at component 0: expected \[\?,\?,3\]", detail):
            decoding = detail  # a GIF decoded as an animation (a batch of frames)
        if decoding:
            return _undecodable_image_message(decoding, data, kept)
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return (f"TensorFlow ran out of a resource ({detail}): a full disk while saving, or memory. Free disk "
                f"space (or lower data.batch_size if memory ran out). {kept}")
    if isinstance(error, tf.errors.PermissionDeniedError):
        return f"No permission to write ({detail}): make the run directory writable or pass another --run_dir. {kept}"
    if isinstance(error, tf.errors.DataLossError):
        return (f"A file is damaged ({detail}): delete it (a damaged checkpoint: its step's checkpoints folder) and "
                f"rerun the same command.")
    return None


def _image_decoding_error(text):
    """TensorFlow's reason in the text of an image decoding error ("Unknown image file format. ..."), or None.

    The text differs by where the iterator ran (eagerly, in a function, in Keras'
    multi-step function); the reason is its first line that speaks of an image
    and is no node or iterator name.
    """
    for line in text.splitlines():
        line = re.split(r"\}\} |Iterator::\S+: ", line)[-1].strip()
        if re.search(r"image|jpe?g|png|gif|bmp|webp", line, re.IGNORECASE) and not line.startswith(("Detected at", "[[")):
            return line
    return None


def _undecodable_image_message(detail, data, kept):
    """The input pipeline could not decode an image: name the files that are no image, if any."""
    from dmcp_tf import data as data_lib  # noqa: PLC0415

    folder = data is not None and data.name == "image_folder" and data.data_dir and os.path.isdir(data.data_dir)
    where = data.data_dir if folder else "the data set"
    bad = data_lib.undecodable_images(data.data_dir) if folder else []
    if bad:
        more = " (the first 5; there may be more)" if len(bad) >= 5 else ""
        return (f"An image in {where} cannot be decoded ({detail}). Not a JPEG, PNG, BMP or WebP image (a GIF "
                f"decodes as an animation) by its first bytes{more}: {', '.join(bad)}. Remove or replace it. {kept}")
    found = ("every image file starts like an image, so one is damaged further in" if folder
             else "check the data set's files for a damaged or non-image one")
    return (f"An image in {where} cannot be decoded ({detail}); TensorFlow does not say which file: {found}. "
            f"Remove or replace it. {kept}")


def _parse_flags(argv):
    """absl's flag parsing, with bad flags, unknown config keys and config files that fail reported in one line."""
    path = _config_file(argv)
    if path is not None and not os.path.isfile(path):
        _fail(f"config file {path} does not exist. Give --config=configs/<name>.py (the configs folder holds the "
              "examples).")
    if path is not None and not path.endswith(".py"):
        _fail(f"config file {path} is not a Python file: a config is a .py file whose get_config() returns a "
              "ConfigDict (see configs/*.py); YAML or JSON configs are not read.")
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        _bad_command_line(error)
    except Exception as error:  # the config file's own code failed (a syntax error, an exception it raises)
        if path is None:
            raise
        _fail(f"config file {path} could not be loaded: {type(error).__name__}: {error}. Fix the file, "
              "or start from one of configs/*.py.")


def _config_file(argv):
    """The file `--config=PATH[:argument]` names on the command line, or None (the default config)."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value.split(":", 1)[0]
    return None


def _bad_command_line(error):
    text = str(error).strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    print(f"error: bad command line: {text}. The flags, config keys and their defaults are listed by --help.",
          file=sys.stderr)
    sys.exit(2)


def main():
    """Entry point of the `dmcp` console command."""
    signal.signal(signal.SIGTERM, _interrupt)  # stops like Ctrl-C: the run directory's lock is released
    try:
        define_flags()
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        _bad_command_line(error)
    app.run(_main, flags_parser=_parse_flags)
