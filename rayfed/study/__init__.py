"""``rayfed study``: the reproduction of the personalization/robustness study as one command.

- ``config``: the study file (federated algorithms with their lr grids, personalization grids,
  seeds, heterogeneity levels) and the experiment section every run shares.
- ``plan``: the jobs that file implies, in the order they run.
- ``runner``: runs the jobs through the ordinary ``run_experiment``/``run_personalization``,
  skipping finished ones, so an interrupted study continues where it stopped.
- ``claims``: the four claims measured from the result files, with a verdict each.
- ``plots``: the study's figures, redrawn from the same files (``rayfed plot OUT``).
"""
