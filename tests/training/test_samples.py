"""steps_to_batch: the response mask covers exactly the agent's reply tokens."""

from __future__ import annotations

import pytest
import torch

from agentropy.agents.prompts import PromptConfig, Turn, build_prompt_ids
from agentropy.training.samples import steps_of, steps_to_batch
from agentropy.training.trajectory import Step, Trajectory


@pytest.fixture(scope="module")
def tokenizer():
    from agentropy.agents.tiny import train_tokenizer

    corpus = ["You are in the middle of a room.", "Your task is to: put a mug in the sink.",
              "<action>go to sink 1</action>", "Admissible actions:\ngo to sink 1\nlook", "You see a mug."] * 4
    return train_tokenizer(corpus, vocab_size=320)


def _step(prompt, reply, turn=0, traj="t0", group="g0", info=None):
    return Step(turn=turn, prompt_ids=list(prompt), response_ids=list(reply),
                logprobs=[-0.1 * (i + 1) for i in range(len(reply))], entropy=[0.5 + i for i in range(len(reply))],
                reward=0.0, terminated=False, truncated=False, anchor_obs="obs", action="a", group_id=group,
                traj_id=traj, info=info or {})


def test_mask_covers_exactly_the_reply_of_a_rendered_prompt(tokenizer):
    cfg = PromptConfig()
    history = [Turn("You are in the middle of a room.", "go to sink 1"), Turn("You see a mug.", "look")]
    prompts = [
        build_prompt_ids(tokenizer, cfg, "put a mug in the sink", history, "You see a mug.", ["go to sink 1", "look"]),
        build_prompt_ids(tokenizer, cfg, "put a mug in the sink", [], "You are in the middle of a room.", ["look"]),
    ]
    reply_text = "I should look. <action>look</action>"
    reply = tokenizer.encode(reply_text, add_special_tokens=False) + [tokenizer.eos_token_id]
    steps = [_step(prompts[0], reply, turn=2), _step(prompts[1], reply[:3], turn=0, traj="t1")]
    pad = tokenizer.pad_token_id
    b = steps_to_batch(steps, pad)
    width = max(len(p) for p in prompts) + len(reply)
    assert b["input_ids"].shape == b["response_mask"].shape == b["old_logprobs"].shape == (2, width)
    for i, (s, p) in enumerate(zip(steps, prompts, strict=True)):
        ids, mask, attn = b["input_ids"][i], b["response_mask"][i].bool(), b["attention_mask"][i].bool()
        assert ids[mask].tolist() == s.response_ids
        assert ids[attn & ~mask].tolist() == p  # everything attended and unmasked is the prompt
        assert (ids[~attn] == pad).all() and not mask[~attn].any()
        start = len(p)
        assert mask.nonzero().flatten().tolist() == list(range(start, start + len(s.response_ids)))
        # The chat template's "assistant\n" header is prompt, never trained.
        assert tokenizer.decode(ids[:start].tolist()).endswith("<|im_start|>assistant\n")
        assert b["old_logprobs"][i][mask].tolist() == pytest.approx(s.logprobs)
        assert b["old_entropy"][i][mask].tolist() == pytest.approx(s.entropy)
        assert (b["old_logprobs"][i][~mask] == 0).all() and (b["old_entropy"][i][~mask] == 0).all()
        assert b["position_ids"][i].tolist() == list(range(width))
    assert tokenizer.decode(b["input_ids"][0][b["response_mask"][0].bool()].tolist(), skip_special_tokens=True) == reply_text
    assert b["prompt_lengths"].tolist() == [len(p) for p in prompts]
    assert b["response_lengths"].tolist() == [len(reply), 3] and b["turn"].tolist() == [2, 0]


def test_ids_flags_and_empty_replies():
    steps = [
        _step([5, 6], [7], traj="a", group="g"),
        _step([5], [], traj="b", group="g"),
        _step([1, 2, 3], [4, 4], traj="c", group="h", info={"branch_prefix": True}),
        _step([1], [9], traj="a", group="g", turn=1),
    ]
    b = steps_to_batch(steps, pad_id=0)
    assert b["group_index"].tolist() == [0, 0, 1, 0] and b["group_ids"] == ["g", "h"]
    assert b["traj_index"].tolist() == [0, 1, 2, 0] and b["traj_ids"] == ["a", "b", "c"]
    assert b["branch_prefix"].tolist() == [False, False, True, False]
    assert b["response_mask"][1].sum() == 0 and b["attention_mask"][1].tolist() == [1, 0, 0, 0, 0]
    assert b["input_ids"].tolist()[2] == [1, 2, 3, 4, 4]
    assert steps_to_batch([], pad_id=0)["input_ids"].shape == (0, 0)
    bad = _step([1], [2, 3])
    bad.logprobs = [-1.0]
    with pytest.raises(ValueError, match="steps\\[0\\].*2 response ids, 1 logprobs"):
        steps_to_batch([bad], pad_id=0)


def test_steps_of_skips_probe_trajectories():
    trajs = [Trajectory("a", "g", "x", 1, steps=[_step([1], [2])]),
             Trajectory("p", "g-probe", "x", 1, steps=[_step([1], [3])], kind="probe")]
    assert [s.response_ids for s in steps_of(trajs)] == [[2]]
    assert len(steps_of(trajs, include_probes=True)) == 2


def test_teacher_forced_logprobs_match_the_sampler(tmp_path):
    """The layout lines up with a forward pass: log p(token j | logits at j-1) equals the
    behaviour log-prob the hf backend reported, so the first ratio is 1."""
    from agentropy.agents.backends.base import SamplingParams
    from agentropy.agents.backends.hf import HFBackend
    from agentropy.agents.tiny import TinyModelConfig, build_tiny_model, load_model_and_tokenizer

    torch.set_num_threads(1)
    tiny = TinyModelConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, episodes_per_env=2, max_episode_steps=5)
    model, tok = load_model_and_tokenizer(build_tiny_model(tmp_path / "m", cfg=tiny))
    prompts = [build_prompt_ids(tok, PromptConfig(), "put a mug in the sink", [], "You are in a room.", ["look"]),
               build_prompt_ids(tok, PromptConfig(), "heat an egg", [Turn("A.", "look")], "B.", [])]
    comps = HFBackend(model, tok).generate(prompts, SamplingParams(temperature=1.0, max_tokens=6, seed=3))
    steps = [Step(turn=0, prompt_ids=p, response_ids=c.token_ids, logprobs=c.logprobs, entropy=c.entropy,
                  reward=0.0, terminated=False, truncated=False, anchor_obs="", action="", group_id="g",
                  traj_id=str(i)) for i, (p, c) in enumerate(zip(prompts, comps, strict=True))]
    b = steps_to_batch(steps, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    mask = b["response_mask"][:, 1:].bool()
    assert torch.allclose(logp[mask], b["old_logprobs"][:, 1:][mask], atol=1e-4)
