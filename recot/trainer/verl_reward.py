"""A reward function for verl on recot's ``verl`` export, with the GRPO trainer's rewards.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` for each response when its config
names this file (it imports recot's rewards, which need neither torch nor TRL)::

    reward:
      custom_reward_function:
        path: <site-packages>/recot/trainer/verl_reward.py   # python -c "import recot.trainer.verl_reward as m; print(m.__file__)"
        name: compute_score
    data:
      train_files: EXPORT/verl/train-<hash>.parquet
      val_files: EXPORT/verl/validation-<hash>.parquet
      prompt_key: prompt

The score is the sum of the trainer's default rewards for one answer: exact hit, hierarchical prefix match, the
rank reward (with the answer as the only candidate: equal to the exact hit) and format; each part is returned
beside the score, so verl logs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recot.formats.student import VERL_SOURCE
from recot.trainer.rewards import exact_hit, format_reward, prefix_match, rank_reward

PARTS: dict[str, Callable[..., list[float]]] = {"exact_hit": exact_hit, "prefix_match": prefix_match, "rank": rank_reward, "format": format_reward}


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None,
                  **_: Any) -> dict[str, float]:
    """``{"score": ..., "exact_hit", "prefix_match", "rank", "format"}`` of one response to a recot next-item prompt."""
    if data_source != VERL_SOURCE:
        raise ValueError(f"recot's verl reward scores {VERL_SOURCE!r} rows, not {data_source!r}: route other data sources "
                         "to their own reward function")
    parts = {name: reward([solution_str], target_sid=[ground_truth])[0] for name, reward in PARTS.items()}
    return {"score": sum(parts.values()), **parts}
