"""Recommendation rewards in TRL's reward-function form, usable on their own.

Each function takes ``completions`` (text or conversational) and the dataset's ``target_sid`` column
and returns one float per completion. ``candidates`` (a ranked list of SIDs per completion, which
:class:`trainer.grpo.RecGRPOTrainer` fills from its constrained beam search) feeds the set-wise
rewards; without it a completion's own answer is its only candidate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from recot.formats.cot import COMPLETION_PATTERN, split_think
from recot.formats.grounding import grounding
from recot.formats.sid import ANY_SID_PATTERN, sid_codes

_SID = re.compile(ANY_SID_PATTERN)  # completions of any dialect: the target SID says which one is right
_FORMAT = re.compile(COMPLETION_PATTERN, re.DOTALL)


def completion_text(completion) -> str:
    """The text of a completion in TRL's standard or conversational form."""
    return completion if isinstance(completion, str) else "".join(m["content"] for m in completion)


def answer_sid(completion) -> str | None:
    """The SID a completion answers with: the first one after its think block."""
    text = completion_text(completion)
    found = _SID.search(split_think(text)[1])
    return found.group(0) if found else None


def _prefix(got: str | None, want: str) -> float:
    """Share of ``want``'s levels matched from the first level on."""
    a, b = sid_codes(got), sid_codes(want)
    if not a or not b:
        return 0.0
    matched = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return matched / len(b)


def _candidates(completions, candidates: Sequence[Sequence[str]] | None) -> list[list[str]]:
    if candidates is not None:
        return [list(c) for c in candidates]
    return [[sid] if (sid := answer_sid(c)) else [] for c in completions]


def exact_hit(completions, target_sid, **_) -> list[float]:
    """1 when the answer is the target item's SID."""
    out = []
    for completion, target in zip(completions, target_sid):
        want = sid_codes(target)
        out.append(float(want is not None and sid_codes(answer_sid(completion)) == want))
    return out


def prefix_match(completions, target_sid, **_) -> list[float]:
    """Hierarchical partial credit: the share of SID levels right from the coarsest down."""
    return [_prefix(answer_sid(c), t) for c, t in zip(completions, target_sid)]


def rank_reward(completions, target_sid, candidates=None, **_) -> list[float]:
    """NDCG of the ranked candidates with the target as the one relevant item: 1/log2(rank + 1)."""
    out = []
    for ranked, target in zip(_candidates(completions, candidates), target_sid):
        want = sid_codes(target)
        rank = next((i for i, sid in enumerate(ranked) if sid_codes(sid) == want), None)
        out.append(0.0 if rank is None or want is None else 1.0 / math.log2(rank + 2))
    return out


def slate_rank_penalty(completions, target_sid, candidates=None, **_) -> list[float]:
    """MiniOneRec's ranking reward for beam groups: a wrong answer costs 1/log2(rank + 2) by its place in the
    slate, so the policy's most confident mistakes are pushed down hardest; the right answer costs nothing."""
    out = []
    for completion, ranked, target in zip(completions, _candidates(completions, candidates), target_sid):
        answer = sid_codes(answer_sid(completion))
        if answer is not None and answer == sid_codes(target):
            out.append(0.0)
            continue
        rank = next((i for i, sid in enumerate(ranked) if sid_codes(sid) == answer), len(ranked))
        out.append(-1.0 / math.log2(rank + 2))
    return out


def coverage_reward(completions, target_sid, candidates=None, **_) -> list[float]:
    """Best hierarchical match among the K candidates: credit for covering the target's region."""
    return [max((_prefix(sid, t) for sid in ranked), default=0.0) for ranked, t in zip(_candidates(completions, candidates), target_sid)]


def diversity_reward(completions, candidates=None, **_) -> list[float]:
    """Distinct first-level codes among the K candidates over K: rewards spreading the bets."""
    out = []
    for ranked in _candidates(completions, candidates):
        first = {codes[0] for sid in ranked if (codes := sid_codes(sid))}
        out.append(len(first) / len(ranked) if ranked else 0.0)
    return out


def format_reward(completions, **_) -> list[float]:
    """1 when the completion is an optional think block followed by exactly one SID and nothing else."""
    return [float(_FORMAT.fullmatch(completion_text(c).strip()) is not None) for c in completions]


def grounding_reward(completions, history_sids, **_) -> list[float]:
    """The reasoning's grounding in its history: its cov_rate, zero when it names any item outside the history (EHR > 0).
    A completion without reasoning gets 0: there is nothing grounded to reward."""
    out = []
    for completion, history in zip(completions, history_sids):
        reasoning = split_think(completion_text(completion))[0]
        ehr, cov = grounding(reasoning, history) if reasoning.strip() else (0.0, 0.0)
        out.append(cov if ehr == 0 else 0.0)
    return out


REWARDS = {"exact_hit": exact_hit, "prefix_match": prefix_match, "rank": rank_reward, "slate_rank": slate_rank_penalty, "coverage": coverage_reward,
           "diversity": diversity_reward, "format": format_reward, "grounding": grounding_reward}
