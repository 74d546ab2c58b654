"""Multi-hop questions over the fictional world, and how answers are scored.

A question of ``h`` hops is a chain ``e0 -r1-> e1 -r2-> ... -rh-> answer``: it names the
start entity ``e0`` and asks for the end of the chain, nesting one noun phrase per hop
("In which city was the founder of the publisher of 'The Glass Tide' born?"). Answering
needs the articles of ``e0 .. e(h-1)``. Chains never visit an entity twice, and relations
are functions, so the answer is unique. ``e0`` is a person, organisation or work of the
question's split (see :mod:`.world` for why that makes train and test disjoint).

Scoring follows SQuAD: answers are compared after :func:`normalize_answer` (lowercase, no
punctuation, no articles ``a an the``, single spaces); exact match against the gold answer
or any alias is 1.0; token F1 is the harmonic mean of token precision and recall, maximised
over the gold answer and its aliases.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from agentropy.envs.search.world import RELATION_KINDS, SPLITS, Entity, World

#: relation -> (noun phrase for an inner hop, question for the last hop); ``{x}`` is the subject.
RELATION_TEXT: dict[str, tuple[str, str]] = {
    "born_in": ("the city where {x} was born", "In which city was {x} born?"),
    "employer": ("the organisation that {x} worked for", "Which organisation did {x} work for?"),
    "spouse": ("the spouse of {x}", "Who was the spouse of {x}?"),
    "birth_year": ("", "In which year was {x} born?"),
    "founder": ("the founder of {x}", "Who founded {x}?"),
    "headquarters": ("the city where {x} is based", "In which city is {x} based?"),
    "founding_year": ("", "In which year was {x} founded?"),
    "creator": ("the creator of {x}", "Who created {x}?"),
    "publisher": ("the organisation that published {x}", "Which organisation published {x}?"),
    "setting": ("the city where {x} is set", "In which city is {x} set?"),
    "release_year": ("", "In which year did {x} first appear?"),
    "country": ("the country that {x} lies in", "In which country does {x} lie?"),
    "capital": ("the capital of {x}", "What is the capital of {x}?"),
}

_START_KINDS = ("person", "org", "work")


@dataclass(frozen=True)
class Question:
    """One task: the question text, its gold answer, and the chain of articles behind it."""

    split: str
    task_id: int
    text: str
    answer: str
    aliases: tuple[str, ...]  # other strings accepted as the answer
    chain: tuple[str, ...]  # doc ids of e0 .. e(h-1), the articles the answer needs
    relations: tuple[str, ...]  # r1 .. rh

    @property
    def hops(self) -> int:
        return len(self.relations)


def _subject(entity: Entity) -> str:
    if entity.kind == "work":
        return f"'{entity.title}'"
    if entity.kind == "org":
        return f"the {entity.title}"
    return entity.title


def question_text(world: World, start: Entity, relations: tuple[str, ...]) -> str:
    """Nest one noun phrase per inner hop around the start entity, then ask the last hop."""
    x = _subject(start)
    for relation in relations[:-1]:
        x = RELATION_TEXT[relation][0].format(x=x)
    text = RELATION_TEXT[relations[-1]][1].format(x=x)
    return text[0].upper() + text[1:]


def _walk(world: World, rng: random.Random, start: Entity, hops: int) -> tuple[list[str], list[str]] | None:
    """A random chain of ``hops`` relations from ``start`` that never revisits an entity."""
    chain, relations = [start.id], []
    current = start
    for hop in range(hops):
        last = hop == hops - 1
        options = [
            r for r, target in sorted(current.relations.items())
            if target not in chain and (last or RELATION_KINDS[r][1] != "year")
        ]
        if not options:
            return None
        relation = rng.choice(options)
        relations.append(relation)
        if not last:
            current = world.by_id[current.relations[relation]]
            chain.append(current.id)
    return chain, relations


def make_question(world: World, rng: random.Random, split: str, task_id: int, min_hops: int,
                  max_hops: int) -> Question | None:
    """A random question of ``split`` drawn with ``rng``, or None when its random walk dead-ends."""
    hops = rng.randint(min_hops, max_hops)
    start = rng.choice(_split_pool(world, rng.choice(_START_KINDS), split))
    walk = _walk(world, rng, start, hops)
    if walk is None:
        return None
    chain, relations = walk
    value = world.by_id[chain[-1]].relations[relations[-1]]
    answer_entity = world.by_id.get(value)
    answer = answer_entity.title if answer_entity else value
    aliases = answer_entity.aliases if answer_entity else ()
    text = question_text(world, start, tuple(relations))
    return Question(split, task_id, text, answer, aliases, tuple(chain), tuple(relations))


@lru_cache(maxsize=64)
def _split_pool(world: World, kind: str, split: str) -> list[Entity]:
    return [e for e in world.entities if e.kind == kind and e.split == split]


#: stop drawing after this many draws per question asked for (a small world runs out of new ones)
_DRAWS_PER_QUESTION = 3


@lru_cache(maxsize=16)
def question_set(world: World, split: str, n: int, min_hops: int = 1, max_hops: int = 4) -> tuple[Question, ...]:
    """The first ``n`` distinct questions of ``split`` (fewer if the world cannot make ``n``).

    Drawn in sequence from one RNG seeded by the world seed, the split and the hop range, so
    a task id names the same question in every process (and the first ``m`` questions of a
    set of ``n > m`` are the set of ``m``). Cached per process.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 1 <= min_hops <= max_hops <= 4:
        raise ValueError(f"need 1 <= min_hops <= max_hops <= 4, got min_hops={min_hops}, max_hops={max_hops}")
    rng = random.Random(f"agentropy-search-questions:{world.config.seed}:{split}:{min_hops}:{max_hops}")
    questions: list[Question] = []
    seen: set[str] = set()
    for _ in range(_DRAWS_PER_QUESTION * n + 1000):
        if len(questions) == n:
            break
        q = make_question(world, rng, split, len(questions), min_hops, max_hops)
        if q is not None and q.text not in seen:
            seen.add(q.text)
            questions.append(q)
    return tuple(questions)


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}‘’“”–—…]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: tuple[str, ...] | list[str]) -> bool:
    """Whether the normalised prediction equals any normalised gold string."""
    p = normalize_answer(prediction)
    return any(p == normalize_answer(g) for g in golds)


def token_f1(prediction: str, golds: tuple[str, ...] | list[str]) -> float:
    """Max over golds of F1 = 2PR / (P + R) on normalised tokens (P, R: shared-token precision, recall)."""
    p_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        g_tokens = normalize_answer(gold).split()
        common = sum((Counter(p_tokens) & Counter(g_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(p_tokens), common / len(g_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best
