"""The run layer: one training/evaluation run under the shared protocol.

``protocol.py`` (config layers, feature checks, declared features), ``runner.py`` (config ->
dataset -> splits -> model -> RecBole trainer -> results JSON), ``masking.py`` and
``cold_start.py`` (evaluation protocol variants), ``per_user.py`` (per-user test metrics for
significance tests), ``cli.py`` (``vlm4rec run`` / ``vlm4rec features``; ``run_recbole.py``).
"""
