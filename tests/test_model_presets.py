"""Model presets (configs/models/*.yaml) load and compose with an env and a strategy, as the
README's "Train your own checkpoint" command writes them; several files compose on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentropy import cli
from agentropy.configuration import ConfigError, to_dict
from agentropy.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "models").glob("*.yaml"))
REAL = ["qwen2.5-0.5b", "qwen2.5-1.5b", "smollm2-135m"]


def test_the_presets_shipped():
    assert PRESETS == ["qwen2.5-0.5b", "qwen2.5-1.5b", "smollm2-135m", "tiny"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_alone_and_with_an_env_and_a_strategy(name, tmp_path):
    preset = CONFIGS / "models" / f"{name}.yaml"
    alone = load_config(preset)
    assert alone.model.path == ""  # the user names the folder: nothing is downloaded
    cfg = load_config([CONFIGS / "household.yaml", preset, CONFIGS / "strategies" / "epo.yaml"],
                      [f"model.path={tmp_path}"])
    assert cfg.model.path == str(tmp_path) and cfg.strategy.epo.enabled
    assert cfg.env.id == "agentropy/Household-v0"
    for field in ("train.lr", "sft.lr", "prompt.memory_turns", "rollout.max_tokens", "model.dtype"):
        section, key = field.split(".")
        assert getattr(getattr(cfg, section), key) == getattr(getattr(alone, section), key), field  # the preset wins


@pytest.mark.parametrize("name", REAL)
def test_real_model_presets_say_where_their_numbers_come_from(name):
    text = (CONFIGS / "models" / f"{name}.yaml").read_text()
    header = text.split("\nmodel:")[0]
    assert "Where the numbers come from" in header and "model.path" in header
    cfg = load_config(CONFIGS / "models" / f"{name}.yaml")
    assert cfg.train.lr == 1e-6 and cfg.model.gradient_checkpointing and cfg.prompt.show_admissible
    assert cfg.model.dtype == "float32" and cfg.model.vllm.dtype == "bfloat16"
    assert 2 <= cfg.prompt.memory_turns <= 3 and 256 <= cfg.rollout.max_tokens <= 512
    assert cfg.model.vllm.max_model_len >= cfg.prompt.max_prompt_tokens + cfg.rollout.max_tokens


def test_the_tiny_preset_names_what_household_uses():
    household = to_dict(load_config(CONFIGS / "household.yaml"))
    assert to_dict(load_config([CONFIGS / "household.yaml", CONFIGS / "models" / "tiny.yaml"])) == household


def test_bfloat16_weights_lose_the_presets_learning_rate():
    """Why the presets keep the learner in float32: one AdamW step at lr 1e-6 changes every fp32
    weight but only the bf16 weights near zero (the rest round back to their old value)."""
    changed = {}
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        layer = torch.nn.Linear(896, 896).to(dtype)  # Qwen2.5-0.5B's width, PyTorch's default init
        before = layer.weight.detach().clone()
        optimizer = torch.optim.AdamW([layer.weight], lr=1e-6, weight_decay=0.0)
        layer.weight.grad = torch.randn(896, 896).to(dtype)
        optimizer.step()
        changed[dtype] = float((layer.weight != before).float().mean())
    assert changed[torch.float32] == 1.0
    assert changed[torch.bfloat16] < 0.05


class Started(Exception):
    """Raised in place of training: the command got as far as starting it."""


@pytest.fixture
def started(monkeypatch):
    from agentropy.training import trainer

    def record(cfg, resume=False):
        raise Started(cfg)

    monkeypatch.setattr(trainer, "train", record)


def test_the_readme_command_composes_three_files_and_an_override(started, tmp_path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    with pytest.raises(Started) as run:
        cli.main(["train", "configs/household.yaml", "configs/models/qwen2.5-0.5b.yaml", "configs/strategies/epo.yaml",
                  f"model.path={tmp_path}", f"run.root={tmp_path}"])
    cfg = run.value.args[0]
    assert (cfg.model.path, cfg.model.backend, cfg.train.lr, cfg.rollout.max_tokens) == (str(tmp_path), "vllm", 1e-6, 512)
    assert cfg.strategy.epo.enabled and cfg.run.name == "household"


def test_a_problem_in_a_composed_file_names_that_file(started, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.001\n")
    (tmp_path / "model.yaml").write_text("train:\n  lrr: 0.1\nsft:\n  lr: -1\n")
    assert cli.main(["train", "base.yaml", "model.yaml"]) == 2
    assert capsys.readouterr().err == ("model.yaml: train.lrr: unknown field (did you mean 'lr'?)\n"
                                       "model.yaml: sft.lr: must be > 0, got -1.0\n")
    with pytest.raises(ConfigError) as err:
        load_config([tmp_path / "base.yaml", tmp_path / "base.yaml"], ["train.lr=-2"])
    assert str(err.value) == "override 'train.lr=-2': train.lr: must be > 0, got -2.0"


def test_a_file_after_an_override_is_refused(started, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("{}\n")
    (tmp_path / "b.yaml").write_text("{}\n")
    assert cli.main(["train", "a.yaml", "train.lr=0.1", "b.yaml"]) == 2
    assert capsys.readouterr().err == ("agentropy train: config file b.yaml comes after the override train.lr=0.1; "
                                       "put every file before the key.sub=value overrides\n")


def test_gradient_checkpointing_is_switched_on_and_changes_no_gradient(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "agents"))
    from tiny_lm import tiny_model_and_tokenizer

    from agentropy.training.config import ModelConfig
    from agentropy.training.model_setup import load_policy

    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.tensor([tokenizer.encode("open fridge 1 take apple 1")])
    grads = {}
    for on in (False, True):
        policy, _ = load_policy(ModelConfig(path=str(tmp_path), device="cpu", gradient_checkpointing=on),
                                  env_id="agentropy/Household-v0")
        assert policy.is_gradient_checkpointing == on and not policy.training
        policy.train()
        policy(input_ids=ids, labels=ids).loss.backward()
        grads[on] = policy.model.layers[0].mlp.up_proj.weight.grad
    assert torch.allclose(grads[True], grads[False], atol=1e-6)


@pytest.mark.parametrize("name", REAL)
def test_gpu_presets_let_fp32_matmuls_use_tf32_and_the_default_does_not(name):
    assert load_config(CONFIGS / "models" / f"{name}.yaml").model.tf32 is True
    assert load_config(CONFIGS / "models" / "tiny.yaml").model.tf32 is False
    assert load_config(CONFIGS / "quickstart.yaml").model.tf32 is False


def test_tf32_sets_cuda_matmul_precision_and_leaves_cpu_runs_alone():
    from agentropy.training.model_setup import set_matmul_precision

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        set_matmul_precision(True, "cpu")  # a CPU run stays bit-identical whatever the flag says
        assert torch.get_float32_matmul_precision() == "highest"
        set_matmul_precision(True, torch.device("cuda"))  # the setting needs no GPU to be read back
        assert torch.get_float32_matmul_precision() == "high"
        set_matmul_precision(False, "cuda:0")  # the config says fp32: an earlier setting is undone
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_tf32_is_a_boolean_named_when_wrong():
    with pytest.raises(ConfigError, match="model.tf32"):
        load_config(CONFIGS / "household.yaml", ["model.tf32=sometimes"])


def test_vllm_settings_reach_the_engine():
    from agentropy.training.model_setup import vllm_engine_kwargs

    cfg = load_config(CONFIGS / "models" / "qwen2.5-1.5b.yaml")
    assert vllm_engine_kwargs(cfg.model.vllm) == {"gpu_memory_utilization": 0.4, "top_logprobs": 20,
                                                  "enforce_eager": False, "dtype": "bfloat16", "max_model_len": 3072}
    assert "max_model_len" not in vllm_engine_kwargs(load_config(None).model.vllm)  # 0: the checkpoint's own
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "models" / "qwen2.5-1.5b.yaml", ["rollout.max_tokens=2048"])
    assert str(err.value).endswith("qwen2.5-1.5b.yaml + overrides: model.vllm.max_model_len: "
                                   "must cover prompt.max_prompt_tokens + rollout.max_tokens (4096), got 3072")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.vllm.gpu_memory_utilization=1.5"])
    assert str(err.value) == ("override 'model.vllm.gpu_memory_utilization=1.5': model.vllm.gpu_memory_utilization: "
                              "must be in (0, 1], got 1.5")
