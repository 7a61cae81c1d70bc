"""A deterministic teacher that writes the same structured answers from catalog and behaviour statistics.

It is the demo's default (no model needed), the non-LLM baseline for ablations, and the teacher
whose content tests can assert. It reads only what the request's subject names (the history, and
the target where the prompt shows it), so it obeys the same cut-off as an LLM teacher.

- Persona: brand concentration, repeat buying, then keyword cues in the history's titles.
- Interests: history items grouped by their first SID code (the coarsest semantic cluster),
  most recent group first, each named by its items' most frequent title keywords.
- Transition: the latest item, and the interest its group forms.
- Answer: the target's SID when the prompt shows it; otherwise the most popular training item
  of the followed group that the user has not bought.
- Slate answer: the candidates ranked by the leading SID codes they share with the history (each
  item half the weight of the next), plus log title words shared with it, plus log popularity.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recot.data.catalog import Catalog
from recot.teachers.base import Request, Response, TeacherInputs, TeacherKind

STOPWORDS = frozenset(
    "and the for with from into inch inches pack pcs piece pieces set of to in on by x mm cm ft lb oz per "
    "new size black white blue red green yellow silver gray grey clear large small medium mini heavy duty "
    "each inch pc count quantity style type model series".split()
)
# Title words that hint at a prototype; the first listed persona with the most hits wins.
PERSONA_CUES: dict[str, frozenset[str]] = {
    "pet owner": frozenset("dog dogs cat cats pet pets aquarium leash litter".split()),
    "hobbyist maker": frozenset("3d printer filament pla abs solder soldering resin arduino craft nozzle hotend".split()),
    "tech enthusiast": frozenset("usb raspberry sensor wireless bluetooth led module electronic digital".split()),
    "home improver": frozenset("home door wall faucet plumbing paint drywall cabinet floor shower".split()),
    "professional buyer": frozenset("industrial commercial safety hydraulic pneumatic osha ansi bulk professional".split()),
    "health-conscious": frozenset("medical health first aid mask masks sanitizer nitrile".split()),
    "outdoor adventurer": frozenset("outdoor camping garden hiking marine boat".split()),
}
_WORD = re.compile(r"[a-z][a-z0-9\-]{2,}")


def keywords(title: str) -> list[str]:
    return [w for w in _WORD.findall(title.lower()) if w not in STOPWORDS]


class RulesTeacherConfig(BaseModel):
    """The deterministic rules teacher (no model): a baseline, and what the demo and tests run."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["rules"] = Field("rules", description="the rules teacher")
    model: None = Field(None, description="the rules teacher has no model")


class RulesTeacher:
    """Answers every task from statistics; ``popularity`` counts training targets (before the cut-off)."""

    kind = "rules"
    model = "rules-v1"
    # the bundled tasks, each answered by the method of its name; a user's own task needs an LLM teacher
    tasks = frozenset({"r0_caption", "r1_relation", "r2_interests", "r3_cot_blind", "r3_cot_slate", "r3_cot_hindsight", "judge"})

    def __init__(self, catalog: Catalog, personas: tuple[str, ...], popularity: dict[str, int]) -> None:
        frame = catalog.items.select("item_id", "title", "brand", "categories", "sid").with_columns(
            sid_text=catalog.sid_text())
        self.items = {row["item_id"]: row for row in frame.iter_rows(named=True)}
        self.personas = personas
        self.popularity = popularity
        ranked = sorted(popularity.items(), key=lambda kv: (-kv[1], kv[0]))
        self.ranked: dict[int | None, list[str]] = {}
        for item_id, _ in ranked:
            if item_id in self.items:
                self.ranked.setdefault(self._group(item_id), []).append(item_id)
                self.ranked.setdefault(None, []).append(item_id)

    @classmethod
    def from_targets(cls, catalog: Catalog, personas: tuple[str, ...], train_targets: pl.LazyFrame) -> RulesTeacher:
        counts = train_targets.group_by("target").agg(n=pl.len()).collect()
        return cls(catalog, personas, dict(zip(counts["target"].to_list(), counts["n"].to_list())))

    def generate(self, requests: Iterable[Request]) -> Iterator[Response]:
        for request in requests:
            answer = getattr(self, "_" + request.task)(request.subject | {"personas": self._offered(request)})
            yield Response(request.key, json.dumps(answer), "stop")

    def _offered(self, request: Request) -> tuple[str, ...]:
        """The personas the request's schema allows (its domain's), as an LLM reads them; else the teacher's own."""
        persona = request.schema.get("$defs", {}).get("Persona", {}).get("properties", {}).get("prototype", {})
        return tuple(persona.get("enum", ())) or self.personas

    def close(self) -> None:
        """Nothing to release."""

    def _group(self, item_id: str) -> int | None:
        sid = self.items[item_id]["sid"]
        return sid[0] if sid else None

    def _name(self, item_ids: list[str]) -> str:
        counts = Counter(w for i in item_ids for w in dict.fromkeys(keywords(self.items[i]["title"])))
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        return " ".join(w for w, _ in top) or "general items"

    def _clusters(self, history: list[str]) -> list[tuple[str, list[int]]]:
        """(name, 1-based positions) per SID group, the group of the latest item first, at most five."""
        groups: dict[int | None, list[int]] = {}
        for pos, item_id in enumerate(history, start=1):
            groups.setdefault(self._group(item_id), []).append(pos)
        ordered = sorted(groups.values(), key=lambda positions: -positions[-1])[:5]
        return [(self._name([history[p - 1] for p in positions]), positions) for positions in ordered]

    def _persona(self, history: list[str], personas: tuple[str, ...]) -> dict[str, str]:
        brands = Counter(b for i in history if (b := self.items[i]["brand"]))
        repeats = len(history) - len(set(history))
        listed = set(personas)
        if brands and len(history) >= 3 and "brand loyalist" in listed:
            brand, n = brands.most_common(1)[0]
            if n / len(history) >= 0.6:
                return {"prototype": "brand loyalist", "evidence": f"{n} of {len(history)} purchases are {brand}"[:300]}
        if repeats >= 2 and "bulk stocker" in listed:
            return {"prototype": "bulk stocker", "evidence": f"{repeats} purchases repeat an earlier item"}
        words = Counter(w for i in history for w in keywords(self.items[i]["title"]))
        scored = [(sum(words[w] for w in PERSONA_CUES.get(p, ())), -k, p) for k, p in enumerate(personas)]
        hits, _, prototype = max(scored)
        if hits == 0:
            prototype = "quality seeker" if "quality seeker" in listed else personas[0]
            return {"prototype": prototype, "evidence": f"{len(history)} purchase(s) with no dominant cue"}
        cues = sorted(w for w in words if w in PERSONA_CUES[prototype])
        return {"prototype": prototype, "evidence": f"titles mention {', '.join(cues)}"[:300]}

    def _interests(self, history: list[str]) -> list[dict[str, Any]]:
        return [{"name": name[:80], "evidence": positions} for name, positions in self._clusters(history)]

    def _trace(self, subject: dict[str, Any], target: str | None) -> dict[str, Any]:
        history = subject["history"]
        interests = self._interests(history)
        latest = self.items[history[-1]]
        reasoning = (f"the latest purchase continues the '{interests[0]['name']}' interest, "
                     "so the next item most likely serves it as well")
        if target is None:
            bought = set(history)
            pool = self.ranked.get(self._group(history[-1]), []) + self.ranked.get(None, [])
            target = next((i for i in pool if i not in bought), history[-1])
        return {
            "persona": self._persona(history, subject["personas"]),
            "interests": interests,
            "transition": {"recent": f"#{len(history)} {latest['title']}"[:300], "follows": 1, "reasoning": reasoning},
            "answer": self.items[target]["sid_text"],
        }

    def _r3_cot_blind(self, subject: dict[str, Any]) -> dict[str, Any]:
        return self._trace(subject, None)

    def _r3_cot_slate(self, subject: dict[str, Any]) -> dict[str, Any]:
        history = subject["history"]
        words = Counter(w for i in history for w in keywords(self.items[i]["title"]))

        def score(candidate: str) -> float:
            sid = self.items[candidate]["sid"] or []
            shared = sum(0.5 ** (len(history) - pos) * _common_prefix(sid, self.items[h]["sid"] or [])
                         for pos, h in enumerate(history, start=1))
            overlap = sum(words[w] for w in set(keywords(self.items[candidate]["title"])))
            return shared + math.log1p(overlap) + math.log1p(self.popularity.get(candidate, 0))

        ranked = sorted(subject["items"], key=score, reverse=True)[: subject["top_k"]]
        trace = self._trace(subject, ranked[0])
        return trace | {"alternatives": [self.items[i]["sid_text"] for i in ranked[1:]]}

    def _r3_cot_hindsight(self, subject: dict[str, Any]) -> dict[str, Any]:
        return self._trace(subject, subject["target"])

    def _r2_interests(self, subject: dict[str, Any]) -> dict[str, Any]:
        return {"interests": self._interests(subject["history"])}

    def _r0_caption(self, subject: dict[str, Any]) -> dict[str, Any]:
        item = self.items[subject["items"][0]]
        categories = item["categories"] or []
        caption = item["title"] + (f", made by {item['brand']}" if item["brand"] else "")
        if categories:
            caption += f". Listed under {' > '.join(categories)}"
        attributes = {k: v for k, v in (("brand", item["brand"]), ("category", categories[-1] if categories else None)) if v}
        sid, title = item["sid_text"], item["title"][:200]
        qa = [{"question": f"Which item is {sid}?", "answer": title},
              {"question": f"What is the semantic ID of {title}?"[:200], "answer": sid}]
        qa += [{"question": f"What is the {name} of {sid}?", "answer": value[:300]} for name, value in attributes.items()]
        return {"caption": caption[:600], "attributes": [{"name": k, "value": v[:120]} for k, v in attributes.items()], "qa": qa[:4]}

    def _judge(self, subject: dict[str, Any]) -> dict[str, Any]:
        """One point each for a persona line, 1-5 interests citing real purchases, a transition that
        follows one of them, and citations covering half the history (1 to 5 in all)."""
        trace, size = subject["trace"], len(subject["history"])
        cited = [int(n) for n in re.findall(r"#(\d+)", trace)]
        interests = re.findall(r"^\d+\. .+\(from [^)]*\)$", trace, flags=re.MULTILINE)
        follows = re.search(r"-> interest (\d+)", trace)
        faithful = all(1 <= n <= size for n in cited)
        checks = {
            "persona": bool(re.search(r"^Persona: \S", trace, flags=re.MULTILINE)),
            "interests": 1 <= len(interests) <= 5 and faithful,
            "transition": follows is not None and 1 <= int(follows.group(1)) <= max(len(interests), 1),
            "coverage": size > 0 and len({n for n in cited if 1 <= n <= size}) / size >= 0.5,
        }
        missing = [name for name, ok in checks.items() if not ok]
        reason = "all four checks hold" if not missing else "weak: " + ", ".join(missing)
        return {"score": 1 + sum(checks.values()), "faithful": faithful, "reason": reason}

    def _r1_relation(self, subject: dict[str, Any]) -> dict[str, Any]:
        first, second = (self.items[i] for i in subject["items"])
        leaf = [(x["categories"] or [None])[-1] for x in (first, second)]
        shared = _common_prefix(first["sid"] or [], second["sid"] or [])
        words = [self._name([i]) for i in subject["items"]]
        if shared >= 2 or (leaf[0] and leaf[0] == leaf[1]):
            relation, why = "substitute", f"both are {leaf[0] or words[0]} items in the same fine SID cluster"
        elif shared == 1:
            relation, why = "same_interest", f"{words[0]} and {words[1]} share a coarse SID cluster but differ below it"
        else:
            relation, why = "complement", f"bought one after the other from different clusters: {words[0]}, then {words[1]}"
        return {"relation": relation, "rationale": why[:400]}


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Leading SID codes two items share."""
    shared = 0
    for x, y in zip(a, b):
        if x != y:
            break
        shared += 1
    return shared


def _build(config: RulesTeacherConfig, inputs: TeacherInputs) -> RulesTeacher:
    return RulesTeacher.from_targets(inputs.catalog, inputs.personas, inputs.train_targets)


KIND = TeacherKind(RulesTeacherConfig, _build, RulesTeacher.tasks)
