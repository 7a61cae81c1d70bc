"""Orchestration above the stages: the pipeline (`recot run`), the think vs no-think ablation, the
specialise-then-unify recipe, and how a stage table becomes a stage config."""
