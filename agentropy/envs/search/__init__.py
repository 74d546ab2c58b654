"""``agentropy/Search-v0``: multi-hop question answering with a real local search service.

Modules, one job each: :mod:`.world` generates the fictional encyclopedia, :mod:`.questions`
draws multi-hop questions and scores answers, :mod:`.index` is the BM25 retrieval,
:mod:`.server` the HTTP service, :mod:`.process` starts and shares it as a child process,
:mod:`.client` talks to it (or any JSON search API), :mod:`.protocol` parses tool calls and
renders observations, :mod:`.expert` is the oracle and :mod:`.env` the Gymnasium env.
The env class is imported from :mod:`.env` so that importing this package stays light.
"""
