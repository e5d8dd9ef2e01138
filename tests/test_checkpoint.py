"""Atomic writes, checkpoints, RNG states, fingerprints and the stage config keys."""

from __future__ import annotations

import argparse
import logging
import random

import numpy as np
import pytest
import torch

from nas_core import checkpoint as ck
from nas_core.config import (SEARCH_DEFAULTS, SELECT_DEFAULTS, SPECS, TEST_DEFAULTS,
                             TRAIN_DEFAULTS, ConfigError, json_schema, merge, validate_stage_cfg)


# -- torch files and fingerprints ----------------------------------------------------------------
def test_atomic_torch_save_bytes_do_not_depend_on_path(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    a = ck.atomic_torch_save(sd, tmp_path / "a.pt")
    b = ck.atomic_torch_save(sd, tmp_path / "other" / "b.pt")
    assert a.read_bytes() == b.read_bytes()
    back = torch.load(b, weights_only=True)
    assert torch.equal(back["w"], sd["w"])


def test_fingerprint_ignores_key_order_not_values():
    assert ck.fingerprint({"a": 1, "b": [1, 2]}) == ck.fingerprint({"b": [1, 2], "a": 1})
    assert ck.fingerprint({"a": 1}) != ck.fingerprint({"a": 2})


# -- RNG states ---------------------------------------------------------------------------------
def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ck.get_rng_state()
    path = ck.atomic_torch_save({"rng": state}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    loaded = torch.load(path, weights_only=True)["rng"]
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ck.set_rng_state(loaded)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


# -- checkpoints --------------------------------------------------------------------------------
def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.001)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": ck.get_rng_state(), "epoch": 2, "step": 7,
            "history": [{"epoch": 0, "train": {"loss": 1.5, "top1": None}}],
            "meter": {"n": 3.0, "loss": 0.25}}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    state = _state()
    ck.save_checkpoint(path, state, "abc")
    back = ck.load_checkpoint(path, "abc")
    assert back["epoch"] == 2 and back["step"] == 7 and back["history"] == state["history"]
    assert torch.equal(back["model"]["weight"], state["model"]["weight"])
    opt = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(back["optimizer"])


def test_checkpoint_with_other_fingerprint_is_ignored(tmp_path, caplog):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, _state(), "abc")
    with caplog.at_level(logging.WARNING, logger="nas_core"):
        assert ck.load_checkpoint(path, "xyz") is None
    assert "ignoring checkpoint" in caplog.text and "configuration changed" in caplog.text
    assert path.exists()


def test_missing_checkpoint_is_none(tmp_path):
    assert ck.load_checkpoint(tmp_path / "none.pt", "abc") is None


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip", None])
def test_unreadable_checkpoint_is_moved_aside(tmp_path, caplog, content):
    path = tmp_path / "last.pt"
    if content is None:  # a real torch file, truncated
        ck.save_checkpoint(path, _state(), "abc")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="nas_core"):
        assert ck.load_checkpoint(path, "abc") is None
    assert not path.exists()
    assert (tmp_path / "last.pt.corrupt").exists()
    assert "moved aside" in caplog.text


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"fingerprint": "abc", "format": 1, "obj": argparse.Namespace(a=1)}, path)
    assert ck.load_checkpoint(path, "abc") is None  # weights_only refuses it
    assert (tmp_path / "last.pt.corrupt").exists()


# -- config -------------------------------------------------------------------------------------
def test_defaults_are_the_papers():
    assert SEARCH_DEFAULTS["epochs"] == 50 and SEARCH_DEFAULTS["lr_min"] == 0.001
    assert SEARCH_DEFAULTS["arch_lr"] == 3e-4 and SEARCH_DEFAULTS["order"] == 1
    assert TRAIN_DEFAULTS["epochs"] == 600 and TRAIN_DEFAULTS["batch_size"] == 96
    assert TRAIN_DEFAULTS["auxiliary_weight"] == 0.4 and TRAIN_DEFAULTS["drop_path_prob"] == 0.2
    assert TEST_DEFAULTS == {"batch_size": 256, "amp": "auto", "num_workers": 2,
                             "memory_limit": None, "memory_margin": 0.1}
    for stage in SPECS:
        assert validate_stage_cfg(stage, {}) == {k: (float(v) if isinstance(v, float) else v)
                                                 for k, v in
                                                 {"search": SEARCH_DEFAULTS,
                                                  "train": TRAIN_DEFAULTS,
                                                  "test": TEST_DEFAULTS,
                                                  "select": SELECT_DEFAULTS}[stage].items()}


@pytest.mark.parametrize("stage, cfg, match", [
    ("search", {"epochs": 0}, r"^search\.epochs: 0 is out of range \[1, inf\)$"),
    ("search", {"epoch": 3}, r"^search\.epoch: unknown key"),
    ("search", {"order": 3}, r"^search\.order: must be one of 1, 2"),
    ("search", {"train_portion": 1.0}, r"^search\.train_portion: 1\.0 is out of range"),
    ("search", {"layers": True}, r"^search\.layers: must be an integer"),
    ("search", {"lr": "fast"}, r"^search\.lr: must be a number"),
    ("search", {"multiplier": 5}, r"^search\.multiplier: 5 is larger than search\.steps 4"),
    ("search", {"partial_channels": 3}, r"^search\.partial_channels: 3 does not divide"),
    ("search", {"amp": "fp16"}, r"^search\.amp: must be one of"),
    ("search", {"channels_last": "yes"}, r"^search\.channels_last: must be \"auto\""),
    ("train", {"lr": 0.01, "lr_min": 0.1}, r"^train\.lr_min: 0\.1 is larger than train\.lr"),
    ("train", {"drop_path_prob": 1}, r"^train\.drop_path_prob: 1\.0 is out of range"),
    ("train", {"max_steps_per_epoch": 0}, r"^train\.max_steps_per_epoch: 0 is out of range"),
    ("test", {"batch_size": -1}, r"^test\.batch_size: -1 is out of range"),
])
def test_bad_config_values_give_one_line_errors(stage, cfg, match):
    with pytest.raises(ConfigError, match=match) as info:
        validate_stage_cfg(stage, cfg)
    assert "\n" not in str(info.value)


def test_amp_accepts_yaml_booleans():
    assert validate_stage_cfg("test", {"amp": False})["amp"] == "off"
    assert validate_stage_cfg("search", {"amp": True})["amp"] == "bf16"
    with pytest.raises(ConfigError, match=r"^train\.amp: must be one of"):
        validate_stage_cfg("train", {"amp": 0})


def test_auto_memory_format_and_precision_per_device():
    from nas_core.stages.runtime import resolve_amp, resolve_channels_last

    cpu, gpu, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_amp("auto", cpu) is None and resolve_amp("auto", gpu) is torch.bfloat16
    assert resolve_channels_last("auto", cpu) and resolve_channels_last("auto", gpu)
    assert not resolve_channels_last("auto", mps)
    # CPU bf16 autocast with channels_last gave NaN depthwise gradients (torch 2.14.1)
    assert not resolve_channels_last("auto", cpu, torch.bfloat16)
    assert resolve_channels_last("auto", gpu, torch.bfloat16)
    assert resolve_channels_last(True, cpu, torch.bfloat16)
    assert not resolve_channels_last(False, gpu)


def test_config_accepts_null_and_integral_numbers():
    cfg = validate_stage_cfg("train", {"max_steps_per_epoch": None, "lr": 1, "epochs": 3.0})
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float) and cfg["epochs"] == 3
    assert merge({"a": 1, "b": 2}, None, {"b": 3}) == {"a": 1, "b": 3}


def test_json_schema_agrees_with_validation():
    jsonschema = pytest.importorskip("jsonschema")
    for stage in SPECS:
        schema = json_schema(stage)
        jsonschema.Draft7Validator.check_schema(schema)
        jsonschema.validate(validate_stage_cfg(stage, {}), schema)
        assert set(schema["properties"]) == set(SPECS[stage])
        for key, prop in schema["properties"].items():
            assert prop["description"] and "default" in prop
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"epochs": 0}, json_schema("search"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"unknown": 0}, json_schema("train"))
