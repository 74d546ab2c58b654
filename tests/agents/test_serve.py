"""``agentropy serve-model``'s server: the OpenAI completions API over the hf backend, in a thread."""

from __future__ import annotations

import math
import threading

import httpx
import pytest
import torch
from tiny_lm import tiny_model_and_tokenizer  # noqa: E402

from agentropy.agents.backends.base import SamplingParams
from agentropy.agents.backends.hf import HFBackend, token_logprobs_and_entropy
from agentropy.agents.serve import ServedModel, make_server, server_url


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    model, tokenizer = tiny_model_and_tokenizer()
    served = ServedModel(HFBackend(model, tokenizer), tokenizer, name="tiny", max_model_len=256)
    server = make_server(served, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with httpx.Client(base_url=server_url(server), timeout=30) as client:
        yield served, client
    server.shutdown()
    server.server_close()


def test_health_and_models_list_the_served_name(served):
    _, client = served
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    health = client.get(f"{root}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    models = client.get("/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 256


def test_token_id_completion_matches_hf_backend_and_teacher_forcing(served):
    served_model, client = served
    tokenizer, model = served_model.tokenizer, served_model.backend.model
    prompt = tokenizer("Your task is to: put a clean apple in fridge.")["input_ids"]
    body = {
        "model": "tiny",
        "prompt": prompt,
        "n": 2,
        "temperature": 0.8,
        "max_tokens": 12,
        "seed": 3,
        "logprobs": 5,
        "return_tokens_as_token_ids": True,
    }
    answer = client.post("/completions", json=body).json()
    direct = served_model.backend.generate(
        [prompt], SamplingParams(n=2, temperature=0.8, max_tokens=12, seed=3)
    )
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for choice, ref in zip(answer["choices"], direct, strict=True):
        lp = choice["logprobs"]
        ids = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
        assert ids == ref.token_ids
        assert lp["token_logprobs"] == pytest.approx(ref.logprobs, abs=1e-6)
        assert choice["finish_reason"] == ref.finish_reason
        assert choice["text"] == ref.text
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids[:-1]])).logits[0, len(prompt) - 1 :]
        tf_logprobs, _ = token_logprobs_and_entropy(logits, torch.tensor(ids), 0.8)
        assert lp["token_logprobs"] == pytest.approx(tf_logprobs.tolist(), abs=1e-4)
        for token, token_logprob, top in zip(
            lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
        ):
            assert 5 <= len(top) <= 6  # top-5, plus the sampled token when it is not among them
            assert top[token] == token_logprob
            assert all(k.startswith("token_id:") for k in top)
            ranked = sorted(top.values(), reverse=True)
            # the top-5 are the 5 largest log-probs of softmax(z/T): their mass is at most 1
            assert sum(math.exp(v) for v in ranked[:5]) <= 1 + 1e-6
    assert answer["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": sum(len(c.token_ids) for c in direct),
        "total_tokens": len(prompt) + sum(len(c.token_ids) for c in direct),
    }


def test_text_prompts_are_prompt_major_and_tokens_are_text(served):
    _, client = served
    body = {"prompt": ["open fridge 1", "take apple 1"], "n": 2, "max_tokens": 4, "seed": 0, "logprobs": 0}
    answer = client.post("/completions", json=body).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    for choice in answer["choices"]:
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 4
        assert not any(t.startswith("token_id:") for t in lp["tokens"])
        assert [len(top) for top in lp["top_logprobs"]] == [1, 1, 1, 1]  # logprobs=0: the sampled token only
        assert lp["text_offset"][0] == 0


def test_without_logprobs_field_choices_carry_none(served):
    _, client = served
    answer = client.post("/completions", json={"prompt": [5, 6, 7], "max_tokens": 3, "seed": 1}).json()
    assert answer["choices"][0]["logprobs"] is None
    assert answer["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other", "prompt": [1]}, 404, "model"),
        ({"prompt": [1], "n": 0}, 400, "n"),
        ({"prompt": [1], "temperature": -1}, 400, "temperature"),
        ({"prompt": [1], "logprobs": 21}, 400, "logprobs"),
        ({"prompt": [1], "stream": True}, 400, "stream"),
        ({"prompt": [1], "max_tokens": 300}, 400, "max_tokens"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": [1, 99999]}, 400, "prompt"),
        ({"prompt": [[1], {"a": 1}]}, 400, "prompt"),
        ({"max_tokens": 3}, 400, "prompt"),
        ({"prompt": [1], "stop": [""]}, 400, "stop"),
    ],
)
def test_bad_requests_get_openai_errors_naming_the_field(served, body, status, param):
    _, client = served
    response = client.post("/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == status
    assert param in error["message"] or status == 404


def test_bad_json_and_unknown_routes(served):
    _, client = served
    response = client.post("/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    assert client.post("/chat/completions", json={}).status_code == 404
    assert client.get("/nothing").status_code == 404
