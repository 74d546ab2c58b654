"""Generation backends: ``hf`` (default), ``vllm`` (optional extra), ``openai`` (any server)."""

from agentropy.agents.backends.base import Completion, GenerationBackend, SamplingParams

__all__ = ["Completion", "GenerationBackend", "SamplingParams"]
