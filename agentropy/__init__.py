"""agentropy: RL for multi-turn tool-using LLM agents, and a benchmark of entropy strategies."""

__version__ = "0.1.0"
