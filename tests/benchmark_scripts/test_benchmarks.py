"""Smoke tests of the benchmark scripts on tiny settings (well-formed outputs, no timing thresholds)."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import accuracy, applications, budget_kinds, common, latency, onednn, sensitivity, step_time
from dmcp_tf import costs
from dmcp_tf.channels.graph import ChannelGraph
from dmcp_tf.models import fashion_resnet
from tests.helpers import blob_data, learnable_fashion_mnist, tiny_supernet


def _tiny(gate_kind="markov"):
    """One-stage fashion_resnet: the same layer types as the default supernet, quick to trace."""
    return fashion_resnet(channels=(16,), gate_kind=gate_kind)


def test_interleaved_alternates_and_format_table():
    calls = []
    values = common.interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0},
                                rounds=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert values == {"a": [1.0, 1.0], "b": [2.0, 2.0]}
    table = common.format_table(("x", "y"), [("long name", 1)]).splitlines()
    assert len(table) == 3 and len({len(line) for line in table}) == 1


def test_step_time_plain_and_dmcp_with_profile(tmp_path):
    result = step_time.benchmark_model("tiny", builder=_tiny, batch=4, steps=2, warmup=0, profile="always")
    assert len(result["plain_times"]) == len(result["dmcp_times"]) == 2
    assert all(t > 0 for t in result["plain_times"] + result["dmcp_times"])
    assert result["ratio"] == pytest.approx(result["dmcp_s"] / result["plain_s"])
    assert result["masked_ratio"] == pytest.approx(result["masked_s"] / result["plain_s"])
    assert len(result["masked_times"]) == 2 and result["subnetworks"] == "sliced"
    profile = result["profile"]
    assert len(profile["parts_s"]) == 4 and all(t > 0 for t in profile["parts_s"].values())
    assert 0 < profile["smallest_macs_fraction"] < profile["random_macs_fraction"] < 1
    table = step_time.results_table([result])
    assert "sliced/plain" in table and "masked/plain" in table
    assert "sliced" in step_time.profile_table(result)
    path = common.write_json(tmp_path / "out.json", {"results": [result]})
    assert json.loads(path.read_text())["results"][0]["batch"] == 4


@pytest.mark.slow
def test_onednn_times_both_settings_in_alternation(tmp_path, capsys):
    out = tmp_path / "onednn.json"
    results = onednn.main(["--rounds=1", "--steps=1", "--fashion_batch=2", "--fashion_channels=16", "--warmup=0",
                           f"--json_out={out}"])
    assert [r["step"] for r in results] == ["plain_s", "dmcp_s"]
    for result in results:
        assert [len(result["rounds"][name]) for name in ("off", "on")] == [1, 1]
        assert result["off_s"] > 0 and result["on_s"] > 0
        assert result["speedup"] == pytest.approx(result["off_s"] / result["on_s"])
    assert "fashion_resnet dmcp" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"][1]["step"] == "dmcp_s"


def test_latency_tiny_model(tmp_path):
    supernet = _tiny()
    graph = ChannelGraph(supernet)
    structure = {g.name: max(g.prefix, g.channels // 2 + 1) for g in graph.gates}  # odd widths
    rows = latency.benchmark_supernet(supernet, {"half": structure}, round_to=4, quantizations=("float32",),
                                      threads=(1,), runs=3, rounds=1, warmup=1, out_dir=str(tmp_path))
    assert [r["kind"] for r in rows] == ["full", "dmcp", "uniform", "rounded"]
    assert rows[0]["latency_ratio"]["float32"][1] == pytest.approx(1.0)
    for row in rows:
        assert row["latency_ms"]["float32"][1] > 0
        assert row["macs"] == costs.MACS.of(graph, row["config"])
        assert row["macs_ratio"] == pytest.approx(row["macs"] / rows[0]["macs"])
        assert (tmp_path / row["paths"]["float32"].split("/")[-1]).exists()
    assert abs(rows[2]["macs"] - rows[1]["macs"]) <= 0.01 * rows[1]["macs"]
    assert all(v % 4 == 0 or v == g.channels for g in graph.gates for v in [rows[3]["config"][g.name]])
    table = latency.latency_table("tiny", rows, ("float32",), (1,))
    assert "float32 1T ms" in table and len(table.splitlines()) == 2 + len(rows)


@pytest.mark.slow
def test_accuracy_benchmark_every_method_tiny(tmp_path):
    (tmp_path / "fashion").mkdir()
    data_dir = learnable_fashion_mnist(tmp_path / "fashion")
    args = [
        "--seeds=0", "--budgets=0.5x", "--channels=16", "--blocks=1", "--train_limit=256", "--test_limit=128",
        f"--methods={','.join(accuracy.METHODS)}",
        "--batch_size=32", "--search_epochs=2", "--retrain_epochs=1", "--tolerance=0.1",
        f"--data_dir={data_dir}", f"--plot={tmp_path / 'acc.png'}", f"--json_out={tmp_path / 'acc.json'}",
    ]
    out = accuracy.main(args)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"full", *accuracy.METHODS}
    full = rows["full"]["macs"]
    for method in ("uniform", "l1", "random", "dmcp_fit"):  # matched to the budget
        assert abs(rows[method]["macs"] - 0.5 * full) <= 0.1 * 0.5 * full, method
    assert rows["uniform"]["config"] == rows["l1"]["config"] != rows["random"]["config"]
    assert rows["dmcp_finetune"]["config"] == rows["dmcp_budget"]["config"]  # one search, two trainings
    assert rows["dmcp_l1"]["config"] == rows["dmcp_budget"]["config"]  # its widths, the trained channels
    for method in ("dmcp_budget", "dmcp_authors", "dmcp_full", "dmcp_pretrained", "bernoulli", "from_full"):
        row = rows[method]
        assert row["search_seconds"] > 0 and row["trajectory"][-1]["step"] > row["trajectory"][0]["step"], method
    assert {rows[m]["search_init"] for m in ("dmcp_budget", "dmcp_authors", "dmcp_full")} == {"budget", "authors", "full"}
    assert 0.0 <= rows["dmcp_pretrained"]["inherited_accuracy"] <= 1.0
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0 < r["macs"] <= full for r in out["rows"])
    summary = {(s["method"], s["budget"]): s for s in out["summary"]}
    assert summary["uniform", "0.5x"]["macs_over_budget"] == pytest.approx(rows["uniform"]["macs"] / (0.5 * full))
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "acc.json").read_text())
    assert len(saved["results"]["rows"]) == 1 + len(accuracy.METHODS) and saved["settings"]["budgets"] == ["0.5x"]
    # Rerun with the same settings: every model is in the file, nothing trains again.
    again = accuracy.main(args)
    assert again["rows"] == out["rows"]
    # A run cut short after the searches: the missing model trains, no warm-up runs again.
    (tmp_path / "acc.json.cache" / "seed0_warmup.npz").unlink()
    saved["results"]["rows"] = [r for r in saved["results"]["rows"] if r["method"] != "uniform"]
    (tmp_path / "acc.json").write_text(json.dumps(saved))
    resumed = accuracy.main(args)
    assert {r["method"] for r in resumed["rows"]} == set(rows)
    retrained = next(r for r in resumed["rows"] if r["method"] == "uniform")
    assert (retrained["config"], retrained["accuracy"]) == (rows["uniform"]["config"], rows["uniform"]["accuracy"])
    assert not (tmp_path / "acc.json.cache" / "seed0_warmup.npz").exists()
    # Searches lost too: from_full searches first, the warm-up still starts from the state as built.
    for method in ("from_full", "dmcp_budget"):
        (tmp_path / "acc.json.cache" / f"seed0_search_markov_{accuracy.SEARCHES[method][1]}_budget_0.5x.json").unlink()
    saved = json.loads((tmp_path / "acc.json").read_text())
    saved["results"]["rows"] = [r for r in saved["results"]["rows"] if r["method"] not in ("from_full", "dmcp_budget")]
    (tmp_path / "acc.json").write_text(json.dumps(saved))
    latest = accuracy.main(args)
    searched = {r["method"]: r for r in latest["rows"]}
    assert searched["dmcp_budget"]["config"] == rows["dmcp_budget"]["config"]
    assert searched["dmcp_budget"]["trajectory"] == rows["dmcp_budget"]["trajectory"]
    with pytest.raises(SystemExit, match="retrain_epochs"):  # other settings: refused, the file kept
        accuracy.main([a for a in args if not a.startswith("--retrain_epochs")] + ["--retrain_epochs=2"])
    redrawn = accuracy.main([f"--from_json={tmp_path / 'acc.json'}", f"--plot={tmp_path / 'again.png'}",
                             f"--trajectory_plots={tmp_path / 'traj'}"])
    assert redrawn["summary"] == latest["summary"] and (tmp_path / "again.png").exists()
    assert (tmp_path / "traj" / "trajectory_dmcp_budget_0.5x.png").read_bytes()[:4] == b"\x89PNG"
    table = accuracy.tables(out["summary"], ["0.5x"], list(accuracy.METHODS))
    assert all(label in table for label in accuracy.METHODS.values()) and "Unpruned network" in table


@pytest.mark.slow
def test_sensitivity_cuts_each_gate_alone_and_compares_the_searched_widths(tmp_path, monkeypatch):
    (tmp_path / "fashion").mkdir()
    data_dir = learnable_fashion_mnist(tmp_path / "fashion")
    accuracy.main(["--seeds=0", "--budgets=0.5x", "--channels=16", "--blocks=1", "--train_limit=128",
                   "--test_limit=64", "--methods=uniform,dmcp_fit", "--batch_size=32", "--search_epochs=2",
                   "--retrain_epochs=1", "--tolerance=0.1", f"--data_dir={data_dir}", f"--json_out={tmp_path / 'acc.json'}"])
    rows = {r["method"]: r for r in json.loads((tmp_path / "acc.json").read_text())["results"]["rows"]}
    args = [f"--from_json={tmp_path / 'acc.json'}", "--budget=0.5x", "--keep=0.5", f"--json_out={tmp_path / 's.json'}"]
    out = sensitivity.main(args)
    gates = out["seeds"][0]["gates"]
    assert sorted(g["gate"] for g in gates) == sorted(rows["uniform"]["config"])  # every gate, alone
    for gate in gates:
        assert gate["kept"] == round(0.5 * gate["channels"]) and 0 < gate["macs_saved"] < 1
        assert 0.0 <= gate["accuracy"] <= 1.0
    ratios = out["seeds"][0]["ratios"]
    assert set(ratios) == {"dmcp_fit"}
    assert ratios["dmcp_fit"] == {g: rows["dmcp_fit"]["config"][g] / w for g, w in rows["uniform"]["config"].items()}
    assert set(out["correlation"]) == {"dmcp_fit"}
    assert out["correlation"]["dmcp_fit"] == pytest.approx(sensitivity.spearman(
        [t["sensitivity"] for t in out["table"]], [t["ratios"]["dmcp_fit"] for t in out["table"]]), nan_ok=True)
    # Seeds the file holds are not measured again.
    monkeypatch.setattr(sensitivity, "gate_sensitivity", lambda *a, **k: pytest.fail("measured again"))
    assert sensitivity.main(args)["table"] == out["table"]
    with pytest.raises(SystemExit, match="keep"):
        sensitivity.main(args[:2] + ["--keep=0.25", args[3]])


def test_spearman_ranks():
    assert sensitivity.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert sensitivity.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert sensitivity.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # a tie: mean rank
    assert np.isnan(sensitivity.spearman([1, 2, 3], [5, 5, 5]))  # nothing to rank


def test_applications_table_resumes_and_records_failures(tmp_path, monkeypatch):
    args = ["--models=MobileNet", "--size=32", "--stages=gates,full,subnet", f"--out={tmp_path / 'apps.md'}",
            f"--json_out={tmp_path / 'apps.json'}"]
    (row,) = applications.main(args)
    assert row["model"] == "MobileNet" and row["gates"] > 10 and "error" not in row
    assert 0.9 <= row["prunable"] <= 1.0 and 0.0 < row["smallest"] < 0.1  # every conv shrinks, to a few percent
    assert row["full_exact"] and row["subnet_exact"] and row["predicted"]
    assert row["subnet_macs"] == row["predicted_macs"] < applications.costs.MACS.of(
        applications.ChannelGraph(applications.build("MobileNet", 32)))
    table = (tmp_path / "apps.md").read_text()
    assert "| MobileNet | 32x32 |" in table and "largest group kept whole" in table and "--json_out=" in table

    def unbuildable(name, size):
        raise RuntimeError(f"no {name} today")

    monkeypatch.setattr(applications, "Family", None)  # a finished family is read back, not measured again
    assert applications.main(args) == [row]
    monkeypatch.undo()
    monkeypatch.setattr(applications, "build", unbuildable)
    rows = applications.main(args + ["--redo=MobileNet"])  # measured again: it fails, and says where
    assert rows[0]["error"] == "gates: RuntimeError: no MobileNet today" and "full_exact" not in rows[0]
    assert "gates: RuntimeError: no MobileNet today" in (tmp_path / "apps.md").read_text()
    assert json.loads((tmp_path / "apps.json").read_text())["rows"] == rows
    monkeypatch.setattr(applications, "Family", None)
    merged = applications.main(["--models=MobileNet", "--size=32", "--stages=gates,full,subnet",
                                f"--json_out={tmp_path / 'merged.json'}", f"--merge={tmp_path / 'apps.json'}"])
    assert merged == rows  # another run's families taken over, not measured again
    assert applications.main(["--models=MobileNet,VGG16", "--size=32", "--stages=gates,full,subnet", "--redraw",
                              f"--out={tmp_path / 'redrawn.md'}", f"--json_out={tmp_path / 'merged.json'}"]) == rows
    assert "Not measured yet: VGG16." in (tmp_path / "redrawn.md").read_text()
    assert json.loads((tmp_path / "merged.json").read_text())["rows"] == rows
    with pytest.raises(SystemExit, match="other settings"):  # other stages: refused, the file kept
        applications.main(args[:2] + ["--stages=gates"] + args[3:])
    with pytest.raises(SystemExit):
        applications.main(["--models=NoSuchNet"])


def test_applications_low_share_and_failures_are_explained_in_the_table():
    low = applications.table_row({"model": "X", "prunable": 0.3, "boundary": "64 channels: a softmax mixes them"})
    assert low["note"] == f"share below {applications.LOW_SHARE}: 64 channels: a softmax mixes them"
    high = applications.table_row({"model": "Y", "prunable": 0.9, "boundary": "-", "subnet_diff": 3e-7,
                                   "subnet_exact": True, "tflite_diff": 0.5, "tflite_ok": False,
                                   "error": "search: ValueError: no"})
    assert high["note"] == "search: ValueError: no" and high["search_ran"] is None
    assert high["subnet_diff"] == "3.0e-07 (yes)" and high["tflite_diff"] == "5.0e-01 (no)"


def test_applications_search_runs_both_stages_and_says_when_a_loss_is_not_finite():
    import numpy as np

    x, y = blob_data(np.random.default_rng(0), 16)
    result = applications.search_check(tiny_supernet(), x, y)
    assert result["search_ran"] and result["search_gates_moved"] == 2 and result["search_nonfinite"] == []
    assert 0 < result["search_expected"] < 1 and applications.search_cell({**result, "gates": 2}) == "yes (batch 8)"
    x[0, 0, 0, 0] = np.nan  # the first step's losses are NaN
    result = applications.search_check(tiny_supernet(), x, y)
    assert not result["search_ran"] and "loss_full" in result["search_nonfinite"]
    assert applications.search_cell({**result, "gates": 2}).startswith("no (batch 8; ")
    old = {"search_ran": True, "search_gates_moved": 3, "gates": 3}  # a row written before the batch was recorded
    assert applications.search_cell(old) == "yes (batch 2)"
    assert "predates" in applications.search_cell({**old, "search_ran": False})


def test_step_time_under_mixed_bfloat16():
    with step_time.dtype_policy("mixed_bfloat16"):
        result = step_time.benchmark_model("tiny", builder=_tiny, batch=4, steps=1, warmup=0, profile="never")
    assert result["plain_s"] > 0 and result["dmcp_s"] > 0 and result["subnetworks"] == "sliced"


def test_input_pipeline_rate(tmp_path):
    (tmp_path / "fashion").mkdir()
    rate = step_time.input_pipeline_rate("fashion_mnist", 32, data_dir=str(learnable_fashion_mnist(tmp_path / "fashion")),
                                         batches=5)
    assert rate > 0


def test_gpu_script_without_a_gpu_says_so_and_exits_0():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the script would time it")
    root = str(pathlib.Path(__file__).resolve().parents[2])
    done = subprocess.run(["bash", os.path.join(root, "benchmarks", "gpu.sh")], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OUT=os.path.join(root, "runs", "never")))
    assert done.returncode == 0 and "sees no GPU" in done.stdout, done.stdout + done.stderr


def test_budget_kinds_sets_each_slim_model_against_its_budget(tmp_path):
    def run(name, cost, unit, target, es_cost, es_macs, accuracy_, macs_key="es_macs"):
        folder = tmp_path / name
        folder.mkdir()
        files = {"search.json": {"cost": cost, "unit": unit, "target": target},
                 "sample.json": {"es_cost": es_cost, macs_key: es_macs, "es_params": 100},
                 "channels.json": {"stem": 8}, "eval.json": {"slim": {"accuracy": accuracy_}}}
        for file, content in files.items():
            (folder / file).write_text(json.dumps(content))

    run("latency", "latency", "ms", 0.1, 0.095, 3_000_000, 0.88)
    run("params", "params", "params", 1000, 960, 5_000_000, 0.87, macs_key="es_flops")  # a run written before
    run("macs_at_latency", "macs", "MACs", 3_000_000, 2_900_000, 2_900_000, 0.86)
    assert budget_kinds.budget_flags("macs_at_latency", str(tmp_path)) == ["--config.search.budget=3000000"]
    ms = {"latency": 0.103, "params": 0.15, "macs_at_latency": 0.1, "full": 0.2}
    rows = {r["run"]: r for r in budget_kinds.rows_of(str(tmp_path), ["latency", "params", "macs_at_latency"], ms)}
    assert rows["latency"]["achieved_over_target"] == pytest.approx(1.03)  # measured, not predicted
    assert rows["params"]["achieved_over_target"] == pytest.approx(0.96)
    assert rows["macs_at_latency"]["achieved_over_target"] == pytest.approx(2.9 / 3)
    assert rows["params"]["ms_over_full"] == pytest.approx(0.75) and rows["latency"]["budget"] == "latency:0.5x"
    assert rows["params"]["macs"] == 5_000_000 and rows["latency"]["macs"] == 3_000_000


def test_accuracy_results_of_an_older_config_continue_unless_a_value_changed():
    saved = {"seeds": "0", "config": {"search": {"epochs": 2}, "retrain": {"epochs": 2}}}
    newer = {"seeds": "0", "config": {"search": {"epochs": 2, "added_key": "default"}, "retrain": {"epochs": 2}}}
    assert all(accuracy._same(saved[k], newer[k]) for k in newer)  # a key added since: its default, same results
    changed = dict(newer, config={"search": {"epochs": 3, "added_key": "default"}, "retrain": {"epochs": 2}})
    assert not accuracy._same(saved["config"], changed["config"])
    assert not accuracy._same(newer["config"], saved["config"])  # a key the current config no longer has


def test_accuracy_settings_are_checked_before_training(capsys):
    args = accuracy.parse_args(["--set=retrain.weight_decay_type=coupled", "--set=search.min_learning_rate=0.016",
                                "--set=model.options.kernel_initializer=kaiming_fan_out"])
    config = accuracy.benchmark_config(args)
    assert config.retrain.weight_decay_type == "coupled" and config.search.min_learning_rate == 0.016
    assert config.model.options.kernel_initializer == "kaiming_fan_out" and config.model.options.blocks == 3
    assert accuracy.benchmark_config(accuracy.parse_args([])).retrain.weight_decay_type == "decoupled"
    for wrong, says in [("search.min_lr=0.1", "no key 'search.min_lr'"), ("retrain.weight_decay_type=l2", "unknown 'l2'"),
                        ("model.options.kernel_initializer=he", "Unknown kernel initializer 'he'"),
                        ("search.epochs", "expected KEY=VALUE")]:
        with pytest.raises(SystemExit):
            accuracy.parse_args([f"--set={wrong}"])
        assert says in capsys.readouterr().err
    # 16 channels on the 10% grid keep at least 7 (groups of one channel): 0.1x is out of reach.
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--channels=16,16,16", "--budgets=0.5x,0.1x"])
    assert "--budgets 0.1x" in capsys.readouterr().err and accuracy.parse_args(["--budgets=0.1x"]).channels == [10] * 3


def test_accuracy_results_with_set_keys_continue(tmp_path):
    argv = ["--set=retrain.weight_decay_type=coupled", f"--json_out={tmp_path / 'acc.json'}"]
    accuracy.Results(accuracy.parse_args(argv)).write(accuracy.parse_args(argv), 0.0)
    assert accuracy.Results(accuracy.parse_args(argv)).rows == []  # the file's settings read back as the same
    with pytest.raises(SystemExit, match="set differ"):
        accuracy.Results(accuracy.parse_args(["--set=retrain.weight_decay_type=decoupled", argv[1]]))


def test_accuracy_results_ignore_the_default_runs_keys_the_benchmark_sets(tmp_path):
    """Retuning configs/fashion_mnist.py's supernet, budget or epochs (the benchmark's flags replace them) keeps a
    file valid, also one written when those keys were part of its identity; any other config key does not."""
    argv = [f"--json_out={tmp_path / 'acc.json'}"]
    accuracy.Results(accuracy.parse_args(argv)).write(accuracy.parse_args(argv), 0.0)
    saved = json.loads((tmp_path / "acc.json").read_text())
    config = saved["settings_identity"]["config"]
    assert "options" not in config["model"] and "steps_per_epoch" not in config["search"]
    config["model"]["options"] = {"channels": [32, 64, 128]}  # as files written before held them
    config["search"].update(budget="0.3x", epochs=5, steps_per_epoch=234)
    (tmp_path / "acc.json").write_text(json.dumps(saved))
    assert accuracy.Results(accuracy.parse_args(argv)).rows == []
    config["retrain"]["learning_rate"] = 1.0  # a key the benchmark trains with
    (tmp_path / "acc.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="config differ"):
        accuracy.Results(accuracy.parse_args(argv))


def test_accuracy_results_take_flags_added_since_at_their_defaults(tmp_path):
    argv = [f"--json_out={tmp_path / 'acc.json'}"]
    accuracy.Results(accuracy.parse_args(argv)).write(accuracy.parse_args(argv), 0.0)
    saved = json.loads((tmp_path / "acc.json").read_text())
    del saved["settings_identity"]["pretrained_arch_learning_rate"]  # a file written before the flag
    (tmp_path / "acc.json").write_text(json.dumps(saved))
    assert accuracy.Results(accuracy.parse_args(argv)).rows == []
    with pytest.raises(SystemExit, match="pretrained_arch_learning_rate differ"):
        accuracy.Results(accuracy.parse_args([*argv, "--pretrained_arch_learning_rate=2.0"]))


@pytest.mark.slow  # a plain Keras training and one main.py --model run on 60 + 60 images
def test_own_model_trains_saves_prunes_by_the_command_and_continues(tmp_path, monkeypatch):
    import keras

    from benchmarks import own_model

    monkeypatch.setitem(own_model.MODELS, "TinyCNN", lambda: keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")]))
    args = ["--models=TinyCNN", "--budgets=0.5x", "--train_epochs=1", "--retrain_epochs=1", "--images_per_class=6",
            f"--work_dir={tmp_path}", f"--json_out={tmp_path / 'own.json'}", "--main_flag=--config.data.batch_size=8",
            "--main_flag=--config.export.representative_images=8", "--main_flag=--config.export.parity_images=8",
            "--main_flag=--config.export.latency_runs=2", "--main_flag=--config.sample.statistics_samples=200"]
    (row,) = own_model.main(args)["rows"]
    assert len(list((tmp_path / "fashion32_6" / "train").glob("class*/*.png"))) == 60
    assert row["model"] == "TinyCNN" and row["budget"] == "0.5x" and 0 <= row["trained_top1"] <= 1
    full = costs.count_macs(keras.saving.load_model(tmp_path / "TinyCNN.keras"))
    assert 0.9 <= row["eval"]["slim"]["macs"] / (0.5 * full) <= 1.0, row["eval"]
    assert row["uniform"]["inherited"] and "slim_int8" in row["export"]
    monkeypatch.setattr(own_model, "prune_by_command", lambda *a, **k: pytest.fail("a finished row was run again"))
    assert own_model.main(args)["rows"] == json.loads((tmp_path / "own.json").read_text())["rows"] == [row]
