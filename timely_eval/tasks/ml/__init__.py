"""The low-frequency tool-call family: ML engineering on real data under a time budget.

Importing this package registers ``ml/breast-cancer-v1``, ``ml/digits-v1``, ``ml/diabetes-v1``
(structured tools: describe, train, evaluate, submit), their code-mode variants
``ml/breast-cancer-code-v1`` and ``ml/diabetes-code-v1`` (the paper's mode: the agent writes
``submission.csv`` through the sandboxed ``run_python`` tool), and ``ml/dir-v1``, which loads a
reference-release agentic-ML directory (``path=...``). See :mod:`.base` for scoring.
"""

from timely_eval.tasks.ml import datasets, dirs  # noqa: F401 - registers the tasks
