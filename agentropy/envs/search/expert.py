"""The oracle behind ``info["expert_action"]``: read the chain's articles hop by hop, then answer.

For each article ``e0 .. e(h-1)`` of the question's chain, in order: search for its title,
then open it (the id it learnt from the results), which reveals the next entity; when all
are read, answer. ``2h + 1`` actions, at most 9 for four hops, within the default 10 steps.
The oracle reads the episode's progress, so it picks up wherever an agent left off.
If a search for a title came back without the article (BM25 ranks a near-namesake above
it), the oracle opens the id it knows instead of searching forever.
"""

from __future__ import annotations

from agentropy.envs.search.questions import Question
from agentropy.envs.search.world import World


def expert_action(world: World, question: Question, opened: set[str], seen: set[str], searched: set[str]) -> str:
    """Next oracle action given the doc ids opened, the ids seen in results, and the queries made."""
    for doc_id in question.chain:
        if doc_id in opened:
            continue
        title = world.by_id[doc_id].title
        if doc_id in seen or title in searched:
            return f"<open>{doc_id}</open>"
        return f"<search>{title}</search>"
    return f"<answer>{question.answer}</answer>"
