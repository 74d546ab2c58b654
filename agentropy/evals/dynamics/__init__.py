"""Entropy dynamics of training runs, measured against the claims the papers build on.

``agentropy analyze`` reads run folders (``config.yaml``, ``metrics.jsonl``,
``trajectories/iter_*_rank*.jsonl``) or the compact per-iteration aggregates a report commits
next to itself (``aggregates.jsonl``), and writes ``dynamics.md`` / ``dynamics.json`` / figures.
One module per job:

* :mod:`.statistics`: each statistic as a plain function on plain data;
* :mod:`.loading`: run folders -> per-iteration numbers (:class:`IterationStats`);
* :mod:`.analysis`: per-run numbers, then summaries over seeds per strategy;
* :mod:`.verdicts`: the claims, their calibrated verdict rules and the measured false-positive rates;
* :mod:`.render`: ``dynamics.md``, ``dynamics.json`` and figures.
"""

from agentropy.evals.dynamics.analysis import *  # noqa: F403
from agentropy.evals.dynamics.common import *  # noqa: F403
from agentropy.evals.dynamics.loading import *  # noqa: F403
from agentropy.evals.dynamics.records import *  # noqa: F403
from agentropy.evals.dynamics.render import *  # noqa: F403
from agentropy.evals.dynamics.statistics import *  # noqa: F403
from agentropy.evals.dynamics.verdicts import *  # noqa: F403
