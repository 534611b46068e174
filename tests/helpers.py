"""Tiny models and data shared by the tests."""

import contextlib
import gzip
import io

import keras
import numpy as np
import pytest

from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from dmcp_tf.channels import gates as G
from dmcp_tf.channels.gates import MarkovGate


def tiny_supernet(input_shape=(12, 12, 3), classes=4, gate_cls=MarkovGate, sync_bn=False, channels=(16, 32)):
    """conv16 -> conv32/2 -> residual conv32 -> pool -> dense, gates after each BN."""
    width = (0.25, 1.0, 0.25)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(channels[0], 3, padding="same", use_bias=False, name="c1")(inputs)
    x = keras.layers.BatchNormalization(synchronized=sync_bn, name="bn1")(x)
    x = keras.layers.ReLU()(gate_cls(width=width, name="g1")(x))
    x = keras.layers.Conv2D(channels[1], 3, strides=2, padding="same", use_bias=False, name="c2")(x)
    x = keras.layers.BatchNormalization(synchronized=sync_bn, name="bn2")(x)
    out_gate = gate_cls(width=width, name="g2")
    x = keras.layers.ReLU()(out_gate(x))
    y = keras.layers.Conv2D(channels[1], 3, padding="same", use_bias=False, name="c3")(x)
    y = keras.layers.BatchNormalization(synchronized=sync_bn, name="bn3")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, out_gate(y)]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


def randomize_batch_norm(model, rng):
    """Gives every batch norm non-trivial statistics (and scale and offset where it has them) for rebuild tests."""
    draws = {"gamma": lambda shape: rng.normal(1, 0.2, shape), "beta": lambda shape: rng.normal(0, 0.2, shape),
             "moving_mean": lambda shape: rng.normal(0, 0.2, shape),
             "moving_variance": lambda shape: rng.uniform(0.5, 2, shape)}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # scale=False / center=False have fewer weights
            layer.set_weights([draws[w.name](w.shape) for w in layer.weights])


def unit_layer_scales(model):
    """ConvNeXt scales each block's branch by 1e-6 at initialisation; 1 lets pruning its expansions show."""
    for layer in model.layers:
        if layer.name.endswith("_layer_scale"):
            layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
    return model


def blob_data(rng, n=256, input_shape=(12, 12, 3), classes=4):
    """A learnable synthetic task: the class is which image quadrant is brightest."""
    x = rng.normal(0, 1, (n,) + input_shape).astype("float32")
    y = rng.integers(0, classes, n)
    h, w = input_shape[0] // 2, input_shape[1] // 2
    for i, c in enumerate(y):
        r, s = divmod(int(c), 2)
        x[i, r * h:(r + 1) * h, s * w:(s + 1) * w] += 1.5
    return x, y.astype("int32")


FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(array):
    """Encodes a uint8 array as IDX (magic 0x08 0x<ndim>, big-endian dims, data)."""
    header = (0x800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_gz(path, payload):
    with gzip.open(path, "wb") as f:
        f.write(payload)


def write_fashion_mnist(folder, arrays):
    """Writes `{file name: uint8 array}` as gzipped IDX files, like Debian's package."""
    for name, array in arrays.items():
        write_gz(folder / name, idx_bytes(array))


def learnable_fashion_mnist(folder, train=512, test=256, seed=0):
    """A made-up Fashion-MNIST folder whose class is a bright horizontal band's position."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for images_file, labels_file, n in ((FASHION_FILES[0], FASHION_FILES[1], train),
                                        (FASHION_FILES[2], FASHION_FILES[3], test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 4 + 2 * label] = 250
        arrays[images_file], arrays[labels_file] = images, labels
    write_fashion_mnist(folder, arrays)
    return folder


def random_config(graph, rng):
    """A random channel count for every gate of a channel graph."""
    return {g.name: int(rng.integers(1, g.channels + 1)) for g in graph.gates}


def grid_config(graph, rng):
    """A random width from every gate's grid (grouped convolutions need whole groups)."""
    return {g.name: int(rng.choice(g.widths_grid())) for g in graph.gates}


def assert_rebuild_exact(model, rng, trials=2, atol=1e-5, draw=random_config):
    """Random sub-networks (`draw(graph, rng)`) of a gated model: the slim rebuild computes the same outputs."""
    randomize_batch_norm(model, rng)
    graph = ChannelGraph(model)
    x = [rng.normal(size=(2,) + tuple(t.shape[1:])).astype("float32") for t in model.inputs]
    x = x[0] if len(x) == 1 else x
    for _ in range(trials):
        config = draw(graph, rng)
        slim = rebuild(model, config, graph=graph)
        assert not any(isinstance(layer, G.ChannelGate) for layer in slim._flatten_layers())
        with G.selection(G.Selection(G.SUBNET, {g: config[g.name] for g in graph.gates})):
            gated = np.asarray(model(x, training=False))
        np.testing.assert_allclose(np.asarray(slim(x, training=False)), gated, atol=atol)
        slim_graph = ChannelGraph(slim)
        assert costs.MACS.of(slim_graph) == costs.MACS.of(graph, config)
        assert slim.count_params() == costs.PARAMS.of(graph, config)
    return graph


def main_exit_message(monkeypatch, capsys, error):
    """What `main.py` prints when its run raises `error`; asserts that it exits with code 2."""
    from dmcp_tf.run import cli  # noqa: PLC0415

    def run(argv):
        raise error

    monkeypatch.setattr(cli, "run", run)
    with pytest.raises(SystemExit) as stopped:
        cli._main(["main.py"])
    assert stopped.value.code == 2
    return capsys.readouterr().err


def main_in_process(*args):
    """`main.py *args` in this process: (exit code, stdout + stderr).

    For runs that end before training (bad input, `--mode=macs`): they test
    what main.py does with its flags without the seconds of a new Python
    importing TensorFlow. The command line is defined afresh (`cli.define_flags`
    on new flag values) and parsed as `main.py` parses it (`cli._parse_flags`).
    """
    from absl import flags  # noqa: PLC0415

    from dmcp_tf.run import cli  # noqa: PLC0415

    argv = ["main.py", *args]
    fresh = flags.FlagValues()
    cli.define_flags(fresh, argv)
    out, code, global_flags = io.StringIO(), 0, cli.FLAGS
    cli.FLAGS = fresh
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            cli._main(cli._parse_flags(argv))
    except SystemExit as stopped:
        code = stopped.code
    finally:
        cli.FLAGS = global_flags
    return code, out.getvalue()
