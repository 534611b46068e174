"""`--model`: the user's saved classifier, or a keras.applications network, as the run's supernet.

`python main.py --model=my_model.keras --config.data.name=image_folder --config.data.data_dir=DIR`
prunes a trained model with the recipe of `dmcp_tf.prune` (the frozen-weight search
from L1-sorted channels, the structure fitted to the budget, fine-tuning of the
inherited channels), through the pipeline's own steps and run directory.
`--model=keras.applications.MobileNetV3Small` builds that network untrained for the
data's image size and classes and runs the config's from-scratch recipe.

`configure` sets the config before the run (checks the flag, takes the image size
from the model's input, feeds raw pixels to a model with its own preprocessing, and
sets the trained-model recipe's keys the command line did not set); `supernet` is
the gated supernet the run's steps build (`RunContext.new_supernet`).
"""

import os
import zipfile

import keras

from dmcp_tf.channels.walk import all_layers
from dmcp_tf.pruning import checks
from dmcp_tf.search import pretrained

APPLICATIONS = "keras.applications."
APPLICATION_SIZE = 224  # the image side an application is built at when data.image_size is not set
# The recipe from a trained network (`dmcp_tf.prune`; docs/benchmarks.md section 3, `dmcp_pretrained`).
TRAINED_RECIPE = {
    "search.train_weights": False, "search.init": "budget", "search.epochs": 1, "search.steps_per_epoch": 0,
    "search.arch_learning_rate": 0.5, "search.arch_final_learning_rate": 0.1,
    "sample.fit_to_budget": True, "sample.round_to": 0,
    "retrain.from_scratch": False, "retrain.inherit": "supernet", "retrain.calibrate_after": True,
    "retrain.compare_uniform": True,  # the report's baseline: L1-norm pruning at uniform widths, fine-tuned alike
}
PREPROCESSING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)
HOW_TO_SAVE = ("Load it where it was made and save it in the Keras 3 format: model.save('my_model.keras') "
               "(tf.keras 2.x: keras.models.load_model(...) then model.save('my_model.keras')).")


def is_application(value):
    return value.startswith(APPLICATIONS)


def check_flag(value):
    """Raises a `ValueError` saying what to give when `--model` is not a `.keras` file or an application name."""
    if is_application(value):
        name = value[len(APPLICATIONS):]
        if not (name[:1].isupper() and callable(getattr(keras.applications, name, None))):
            raise ValueError(f"--model={value}: keras.applications has no network {name!r}; give one such as "
                             "keras.applications.MobileNetV3Small or keras.applications.ResNet50.")
        return
    if os.path.isdir(value):
        raise ValueError(f"--model={value} is a directory (a TensorFlow SavedModel?); --model reads a .keras file, "
                         f"which keeps the layers dmcp_tf prunes. {HOW_TO_SAVE}")
    if value.endswith((".h5", ".hdf5")):
        raise ValueError(f"--model={value} is an HDF5 (.h5) file; --model reads the .keras format. {HOW_TO_SAVE}")
    if not value.endswith(".keras"):
        raise ValueError(f"--model={value}: give a model saved with model.save('x.keras'), or "
                         "keras.applications.<Name> for an untrained application.")
    if not os.path.isfile(value):
        raise ValueError(f"--model={value}: no such file.")


def load(value, input_shape=None, classes=None, application_options=None):
    """The model of `--model`: the `.keras` file (not compiled), or the application built untrained
    (with `application_options`, its keyword arguments such as MobileNets' `alpha`)."""
    if is_application(value):
        build = getattr(keras.applications, value[len(APPLICATIONS):])
        return build(input_shape=tuple(input_shape), weights=None, classes=classes, **(application_options or {}))
    if application_options:
        raise ValueError(f"--model={value} is a saved model: it takes no application options ({application_options}).")
    try:
        return keras.models.load_model(value, safe_mode=True, compile=False)
    except (zipfile.BadZipFile, OSError, ValueError, TypeError) as error:
        raise ValueError(f"--model={value} cannot be loaded by Keras ({type(error).__name__}: {error}). A model with "
                         "custom layers needs them registered (keras.saving.register_keras_serializable) in a module "
                         "imported before; a damaged file must be saved again.") from None


def has_preprocessing(model):
    """Whether `model` scales its own input (a Rescaling or Normalization layer, nested models included)."""
    return any(isinstance(layer, PREPROCESSING_LAYERS) for layer in all_layers(model))


def configure(config, value, overridden=()):
    """Sets `config` for `--model=value`, leaving the keys in `overridden` (set on the command line) as they are.

    `model.path`, the default run directory's `name`, and `data.preprocess` `"raw"` when the
    model has its own preprocessing layers. A trained `.keras` model also: `data.image_size`
    from its input and `TRAINED_RECIPE`. An application's input size follows the data and
    the config's recipe trains it. Both re-estimate batch-norm statistics after training
    (`retrain.calibrate_after`): the moving averages (momentum 0.999 in keras.applications)
    lag a short training.

    Returns:
        The lines to log: what was taken from the model.

    Raises:
        ValueError: a bad `--model` (the message says what to give).
    """
    check_flag(value)
    config.model.path = value
    if "name" not in overridden:  # the default run directory: runs/<name>
        config.name = os.path.splitext(os.path.basename(value))[0] if not is_application(value) else value.split(".")[-1]
    if is_application(value):  # built here only to see whether it scales its own input
        size = config.data.image_size or APPLICATION_SIZE
        model, settings = load(value, (size, size, 3), 2), {"retrain.calibrate_after": True}
        notes = [f"--model={value}: built untrained for the data's image size and classes"]
    else:
        model = load(value)
        checks.check_classifier(model)
        height, width = model.inputs[0].shape[1:3]
        if height != width:
            raise ValueError(f"--model={value} takes {height}x{width} images; the run's image pipelines make square "
                             "images. Prune it in Python with dmcp_tf.prune and your own data instead.")
        settings = dict(TRAINED_RECIPE, **{"data.image_size": height})
        notes = [f"--model={value}: images resized to {height}x{width} (the model's input)"]
    if has_preprocessing(model):
        settings["data.preprocess"] = "raw"
    for key, setting in settings.items():
        if key not in overridden:
            section, name = key.split(".")
            config[section][name] = setting
    if config.data.preprocess == "raw":
        notes.append("images fed as pixel values 0-255 (the model has its own preprocessing)")
    return notes


def supernet(value, input_shape, classes, gate_kind="markov", *, exclude=(), sync_bn=False, application_options=None):
    """The gated supernet of `--model=value` for images of `input_shape` and `classes` classes.

    A trained model's gated channels are sorted by the L1 norm of their filters (the
    channels every sub-network keeps are those L1-norm pruning would keep). Layers
    matching `exclude` (names or regular expressions) keep their channels whole; with
    `sync_bn`, batch norms compute their statistics over all replicas' batches (as the
    zoo's supernets do under a distribution strategy). `application_options` are an
    application's keyword arguments (e.g. `{"alpha": 0.5}` for MobileNetV3Small).

    Raises:
        ValueError: the model does not fit the data, or cannot be pruned (`pruning.checks`).
    """
    model = load(value, input_shape, classes, application_options)
    checks.check_classifier(model)
    if tuple(model.inputs[0].shape[1:]) != tuple(input_shape):
        raise ValueError(f"--model={value} takes images of shape {tuple(model.inputs[0].shape[1:])}, the data set's "
                         f"are {tuple(input_shape)}: set --config.data.image_size to the model's size.")
    if model.outputs[0].shape[-1] != classes:
        raise ValueError(f"--model={value} has {model.outputs[0].shape[-1]} outputs, but the data set has {classes} "
                         "classes: the data's class count differs from the model's.")
    gated = checks.gated_supernet(model, exclude, gate_kind=gate_kind)
    for layer in all_layers(gated) if sync_bn else ():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    if not is_application(value):
        pretrained.sort_channels_by_l1(gated)
    return gated
