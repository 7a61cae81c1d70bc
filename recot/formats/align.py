"""The itemic alignment format: what grounds SID tokens in the language of their items before any reasoning.

OneReason's item perception, OneRec-Think's itemic alignment and SIDReasoner's SID-language corpus share
one idea: a model must read and write SIDs as names of things before it can reason about them. The
export's ``align`` format holds plain-text ``prompt``/``completion`` rows (TRL's standard, not
conversational, form: an empty prompt is a document trained whole) of five kinds:

- ``sid_to_text``: a SID asked about, its item's title then brand, categories and description;
- ``text_to_sid``: a title asked about, its SID;
- ``relation``: two SIDs asked about, the kept R1 relation and its rationale;
- ``behaviour``: a user's training-split events as a document, each item's SID inline before its title,
  in the student prompt's history layout (SIDReasoner's enriched corpus);
- ``item_text``: an item's text alone, for continued pre-training (no SID).

A share of the items is held out (:func:`held_out`): their pairs and their text go to the ``validation`` split
(the loss early stopping watches) and behaviour documents show them without their SID, so the perception probe can measure alignment on items whose
SID never stood next to their text in training. The probe and the export read these prompts from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

KINDS = ("sid_to_text", "text_to_sid", "relation", "behaviour", "item_text")
PAIR_KINDS = ("sid_to_text", "text_to_sid")
HELD_OUT_SHARE = 0.05


def sid_to_text_prompt(sid: str) -> str:
    """What a ``sid_to_text`` row (and the probe's SID -> title question) asks; the answer's first line is the title."""
    return f"Which item is {sid}?\n"


def text_to_sid_prompt(title: str) -> str:
    """What a ``text_to_sid`` row (and the probe's title -> SID question) asks; the answer is the SID alone."""
    return f"Which semantic ID names the item {title}?\n"


def relation_prompt(first: str, second: str) -> str:
    """What a ``relation`` row asks about two SIDs."""
    return f"How does {second} relate to {first}?\n"


def held_out(item_ids: Sequence[str], share: float = HELD_OUT_SHARE) -> list[bool]:
    """Whether each item is held out of alignment training: a stable hash of its id, so every export of a
    catalog holds out the same items and a probe's held-out numbers stay comparable across runs."""
    cut = int(share * 10_000)
    return [int.from_bytes(hashlib.md5(f"align|{i}".encode()).digest()[:4], "little") % 10_000 < cut for i in item_ids]
