from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.config import AggregationConfig, EvaluationConfig, ServerConfig, TrainConfig, WireConfig
from federation.control import APP_DIR


def test_flower_app_defaults_match_the_config_dataclasses():
    declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    expected = {**TrainConfig().to_run_config(), **ServerConfig().to_run_config()}
    expected |= EvaluationConfig().to_run_config()
    assert declared == {**expected, **AggregationConfig().to_run_config(), **WireConfig().to_run_config()}


def test_run_config_round_trip_casts_types():
    cfg = TrainConfig.from_run_config({"lora-r": "4", "lr": "0.01", "target-modules": "q_proj", "unrelated": 1})
    assert (cfg.lora_r, cfg.lr, cfg.modules) == (4, 0.01, ["q_proj"])
    assert TrainConfig.from_run_config(cfg.to_run_config()) == cfg


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lora-r", 0, "lora-r"),
        ("lr", 5.0, "lr"),
        ("target-modules", " , ", "target-modules"),
        ("seq-len", 2, "seq-len"),
        ("node-validation", "sometimes", "node-validation must be one of after, both, none"),
        ("max-eval-records", -1, "max-eval-records"),
        ("lora-variant", "dora", "lora-variant must be one of lora, ffa"),
    ],
)
def test_bad_training_config_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_run_config({key: value})


def test_the_lora_variant_is_plain_lora_by_default_and_ffa_survives_the_run_config_round_trip():
    assert TrainConfig().lora_variant == "lora"
    cfg = TrainConfig.from_run_config({"lora-variant": "ffa", "unrelated": 1})
    assert cfg.lora_variant == "ffa" and cfg.to_run_config()["lora-variant"] == "ffa"
    assert TrainConfig.from_run_config(cfg.to_run_config()) == cfg


def test_nodes_validate_after_training_only_on_a_bounded_sample_by_default():
    cfg = TrainConfig()
    assert (cfg.node_validation, cfg.max_eval_records) == ("after", 8)
    assert TrainConfig.from_run_config({"node-validation": "both"}).node_validation == "both"


def test_app_dir_is_inside_the_package():
    assert Path(APP_DIR, "bayanihan_app", "server_app.py").is_file()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("strategy", "krum2", "strategy must be one of fedavg, fedmedian, fedtrimmedavg, multikrum"),
        ("trim-beta", 0.5, "trim-beta"),
        ("max-update-norm", -1, "max-update-norm"),
        ("max-norm-ratio", 0.5, "max-norm-ratio"),
        ("dp-delta", 1.0, "dp-delta"),
        ("dp-clipping-norm", 0, "dp-clipping-norm"),
        ("server-optimizer", "adagrad", "server-optimizer must be one of sgd, adam, yogi"),
        ("server-lr", 0, "server-lr must be a finite number > 0"),
        ("server-lr", float("inf"), "server-lr must be a finite number > 0"),
        ("server-momentum", 1.0, r"server-momentum must be in \[0, 1\)"),
        ("server-momentum", -0.1, r"server-momentum must be in \[0, 1\)"),
        ("server-beta1", 1.0, r"server-beta1 must be in \[0, 1\)"),
        ("server-beta2", -0.5, r"server-beta2 must be in \[0, 1\)"),
        ("server-tau", 0.0, "server-tau must be a finite number > 0"),
        ("server-tau", float("nan"), "server-tau must be a finite number > 0"),
    ],
)
def test_bad_aggregation_config_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        AggregationConfig.from_run_config({key: value})


def test_adam_and_yogi_ignore_the_sgd_momentum_so_choosing_them_needs_no_other_change():
    from federation.server_optimizer import ServerOptimizer

    optimizer = ServerOptimizer.from_config(AggregationConfig(server_optimizer="adam"))
    assert AggregationConfig().server_momentum == 0.5 and optimizer is not None and optimizer.momentum == 0.0


def test_the_default_server_step_is_sgd_momentum_and_the_settings_round_trip_as_run_config():
    assert AggregationConfig().server_step and AggregationConfig().server_optimizer == "sgd"
    assert not AggregationConfig(server_momentum=0.0).server_step  # plain sgd, lr 1, no momentum: the merge as is
    cfg = AggregationConfig.from_run_config(
        {"server-optimizer": "yogi", "server-lr": "0.01", "server-beta1": 0.5, "server-beta2": 0.9, "server-tau": 1}
    )
    assert (cfg.server_optimizer, cfg.server_lr, cfg.server_beta1, cfg.server_tau) == ("yogi", 0.01, 0.5, 1.0)
    assert cfg.server_step and AggregationConfig.from_run_config(cfg.to_run_config()) == cfg
    assert AggregationConfig(server_lr=2.0).server_step and AggregationConfig(server_momentum=0.5).server_step


def test_differential_privacy_is_only_offered_on_fedavg():
    with pytest.raises(ValueError, match="needs strategy fedavg"):
        AggregationConfig(strategy="fedmedian", dp_noise_multiplier=1.0)
    assert AggregationConfig(dp_noise_multiplier=1.0).dp


def test_transfer_dtype_defaults_to_float32_and_refuses_other_names():
    assert WireConfig.from_run_config({}).transfer_dtype == "float32"
    assert WireConfig.from_run_config({"transfer-dtype": "bfloat16"}).transfer_dtype == "bfloat16"
    with pytest.raises(ValueError, match="transfer-dtype must be one of float32, float16, bfloat16"):
        WireConfig.from_run_config({"transfer-dtype": "int8"})


@pytest.mark.parametrize(
    ("round_config", "factor"),
    [
        ({"nodes-in-round": 3}, 3.0),
        ({"nodes-in-round": 1}, 1.0),
        ({"nodes-in-round": 50}, 4.0),  # bounded by max-lr-scale
        ({}, 1.0),  # an older server sends no count
        ({"nodes-in-round": 0}, 1.0),
        ({"nodes-in-round": -7}, 1.0),
        ({"nodes-in-round": 10**12}, 1.0),
        ({"nodes-in-round": "many"}, 1.0),
    ],
)
def test_a_nodes_learning_rate_scales_with_the_nodes_in_its_round_within_max_lr_scale(round_config, factor):
    assert TrainConfig(lr=1e-3).round_lr(round_config) == pytest.approx(1e-3 * factor)


def test_max_lr_scale_one_turns_scaling_off_and_bad_bounds_name_the_key():
    assert TrainConfig(lr=1e-3, max_lr_scale=1.0).round_lr({"nodes-in-round": 8}) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"max-lr-scale must be in \[1, 64\]"):
        TrainConfig(max_lr_scale=0.5)
    with pytest.raises(ValueError, match="max-lr-scale x lr must stay below 1"):
        TrainConfig(lr=0.5, max_lr_scale=4.0)


def test_task_metrics_are_off_by_default_named_from_a_fixed_list_and_bounded():
    assert EvaluationConfig().metrics == []
    cfg = EvaluationConfig.from_run_config({"task-metrics": "exact-match, chrf,chrf", "task-max-records": "8"})
    assert (cfg.metrics, cfg.task_max_records) == (["chrf", "exact-match"], 8)
    assert EvaluationConfig.from_run_config(cfg.to_run_config()) == cfg
    with pytest.raises(ValueError, match="task-metrics: bleu unknown"):
        EvaluationConfig(task_metrics="chrf,bleu")
    with pytest.raises(ValueError, match=r"task-max-new-tokens must be in \[1, 512\]"):
        EvaluationConfig(task_max_new_tokens=0)
    with pytest.raises(ValueError, match=r"task-max-records must be in \[1, 1000\]"):
        EvaluationConfig(task_max_records=5000)


def test_config_problems_come_as_a_list_one_per_key_not_a_joined_string():
    from federation.config import ConfigError

    with pytest.raises(ConfigError) as err:
        TrainConfig(lr=-1.0, lora_variant="nope")
    assert len(err.value.problems) == 2
    assert [p.split(" ", 1)[0] for p in err.value.problems] == ["lr", "lora-variant"]
    assert str(err.value) == "; ".join(err.value.problems)  # still reads as one line where a string is wanted
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_run_config({"local-steps": "many"})
    assert err.value.problems == ["local-steps must be a int, not 'many'"]
