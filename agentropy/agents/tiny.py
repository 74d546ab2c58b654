"""The embedded default model, built offline: a BPE tokenizer trained on environment text and
a randomly initialised Qwen2 causal LM of a few million parameters.

No weights can be downloaded in the places agentropy must run (CI, an offline laptop), so the
default policy is made on the spot from the text the agent will see: expert and random
episodes of the registered envs (tasks, observations, actions, admissible lists) and the same
episodes rendered through the prompt template, ChatML markers included. Everything is saved
with ``save_pretrained`` and read back with ``AutoTokenizer`` / ``AutoModelForCausalLM``, so
the rest of the suite cannot tell the tiny model from a real checkpoint path such as
``Qwen/Qwen2.5-1.5B-Instruct``: :func:`load_model_and_tokenizer` takes either.

Tool-call tags that the envs' actions use (``<search>`` and ``</search>`` in
``agentropy/Search-v0``'s ``<search>query</search>``) become single, non-special added tokens,
so a call opens with one token and the text after it is tokenized as it would be on its own;
envs whose actions hold no tags (Household) get exactly the tokenizer they always had.

The tokenizer is byte-level BPE with exactly Qwen2's pipeline (NFC normalisation, Qwen2's
pre-tokenising regex, byte-level alphabet), so every string encodes without unknown tokens,
``decode(encode(s)) == s`` for NFC text (all env text), and ``AutoTokenizer`` -- which loads any
``qwen2`` folder as ``Qwen2Tokenizer`` and rebuilds that pipeline -- reproduces the trained
tokenizer token for token.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentropy.agents.prompts import PromptConfig, Turn, build_messages

DEFAULT_ENV_IDS: tuple[str, ...] = ("agentropy/Household-v0",)

#: ChatML markers (as Qwen2.5) plus a dedicated padding token.
IM_START, IM_END, END_OF_TEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (END_OF_TEXT, IM_START, IM_END, PAD)

#: ChatML, as Qwen2.5's template without tools: ``<|im_start|>role\ncontent<|im_end|>\n``.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: What the chat template writes around messages, repeated so that BPE (min frequency 2)
#: learns the role names as whole tokens.
CHAT_TEMPLATE_TEXTS: list[str] = [f"{IM_START}{role}\n" for role in ("system", "user", "assistant")] * 4

#: Qwen2's pre-tokenizer split (transformers' ``tokenization_qwen2.PRETOKENIZE_REGEX``): single
#: digits, letter runs with one leading non-letter, punctuation runs, newline runs.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Written last into a built model folder; its presence marks the folder complete.
MANIFEST = "agentropy_tiny.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the tiny model. The defaults give about 0.5M parameters: small enough that
    SFT and RL on 300-token prompts take minutes on a 2-core CPU."""

    vocab_size: int = 4096
    """Target BPE vocabulary (special tokens included); smaller if the corpus runs out of merges."""
    hidden_size: int = 128
    """Width of the residual stream; a multiple of ``num_attention_heads``."""
    intermediate_size: int = 384
    """Width of each MLP's hidden layer."""
    num_hidden_layers: int = 2
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Query heads per block; a multiple of ``num_key_value_heads``."""
    num_key_value_heads: int = 2
    """Key/value heads per block (grouped-query attention when fewer than the query heads)."""
    max_position_embeddings: int = 4096
    """Must cover prompt + reply: the default prompt budget is 1024 tokens."""
    episodes_per_env: int = 40
    """Episodes collected per env for the tokenizer corpus, half expert and half random."""
    max_episode_steps: int = 50
    """Step cap of each corpus episode."""
    copy_warmup_steps: int = 0
    """Optimizer steps of the synthetic copy task run on the fresh model before it is saved
    (:mod:`agentropy.agents.copy_warmup`): 0 = none, a random init as before. Tool-use envs
    whose held-out tasks need unseen names copied want it past the step where copying appears
    (~1,700 for the 3-layer model of ``configs/search.yaml``, which sets 2,500)."""


def config_key(cfg: TinyModelConfig) -> dict[str, Any]:
    """``cfg`` as the data that identifies a build: every field, except a copy warm-up that is
    off, so that builds made before the warm-up existed keep their cache folder and manifest."""
    data = asdict(cfg)
    if not cfg.copy_warmup_steps:
        del data["copy_warmup_steps"]
    return data


def _pick_action(info: dict[str, Any], rng: random.Random, expert: bool) -> str:
    admissible = list(info.get("admissible_actions") or [])
    if expert and info.get("expert_action"):
        return str(info["expert_action"])
    if admissible:
        return rng.choice(admissible)
    return str(info.get("expert_action") or "look")


@dataclass
class EnvCorpus:
    """What :func:`collect_env_corpus` gathers: every distinct string, and the actions among them."""

    texts: list[str] = field(default_factory=list)  # tasks, observations, actions, prompts, replies
    actions: list[str] = field(default_factory=list)  # the actions taken and listed as admissible


def collect_env_texts(
    env_ids: Sequence[str] = DEFAULT_ENV_IDS,
    episodes_per_env: int = 40,
    max_steps: int = 50,
    seed: int = 0,
    prompt_cfg: PromptConfig | None = None,
    progress: bool = False,
) -> list[str]:
    """Strings the agent will meet: env text plus the prompts and replies built from it
    (``collect_env_corpus(...).texts``)."""
    return collect_env_corpus(env_ids, episodes_per_env, max_steps, seed, prompt_cfg, progress).texts


def collect_env_corpus(
    env_ids: Sequence[str] = DEFAULT_ENV_IDS,
    episodes_per_env: int = 40,
    max_steps: int = 50,
    seed: int = 0,
    prompt_cfg: PromptConfig | None = None,
    progress: bool = False,
) -> EnvCorpus:
    """Play ``episodes_per_env`` episodes of each env (made with its default options) and keep
    what the agent will meet.

    Even episodes follow ``info["expert_action"]``, odd ones pick uniformly among the
    admissible actions (so the corpus sees failures and "Nothing happens." too). ``texts`` holds
    every task, observation, action and admissible action, each rendered system and user
    message, and each reply ``<action>...</action>``, in a deterministic order; ``actions`` the
    distinct actions among them (what :func:`tool_call_tags` reads).
    """
    from agentropy.envs.registry import make_env

    cfg = prompt_cfg or PromptConfig()
    rng = random.Random(seed)
    corpus = EnvCorpus()
    texts = corpus.texts
    seen: set[str] = set()
    seen_actions: set[str] = set()

    def add(s: str) -> None:
        if s and s not in seen:
            seen.add(s)
            texts.append(s)

    def add_action(s: str) -> None:
        add(s)
        if s and s not in seen_actions:
            seen_actions.add(s)
            corpus.actions.append(s)

    total = len(env_ids) * episodes_per_env
    with _progress(progress, "collecting env text", total) as advance:
        for env_id in env_ids:
            env = make_env(env_id)
            try:
                for episode in range(episodes_per_env):
                    expert = episode % 2 == 0
                    obs, info = env.reset(seed=seed * 100_003 + episode, options={"split": "train"})
                    task = str(info.get("task", ""))
                    add(task)
                    history: list[Turn] = []
                    for _ in range(max_steps):
                        admissible = [str(a) for a in info.get("admissible_actions") or []]
                        add(obs)
                        for a in admissible:
                            add_action(a)
                        for message in build_messages(cfg, task, history, obs, admissible):
                            add(message["content"])
                        action = _pick_action(info, rng, expert)
                        add_action(action)
                        add(f"<{cfg.action_tag}>{action}</{cfg.action_tag}>")
                        history.append(Turn(obs, action))
                        obs, _, terminated, truncated, info = env.step(action)
                        if terminated or truncated:
                            add(obs)
                            break
                    advance()
            finally:
                env.close()
    return corpus


#: ``<name>...</name>`` in an action: a tool call whose tags become single tokens.
_TOOL_CALL = re.compile(r"<([A-Za-z_][A-Za-z0-9_-]*)>.*?</\1>", re.DOTALL)


def tool_call_tags(actions: Iterable[str]) -> tuple[str, ...]:
    """The opening and closing tags of every ``<name>...</name>`` call in ``actions``, sorted
    (``()`` for envs whose actions are plain commands)."""
    names = {m.group(1) for a in actions for m in _TOOL_CALL.finditer(a)}
    return tuple(sorted(t for n in names for t in (f"<{n}>", f"</{n}>")))


class _progress:
    """A rich progress bar when ``enabled``; yields an ``advance()`` callable either way."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, atomic_tokens: Sequence[str] = ()) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (Qwen2 pipeline) with ChatML specials and template.

    ``eos_token`` is ``<|im_end|>`` (a reply ends with it, as in Qwen2.5-Instruct), padding is
    ``<|pad|>`` and there is no BOS. ``clean_up_tokenization_spaces`` is off so decoding is the
    exact inverse of encoding. Each of ``atomic_tokens`` (tool-call tags) is added as one
    non-special token, which encoding splits out before BPE and decoding (even with
    ``skip_special_tokens``) keeps; BPE is trained on the text between them, as it will see it.
    With no ``atomic_tokens`` the result is the plain BPE tokenizer.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="", byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if atomic_tokens:
        split = re.compile("|".join(re.escape(t) for t in sorted(atomic_tokens, key=len, reverse=True)))
        texts = (piece for text in texts for piece in split.split(text) if piece)
    tok.train_from_iterator(texts, trainer=trainer)
    if atomic_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in atomic_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TEXT, IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=TinyModelConfig.max_position_embeddings,
    )


def build_model(tokenizer: Any, cfg: TinyModelConfig = TinyModelConfig(), seed: int = 0) -> Any:
    """A randomly initialised ``Qwen2ForCausalLM`` sized by ``cfg`` over ``tokenizer``'s vocabulary.

    Embeddings are tied to the output layer (Qwen2.5's small models do the same). The init is
    seeded without touching the caller's global RNG.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=ids(PAD),
        bos_token_id=None,
        eos_token_id=ids(IM_END),
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids(IM_END), ids(END_OF_TEXT)],
        pad_token_id=ids(PAD),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
    )
    return model.eval()


def _copy_warmup(model: Any, tokenizer: Any, cfg: TinyModelConfig, seed: int, progress: bool) -> Any:
    """Run ``cfg.copy_warmup_steps`` of the copy task on the fresh model (none: ``None``)."""
    if not cfg.copy_warmup_steps:
        return None
    from agentropy.agents.copy_warmup import CopyWarmupConfig, copy_warmup

    with _progress(progress, "copy warm-up", cfg.copy_warmup_steps) as advance:
        result = copy_warmup(model, tokenizer, CopyWarmupConfig(steps=cfg.copy_warmup_steps), seed=seed,
                             on_step=lambda step, loss: advance())
    return result


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _request(env_ids: Sequence[str], seed: int, cfg: TinyModelConfig) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "env_ids": list(env_ids), "seed": seed, "config": config_key(cfg)}


def is_built(
    out_dir: str | os.PathLike[str],
    env_ids: Sequence[str] = DEFAULT_ENV_IDS,
    seed: int = 0,
    cfg: TinyModelConfig = TinyModelConfig(),
) -> bool:
    """Whether ``out_dir`` holds a complete build made with these env ids, seed and sizes."""
    manifest = _read_manifest(Path(out_dir))
    request = _request(env_ids, seed, cfg)
    return manifest is not None and {k: manifest.get(k) for k in request} == request


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    env_ids: Sequence[str] = DEFAULT_ENV_IDS,
    seed: int = 0,
    cfg: TinyModelConfig = TinyModelConfig(),
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Build (or reuse) the tiny model and tokenizer in ``out_dir``; return its path.

    Idempotent: if ``out_dir`` already holds a complete build with the same env ids, seed and
    sizes, it is returned at once. The build is written to a sibling temporary folder and
    renamed into place, so a reader never sees a half-written model. A non-empty ``out_dir``
    that is not an agentropy build is never overwritten.
    """
    out = Path(out_dir)
    request = _request(env_ids, seed, cfg)
    manifest = _read_manifest(out)
    if not force and is_built(out, env_ids, seed, cfg):
        return out
    if out.exists() and manifest is None and any(out.iterdir()):
        raise FileExistsError(f"out_dir {str(out)!r} exists, is not empty and is not an agentropy tiny model")
    if not env_ids:
        raise ValueError("env_ids must name at least one env to collect tokenizer text from")

    start = time.perf_counter()
    corpus = collect_env_corpus(env_ids, cfg.episodes_per_env, cfg.max_episode_steps, seed, progress=progress)
    texts, tags = corpus.texts, tool_call_tags(corpus.actions)
    tokenizer = train_tokenizer(texts + CHAT_TEMPLATE_TEXTS, cfg.vocab_size, atomic_tokens=tags)
    model = build_model(tokenizer, cfg, seed)
    warmup = _copy_warmup(model, tokenizer, cfg, seed, progress)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / "corpus_stats.json").write_text(
            json.dumps({"n_texts": len(texts), "n_chars": sum(map(len, texts))}, indent=2)
        )
        stats = {
            "atomic_tokens": list(tags),
            "vocab_size": len(tokenizer),
            "n_params": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.perf_counter() - start, 2),
            **({"copy_warmup": asdict(warmup)} if warmup is not None else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps({**request, **stats}, indent=2))
        if not force and is_built(out, env_ids, seed, cfg):
            return out  # another process finished the same build meanwhile; keep it
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process finished the same build first; keep theirs if it is complete.
            if _read_manifest(out) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load only the tokenizer of a checkpoint folder (a folder of tokenizer files is enough).

    A tokenizer without a pad token gets its EOS token as pad, which the backends only ever mask.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    path: str | os.PathLike[str],
    device: Any = None,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """Load any causal LM checkpoint folder (the tiny model or a Hugging Face one) in eval mode.

    ``dtype`` is passed to ``from_pretrained`` (None: the checkpoint's own dtype); the tokenizer
    comes from :func:`load_tokenizer`.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
