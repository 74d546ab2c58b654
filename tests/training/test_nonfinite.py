"""NaN/inf injection points: each is refused before an optimizer step or a write, with one line
naming the path, the iteration and the dump file. (RL mini-batch rollback and the SPEAR replay
check live in the policy update and are tested with it.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))
from tiny_lm import tiny_model_and_tokenizer  # noqa: E402

from agentropy.agents.backends.base import SamplingParams  # noqa: E402
from agentropy.agents.backends.hf import HFBackend  # noqa: E402
from agentropy.nonfinite import NonFiniteError, require_finite  # noqa: E402
from agentropy.training import checkpoint as ckpt  # noqa: E402
from agentropy.training import sft  # noqa: E402
from agentropy.training.snapshot import TrainingSnapshot  # noqa: E402


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def model_and_pairs():
    model, tokenizer = tiny_model_and_tokenizer()
    ids = tokenizer.encode("go north", add_special_tokens=False)
    pairs = [(ids, [*ids, tokenizer.eos_token_id])] * 4
    return model, tokenizer, pairs


def test_sft_nan_loss_is_refused_before_the_step_and_dumped(model_and_pairs, tmp_path, monkeypatch):
    model, tokenizer, pairs = model_and_pairs
    calls = []
    real = sft.sft_loss

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    cfg = sft.SFTConfig(epochs=1, batch_size=2)
    before = None

    real_step = torch.optim.AdamW.step

    def record(self, *a, **k):  # weights after the last good step
        nonlocal before
        out = real_step(self, *a, **k)
        before = _weights(model)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    with pytest.raises(NonFiniteError) as err:
        sft.train_sft(model, tokenizer, pairs, cfg, dump_dir=tmp_path)
    dump = tmp_path / "nonfinite_sft_step_000001.json"
    assert str(err.value) == f"non-finite loss (nan) in sft at step 1; dumped to {dump}"
    assert _same(before, _weights(model))  # the poisoned batch never stepped
    assert len(json.loads(dump.read_text())) == 2


def test_sft_inf_gradient_is_refused_before_the_step(model_and_pairs, monkeypatch):
    model, tokenizer, pairs = model_and_pairs
    start = _weights(model)
    param = next(model.parameters())
    param.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteError) as err:
        sft.train_sft(model, tokenizer, pairs, sft.SFTConfig(epochs=1, batch_size=4))
    assert str(err.value).startswith("non-finite gradient norm (") and str(err.value).endswith(") in sft at step 0")
    assert _same(start, _weights(model))


def test_sampler_names_nan_logits(model_and_pairs):
    model, tokenizer, pairs = model_and_pairs
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("nan"))
    backend = HFBackend(model, tokenizer)
    with pytest.raises(NonFiniteError) as err:
        backend.generate([pairs[0][0]], SamplingParams(n=1, temperature=1.0, max_tokens=4, seed=0))
    assert str(err.value) == "non-finite logits (NaN) at generation step 0 in rows [0] (sampler)"


def test_checkpoint_refuses_nonfinite_tensors_and_writes_nothing(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(NonFiniteError) as err:
        ckpt.save_checkpoint(tmp_path, 4, model, optimizer, None, {})
    assert str(err.value) == "refusing to write a checkpoint with non-finite tensors: bias (iteration 4)"
    assert not (tmp_path / "checkpoints" / "iter_000004").exists()
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_snapshot_restores_weights_and_optimizer_after_a_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    snap = TrainingSnapshot.take(model, optimizer)
    start, moments = _weights(model), optimizer.state_dict()["state"][0]["exp_avg"].clone()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert not _same(start, _weights(model))
    snap.restore(model, optimizer)
    assert _same(start, _weights(model))
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], moments)
    assert float(optimizer.state_dict()["state"][0]["step"]) == 1.0


def test_require_finite_names_path_iteration_and_step():
    require_finite(torch.tensor(1.5), "loss", where="replay", iteration=3)
    with pytest.raises(NonFiniteError) as err:
        require_finite(torch.tensor(float("nan")), "loss", where="replay", iteration=3, step=2)
    assert str(err.value) == "non-finite loss (nan) in replay at step 2 (iteration 3)"
    err.value.dump = Path("runs/x/nonfinite_batch_iter_000003.jsonl")
    assert str(err.value).endswith("; dumped to runs/x/nonfinite_batch_iter_000003.jsonl")


def test_trainer_names_iteration_path_and_dump_for_sampler_nan(tmp_path):
    from agentropy.training.trainer import _dump_weight_report, _with_dump

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    exc = NonFiniteError("non-finite logits (NaN) at generation step 0 in rows [0]", where="sampler")
    dump = tmp_path / "nonfinite_sampler_iter_000007.json"
    out = _with_dump(exc, 7, "rollout", dump, lambda path: _dump_weight_report(model, path), main=True)
    assert str(out) == (f"non-finite logits (NaN) at generation step 0 in rows [0] (sampler, iteration 7); "
                        f"dumped to {dump}")
    assert json.loads(dump.read_text()) == {"nonfinite_parameters": ["weight"]}
