"""Timely-RL on verl: GRPO with vLLM rollouts on GPU clusters, with the project's episodes.

* :mod:`~timely.train.verl.config` — the typed config and its verl Hydra overrides;
* :mod:`~timely.train.verl.data` — train/test parquet rows from the tasks' splits;
* :mod:`~timely.train.verl.rollout` — one rollout: a row played by the one loop on verl's
  token server, returned as verl's agent-loop fields (no verl import);
* :mod:`~timely.train.verl.agent_loop` — ``TimelyAgentLoop``, the verl class (imports verl);
* :mod:`~timely.train.verl.reward` — ``compute_score``, verl's reward entry point;
* :mod:`~timely.train.verl.failures` — failed prompt groups: counted, shown, fatal past a share;
* :mod:`~timely.train.verl.launch` — ``timely-rl --backend verl``.

Only ``agent_loop`` needs verl; the rest runs on the base install (``--dry-run``, the tests).
"""
