"""Does a Search-v0 policy copy? Held-out success plus one copy rate per tool call.

A Search-v0 episode can only be won by copying unseen names (test-split entities are disjoint
from train): the title from the question into ``<search>``, a doc id from the results into
``<open>``, the answer entity from the article into ``<answer>``. Success alone cannot tell
which of the three a tiny model has not learned yet, so this evaluates a policy greedily on
the config's fixed held-out tasks and reports, over episodes:

* ``query_is_title``: the first call is ``<search>`` with exactly the start entity's title;
* ``open_is_gold``: the episode opened the first article of the question's chain;
* ``open_is_shown``: every ``<open>`` named an id shown in an earlier search result (a copy,
  right or wrong, rather than an invented id);
* ``answer_in_article``: the answer (normalised) occurs in an article the episode opened;
* ``answered``, ``success``.

    python benchmarks/search_copy.py --config configs/search.yaml --model RUN/sft_model [--episodes 64] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import re

from agentropy.envs.search.env import SearchEnv
from agentropy.envs.search.protocol import parse_action
from agentropy.envs.search.questions import normalize_answer
from agentropy.training.config import load_config
from agentropy.training.evaluation import evaluate_policy
from agentropy.training.model_setup import build_backend, load_policy
from agentropy.training.trajectory import Trajectory

_SHOWN_ID = re.compile(r"^\d+\. \[([^\]]+)\]", re.MULTILINE)


def _calls(traj: Trajectory) -> list[tuple[str, str]]:
    """(tool, argument) of every well-formed call of the episode, in order."""
    calls = []
    for step in traj.steps:
        call = parse_action(step.action)
        if call.valid:
            calls.append((call.tool, call.argument))
    return calls


def episode_copy_record(traj: Trajectory, env: SearchEnv) -> dict[str, float]:
    """The copy checks of one episode, replayed against the env's own question and world."""
    info = traj.steps[0].info if traj.steps else {}
    question = env.questions(info.get("split", "test"))[int(info.get("task_id", 0))]
    title = env.world.by_id[question.chain[0]].title
    calls = _calls(traj)
    shown: set[str] = set()
    opened: list[str] = []
    all_opens_shown = True
    for step in traj.steps:
        shown.update(_SHOWN_ID.findall(step.anchor_obs))  # the observation this action answered
        call = parse_action(step.action)
        if call.valid and call.tool == "open":
            doc_id = call.argument.strip("[]\"'` ")
            opened.append(doc_id)
            all_opens_shown &= doc_id in shown
    answers = [arg for tool, arg in calls if tool == "answer"]
    texts = [normalize_answer(env.world.by_id[d].title + " " + _article(env, d)) for d in opened if d in env.world.by_id]
    answer = normalize_answer(answers[0]) if answers else ""
    return {
        "query_is_title": float(bool(calls) and calls[0] == ("search", title)),
        "open_is_gold": float(question.chain[0] in opened),
        "open_is_shown": float(bool(opened) and all_opens_shown),
        "answer_in_article": float(bool(answer) and any(f" {answer} " in f" {t} " for t in texts)),
        "answered": float(bool(answers)),
        "success": float(traj.won),
    }


def _article(env: SearchEnv, doc_id: str) -> str:
    doc = env.client.open(doc_id)
    return doc.text if doc is not None else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/search.yaml")
    parser.add_argument("--model", required=True, help="policy folder (an SFT or RL checkpoint)")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--show", type=int, default=3, help="print the calls of this many episodes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = ["run.progress=false", "run.tensorboard=false", f"model.path={args.model}",
                 f"eval.episodes={args.episodes}", *args.overrides]
    cfg = load_config(args.config, overrides)
    model, tokenizer = load_policy(cfg.model, env_id=cfg.env.id)
    backend = build_backend(cfg.model, model, tokenizer, env_id=cfg.env.id)
    report, trajectories = evaluate_policy(backend, tokenizer, cfg, return_trajectories=True)
    env = SearchEnv(**cfg.env.kwargs)
    try:
        records = [episode_copy_record(t, env) for t in trajectories]
    finally:
        env.close()
    for traj in trajectories[: args.show]:
        print(traj.task, "->", [s.action for s in traj.steps])
    summary = {k: sum(r[k] for r in records) / len(records) for k in records[0]}
    print(json.dumps({"episodes": len(records), **{k: round(v, 3) for k, v in summary.items()}}))


if __name__ == "__main__":
    main()
