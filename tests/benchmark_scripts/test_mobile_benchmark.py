"""benchmarks/accuracy.py on mobile networks: 32x32 RGB inputs, paired differences and TFLite latency columns."""

import json

import keras
import numpy as np
import pytest

from benchmarks import accuracy
from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.channels.rebuild import rebuild
from tests.helpers import learnable_fashion_mnist


@pytest.mark.parametrize("model", ["mobilenet_v2", "keras.applications.MobileNetV3Small"])
def test_mobile_supernets_take_32x32_rgb(model):
    args = accuracy.parse_args([f"--model={model}", "--image_size=32", "--budgets=0.5x,0.25x"])
    config = accuracy.benchmark_config(args)
    supernet = accuracy.supernet(args, config, (32, 32, 3), 10, "markov")
    assert tuple(supernet.inputs[0].shape[1:]) == (32, 32, 3)
    graph = ChannelGraph(supernet)
    assert 0 < costs.MACS.of(graph, graph.smallest_config()) < 0.25 * costs.MACS.of(graph)  # budgets in reach
    norms = [layer for layer in supernet._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if model == "mobilenet_v2":
        assert config.data.preprocess == "normalize"
        assert {g.num_groups + 1 for g in graph.gates} == {8}  # eighths of the 0.5x widths
    else:
        assert config.data.preprocess == "raw"  # keras.applications scale their own input
        assert norms and max(layer.momentum for layer in norms) <= 0.99


def test_an_applications_keyword_arguments_come_from_set_model_options(capsys):
    def macs(*flags):
        args = accuracy.parse_args(["--model=keras.applications.MobileNetV3Small", "--image_size=32", *flags])
        return costs.MACS.of(ChannelGraph(accuracy.supernet(args, accuracy.benchmark_config(args), (32, 32, 3), 10,
                                                            "markov")))

    assert macs("--set", "model.options.alpha=0.5") < 0.5 * macs()
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--model=keras.applications.MobileNetV3Small", "--set", "model.options.alhpa=0.5"])
    assert "alhpa" in capsys.readouterr().err


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--model=resnet9"])
    assert "--model=resnet9" in capsys.readouterr().err


def test_paired_differences_and_latency_table():
    rows = [dict(method=m, budget="0.5x", seed=s, accuracy=a, latency_ms={"float32": f, "int8": f / 2})
            for m, s, a, f in (("uniform", 0, 0.80, 1.0), ("dmcp_fit", 0, 0.83, 0.9), ("uniform", 1, 0.81, 1.0),
                               ("dmcp_fit", 1, 0.80, 0.8))]
    rows += [dict(method="full", budget="1.0x", seed=0, accuracy=0.9, latency_ms={"float32": 2.0, "int8": 1.0})]
    table = accuracy.paired(rows, ["0.5x"], ["dmcp_fit", "uniform"])
    assert "| dmcp_fit - uniform | +1.00 ± 2.83 (+3.00, -1.00) |" in table
    summary = accuracy.summarize([dict(r, macs=1, target_macs=2) for r in rows])
    latency = accuracy.latency_table(summary, ["0.5x"], ["dmcp_fit", "uniform"])
    assert "0.8500 / 0.4250" in latency and "1.0000 / 0.5000" in latency and "2.0000 / 1.0000 ms" in latency
    untimed = [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows]
    assert accuracy.latency_table(accuracy.summarize([dict(r, macs=1) for r in untimed]), ["0.5x"], ["uniform"]) == ""


@pytest.mark.slow
def test_dmcp_fit_alone_searches_and_the_structures_are_timed(tmp_path):
    (tmp_path / "fashion").mkdir()
    data_dir = learnable_fashion_mnist(tmp_path / "fashion")
    out = tmp_path / "acc.json"
    accuracy.main(["--seeds=0", "--budgets=0.5x", "--channels=10", "--blocks=1", "--train_limit=128",
                   "--test_limit=64", "--methods=uniform,dmcp_fit", "--batch_size=32", "--search_epochs=2",
                   "--retrain_epochs=1", "--tolerance=0.15", f"--data_dir={data_dir}", f"--json_out={out}"])
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]["rows"]}
    assert set(rows) == {"full", "uniform", "dmcp_fit"}  # dmcp_budget searched, not trained
    assert rows["dmcp_fit"]["trajectory"] and rows["dmcp_fit"]["search_seconds"] > 0
    timed = accuracy.main([f"--from_json={out}", "--latency", "--latency_rounds=1", "--latency_invokes=3"])
    saved = json.loads(out.read_text())["results"]
    assert all(set(r["latency_ms"]) == {"float32", "int8"} and min(r["latency_ms"].values()) > 0
               for r in saved["rows"])
    assert saved["rows"] == timed["rows"] and "float32_ms_mean" in saved["summary"][0]


def test_the_mobilenet_v2_config_builds_the_benchmark_network():
    from dmcp_tf.configs import fashion_mobilenet_v2  # noqa: PLC0415
    from dmcp_tf.data import DATASET_SHAPES  # noqa: PLC0415
    from dmcp_tf.models import build_supernet  # noqa: PLC0415
    from dmcp_tf.run import config as config_lib  # noqa: PLC0415

    config = fashion_mobilenet_v2.get_config("0.5x")
    config_lib.validate(config)
    shape, classes = DATASET_SHAPES[config.data.name](config.data.image_size)
    graph = ChannelGraph(build_supernet(config.model.name, input_shape=shape, num_classes=classes,
                                        **config.model.options.to_dict()))
    args = accuracy.parse_args(["--model=mobilenet_v2", "--image_size=32"])
    benchmark = accuracy.benchmark_config(args)
    assert config.model.options.to_dict() == benchmark.model.options.to_dict()  # the same network
    assert config.search.budget == "0.5x" and shape == (32, 32, 3) and len(graph.gates) == 25


def test_calibrate_batches_sets_the_batch_norm_statistics_after_training(tmp_path):
    data_dir = learnable_fashion_mnist(tmp_path)
    flags = ["--seeds=0", "--budgets=0.5x", "--channels=10", "--blocks=1", "--train_limit=64", "--test_limit=32",
             "--batch_size=32", "--retrain_epochs=1", "--tolerance=0.15", f"--data_dir={data_dir}"]
    means = {}
    for batches in (0, 1):
        benchmark = accuracy.Benchmark(accuracy.parse_args(flags + [f"--calibrate_batches={batches}"]), 0)
        keras.utils.set_random_seed(0)
        model = rebuild(benchmark.template, copy_weights=False)
        benchmark.train(model, 1)
        norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
        first = next(iter(benchmark.data.train_stream(0, 1)))[0]  # the first training batch, augmented
        below = keras.Model(model.inputs, norm.input)(first, training=True)
        means[batches] = norm.moving_mean.numpy(), np.mean(below.numpy(), axis=(0, 1, 2))
    calibrated, batch_mean = means[1]
    np.testing.assert_allclose(calibrated, batch_mean, rtol=1e-4, atol=1e-5)  # one batch: its statistics
    moving, batch_mean = means[0]
    assert not np.allclose(moving, batch_mean, rtol=1e-2, atol=1e-3)  # without: the moving average
