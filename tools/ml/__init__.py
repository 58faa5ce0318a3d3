"""ML engineering tools for the low-frequency tool-call family (``timely_eval.tasks.ml``).

- :mod:`timely_tools.ml.recipe`: the one implementation of "read the CSVs, fit an allow-listed
  scikit-learn estimator, predict" (server tools, task references and the code-mode oracle).
- :mod:`timely_tools.ml.data`: submission checks, receipts and metrics shared with the tasks.
- :mod:`timely_tools.ml.tools`: ``describe_data``, ``train_model``, ``evaluate_model``,
  ``submit_model`` and the setup-only ``ml_setup``. Code mode uses ``run_python``
  (:mod:`timely_tools.sandbox.tool`) in the same session workspace.
"""
