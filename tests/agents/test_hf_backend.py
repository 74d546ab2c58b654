"""The hf backend: what it reports per token equals a teacher-forced forward pass."""

import pytest
import torch

from agentropy.agents.backends.base import GenerationBackend, SamplingParams
from agentropy.agents.backends.hf import HFBackend, token_logprobs_and_entropy
from agentropy.agents.tiny import TinyModelConfig, build_model, train_tokenizer

SMALL = TinyModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512)
WORDS = "go to open close take put cabinet drawer fridge apple mug in on from the a you see nothing happens".split()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.set_num_threads(1)
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + f" {i}." for i in range(300)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    model = build_model(tokenizer, SMALL, seed=0)
    with torch.no_grad():  # sharper than the 0.02 init, so distributions and entropies differ per position
        model.model.embed_tokens.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tok = model_and_tokenizer
    texts = ["go to cabinet 1", "you see a mug 2 and an apple 3 on the drawer 4.", "a", "open the fridge 1 now"]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def _teacher_forced(model, prompt, reply, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1]
    return token_logprobs_and_entropy(logits, torch.tensor(reply), temperature)


def _assert_parity(model, prompts, completions, n, temperature):
    assert len(completions) == len(prompts) * n
    for i, c in enumerate(completions):
        logprobs, entropy = _teacher_forced(model, prompts[i // n], c.token_ids, temperature)
        assert torch.allclose(torch.tensor(c.logprobs), logprobs, atol=1e-4, rtol=0)
        assert torch.allclose(torch.tensor(c.entropy), entropy, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.5, 1.0)])
def test_logprob_and_entropy_match_teacher_forcing_with_left_padding(model_and_tokenizer, prompts, temperature, top_p):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok)
    params = SamplingParams(n=3, temperature=temperature, top_p=top_p, max_tokens=12, seed=0)
    completions = backend.generate(prompts, params)
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    _assert_parity(model, prompts, completions, 3, temperature)
    entropies = [h for c in completions for h in c.entropy]
    assert max(entropies) - min(entropies) > 0.1  # a non-trivial check: distributions differ
    for c in completions:
        assert c.finish_reason in ("stop", "length") and not c.entropy_is_estimate
        assert all(0 <= h <= torch.log(torch.tensor(float(len(tok)))) + 1e-4 for h in c.entropy)


def test_finished_rows_leave_the_batch_without_changing_results(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    eos = list(range(0, len(tok), 5))  # a fifth of the vocabulary ends a reply: lengths vary a lot
    backend = HFBackend(model, tok, eos_token_ids=eos)
    completions = backend.generate(prompts, SamplingParams(n=4, max_tokens=40, seed=3))
    lengths = [len(c.token_ids) for c in completions]
    assert len(set(lengths)) > 3 and min(lengths) < 10
    _assert_parity(model, prompts, completions, 4, 1.0)
    for c in completions:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in eos and not set(c.token_ids[:-1]) & set(eos)
        else:
            assert len(c.token_ids) == 40 and not set(c.token_ids) & set(eos)


def test_greedy_takes_argmax_and_reports_temperature_one(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    completions = HFBackend(model, tok).generate(prompts, SamplingParams(n=2, temperature=0.0, max_tokens=8))
    _assert_parity(model, prompts, completions, 2, 1.0)
    for i, c in enumerate(completions):
        with torch.no_grad():
            logits = model(torch.tensor([prompts[i // 2] + c.token_ids])).logits[0, len(prompts[i // 2]) - 1 : -1]
        assert c.token_ids == logits.argmax(-1).tolist()
    assert completions[0].token_ids == completions[1].token_ids


def test_tiny_top_p_is_greedy_but_logprob_is_of_the_full_distribution(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok)
    greedy = backend.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6))
    nucleus = backend.generate(prompts, SamplingParams(temperature=0.8, top_p=1e-6, max_tokens=6, seed=5))
    assert [c.token_ids for c in nucleus] == [c.token_ids for c in greedy]
    _assert_parity(model, prompts, nucleus, 1, 0.8)
    assert all(lp < 0 for c in nucleus for lp in c.logprobs)


def test_same_seed_reproduces_and_other_seed_differs(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok)
    a, b, c = (backend.generate(prompts, SamplingParams(n=2, max_tokens=10, seed=s)) for s in (7, 7, 8))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_stop_string_ends_reply_at_the_token_that_completes_it(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok, eos_token_ids=())
    free = backend.generate(prompts, SamplingParams(n=2, max_tokens=30, seed=11))
    texts = [tok.decode(c.token_ids[1:]) for c in free]
    stop = max(set("".join(texts)), key=lambda ch: sum(ch in t for t in texts))  # in the most replies
    stopped = backend.generate(prompts, SamplingParams(n=2, max_tokens=30, seed=11, stop=(stop, "zzz")))
    assert sum(c.finish_reason == "stop" for c in stopped) >= len(stopped) // 2
    for f, s in zip(free, stopped, strict=True):
        k = len(s.token_ids)
        assert f.token_ids[:k] == s.token_ids  # same draws up to the stop
        if stop not in tok.decode(f.token_ids):
            assert s.finish_reason == "length" and k == 30 and "stop" not in s.extra
            continue
        assert s.finish_reason == "stop" and s.extra["stop"] == stop
        assert stop in tok.decode(s.token_ids) and stop not in tok.decode(s.token_ids[:-1])
        assert s.text.endswith(stop) and s.text.count(stop) == 1
    _assert_parity(model, prompts, stopped, 2, 1.0)


def test_max_batch_size_chunks_without_changing_greedy_output(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    params = SamplingParams(n=2, temperature=0.0, max_tokens=6)
    whole = HFBackend(model, tok).generate(prompts, params)
    chunked = HFBackend(model, tok, max_batch_size=2).generate(prompts, params)
    assert [c.token_ids for c in chunked] == [c.token_ids for c in whole]
    for a, b in zip(whole, chunked, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_sync_weights_samples_from_the_new_model_and_train_mode_is_kept(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok)
    params = SamplingParams(temperature=0.0, max_tokens=5)
    before = backend.generate(prompts, params)
    other = build_model(tok, SMALL, seed=2).train()
    backend.sync_weights(other)
    after = backend.generate(prompts, params)
    assert other.training  # sampling ran in eval mode, then the training mode came back
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    _assert_parity(other.eval(), prompts, after, 1, 1.0)


def test_protocol_text_and_bad_prompts(model_and_tokenizer, prompts):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok)
    assert isinstance(backend, GenerationBackend)
    (c,) = backend.generate(prompts[:1], SamplingParams(max_tokens=4, seed=0))
    assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    assert backend.generate([], SamplingParams()) == []
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        backend.generate([[1], []], SamplingParams())
    with pytest.raises(ValueError, match=r"prompts\[0\] has token ids outside"):
        backend.generate([[len(tok) + 5]], SamplingParams())


def test_sampler_draws_from_the_tempered_distribution_and_its_nucleus():
    from agentropy.agents.backends.hf import _sample

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logp = probs.log().expand(40_000, 4)
    uniform = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    full = torch.bincount(_sample(logp, 1.0, 1.0, uniform), minlength=4) / 40_000
    assert torch.allclose(full, probs, atol=0.01) and full[3] == 0
    # top_p = 0.6: keep 0.5 and 0.3 (0.5 alone is short of 0.6), renormalised to 0.625 / 0.375.
    nucleus = torch.bincount(_sample(logp, 1.0, 0.6, uniform), minlength=4) / 40_000
    assert torch.allclose(nucleus, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.01)
    assert nucleus[2] == nucleus[3] == 0
    edge = _sample(logp[:2], 1.0, 0.6, torch.tensor([0.0, 1.0 - 2**-24]))
    assert edge.tolist() == [0, 1]


@pytest.mark.parametrize("ends_in_space", [False, True])
def test_multi_token_stop_string_ends_at_its_first_completion(model_and_tokenizer, prompts, ends_in_space):
    model, tok = model_and_tokenizer
    backend = HFBackend(model, tok, eos_token_ids=())
    params = SamplingParams(n=3, temperature=1.5, max_tokens=25, seed=4)
    free = backend.generate(prompts, params)
    texts = [tok.decode(c.token_ids) for c in free]
    if ends_in_space:  # skips the vocabulary filter: "x " ending at a space inside some reply
        text = next(t for t in texts if " " in t[1:].replace("  ", ""))
        i = next(i for i in range(1, len(text)) if text[i] == " " and text[i - 1] != " ")
        stop = text[i - 1 : i + 1]
    else:  # two characters straddling the boundary between the 3rd and 4th token of a reply
        row = next(c.token_ids for c in free if "\ufffd" not in tok.decode(c.token_ids[:6]) and
                   tok.decode(c.token_ids[2:3]) and tok.decode(c.token_ids[3:4]))
        cut = len(tok.decode(row[:3]))
        stop = tok.decode(row)[cut - 1 : cut + 1]
    stopped = backend.generate(prompts, SamplingParams(**{**params.__dict__, "stop": (stop,)}))
    hits = 0
    for f, s in zip(free, stopped, strict=True):
        first = next((k for k in range(1, 26) if stop in tok.decode(f.token_ids[:k])), None)
        if first is None:
            assert s.finish_reason == "length" and s.token_ids == f.token_ids
        else:
            hits += 1
            assert s.finish_reason == "stop" and s.token_ids == f.token_ids[:first] and s.text.endswith(stop)
    assert hits >= 1


# Temperature, checked against numbers computed here rather than through token_logprobs_and_entropy
# (which shares `_log_softmax` with the sampler, so parity tests cannot see a wrong temperature).
# logits z = [2, 1, 0, -1]; tempered z' = z / T; log p = z' - logsumexp(z'); H = logsumexp(z') - sum p z'.
# T = 0.5: z' = [4, 2, 0, -2]; exp(z' - 4) = [1, 0.135335, 0.018316, 0.002479], sum 1.156130,
#   logsumexp = 4 + ln 1.156130 = 4 + 0.145078 = 4.145078; log p = [-0.145078, -2.145078, -4.145078, -6.145078];
#   p = [0.864955, 0.117059, 0.015842, 0.002144]; sum p z' = 3.459820 + 0.234118 + 0 - 0.004288 = 3.689650;
#   H = 4.145078 - 3.689650 = 0.455429.
# T = 2: z' = [1, 0.5, 0, -0.5]; exp(z' - 1) = [1, 0.606531, 0.367879, 0.223130], sum 2.197540,
#   logsumexp = 1 + ln 2.197540 = 1 + 0.787339 = 1.787339; log p = [-0.787339, -1.287339, -1.787339, -2.287339];
#   p = [0.455054, 0.276004, 0.167405, 0.101536]; sum p z' = 0.455054 + 0.138002 + 0 - 0.050768 = 0.542288;
#   H = 1.787339 - 0.542288 = 1.245051.
@pytest.mark.parametrize(
    ("temperature", "log_p", "entropy"),
    [
        (0.5, [-0.145078, -2.145078, -4.145078, -6.145078], 0.455429),
        (2.0, [-0.787339, -1.287339, -1.787339, -2.287339], 1.245051),
    ],
)
def test_logprob_and_entropy_at_temperature_equal_hand_values(temperature, log_p, entropy):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 4)
    lp, h = token_logprobs_and_entropy(logits, torch.tensor([0, 1, 2, 3]), temperature)
    assert lp.tolist() == pytest.approx(log_p, abs=2e-6)
    assert h.tolist() == pytest.approx([entropy] * 4, abs=2e-6)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_generate_draws_first_tokens_from_softmax_of_logits_over_temperature(model_and_tokenizer, temperature):
    """Frequencies of 20000 first tokens against softmax(z / T) of the model's own logits, written here
    with torch.log_softmax (not the backend's helper): a chi-square test at p = 0.001 with a fixed seed.
    The reported log-probs must be those same numbers. With T multiplied instead of divided, the
    T = 2 draws would come from softmax(2 z) (max prob 0.99 instead of 0.05 for this prompt), and
    the T = 0.5 draws from softmax(z / 2): measured, the statistic is then 3.5e5 (T = 2, 335 degrees
    of freedom) and 2.9e6 (T = 0.5, 4), against critical values of about 420 and 18."""
    from scipy.stats import chi2

    model, tok = model_and_tokenizer
    prompt = tok.encode("go to cabinet 1", add_special_tokens=False)
    with torch.no_grad():
        z = model(torch.tensor([prompt])).logits[0, -1].double()
    log_q = torch.log_softmax(z / temperature, dim=-1)
    draws = 20_000
    completions = HFBackend(model, tok, eos_token_ids=()).generate(
        [prompt], SamplingParams(n=draws, temperature=temperature, max_tokens=1, seed=123)
    )
    first = torch.tensor([c.token_ids[0] for c in completions])
    observed = torch.bincount(first, minlength=z.numel()).double()
    expected = log_q.exp() * draws
    big = expected >= 5  # cells with at least 5 expected draws; the rest pooled into one cell
    obs = torch.cat([observed[big], observed[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    if exp[-1] < 5:  # too small a pooled cell: merge it into the smallest kept cell
        smallest = int(exp[:-1].argmin())
        obs[smallest] += obs[-1]
        exp[smallest] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    statistic = float(((obs - exp) ** 2 / exp).sum())
    dof = obs.numel() - 1
    assert dof >= 3  # the test discriminates: several cells carry mass
    assert statistic < chi2.ppf(0.999, dof), (statistic, dof)
    reported = torch.tensor([c.logprobs[0] for c in completions], dtype=torch.float64)
    assert torch.allclose(reported, log_q[first], atol=1e-4, rtol=0)
