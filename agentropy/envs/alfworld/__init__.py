"""ALFWorld's own text engine, offline: a game generator, the experts, and ``agentropy/ALFWorld-v0``.

Modules, one job each: :mod:`.rooms` reads ALFRED's rooms from the ``alfworld`` wheel,
:mod:`.generator` writes and validates games, :mod:`.engine` sets up (and speeds up)
TextWorld's PDDL engine, :mod:`.expert` wraps ALFWorld's experts, :mod:`.evalset` fixes the
evaluation games, and :mod:`.env` is the Gymnasium env. Needs the ``alfworld`` extra
(``pip install alfworld==0.4.2 'textworld[pddl]>=1.6.1'``); nothing here imports torch.
"""
