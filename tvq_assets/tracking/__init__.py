"""Experiment tracking of the graph in MLflow: one MLflow run per Dagster run × sleeve × run
partition, whatever launched it (``make demo``, the UI, the CLI, schedule, sensor, backfill).

Modules, each importing only those above it:
``values`` (what a stage records, a value's tables) · ``tear_sheet`` · ``describe`` (describers)
· ``stages`` (the assets' order, from the definitions) · ``identity`` (which MLflow run, logging
a stage) · ``meta_run`` · ``status`` (terminal status) · ``diff`` · ``registry`` (the model
registry; ``policy_model`` is the pyfunc it logs, loaded by MLflow by path) · ``io_manager``
(the tracked IO manager and its sensors) · ``replay`` (``tvq track``, the terminal summary).
"""
