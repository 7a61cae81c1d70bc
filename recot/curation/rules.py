"""Named curation rules, each one SQL query over the store that yields a verdict per trace.

A rule returns ``(trace_id, passed, reason, detail)`` for the traces it applies to; ``run_rules``
replaces that rule's verdicts in one transaction (after computing the ``grounding`` table the
grounding rule reads). Thresholds live in :class:`RulesConfig`, every
rule can be switched off, and the reason codes are listed in :data:`REASONS`. The definitions of
the grounding signals follow DESIGN.md:

- EHR (extra-history rate): share of the items a CoT mentions that are not in the history;
- cov_rate: share of the history's items the CoT mentions (by SID or by its ``#k`` number).
Both are also written to ``scores``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from recot.curation.store import Store
from recot.curation.trace_columns import WORD_RE, trace_columns
from recot.formats.cot import COT_PATTERN, reasoning_sql
from recot.formats.grounding import grounding_sql
from recot.formats.profiles import all_personas
from recot.formats.sid import codes_sql

# Which traces a rule reads follows from their task's declaration (the store's ``tasks`` table)
COT = "(SELECT task FROM tasks WHERE cot)"
WITH_INTERESTS = "(SELECT task FROM tasks WHERE interests)"
HINDSIGHT = "(SELECT task FROM tasks WHERE cot AND shows_target)"
BLIND = "(SELECT task FROM tasks WHERE cot AND NOT shows_target AND NOT slate)"
SLATE = "(SELECT task FROM tasks WHERE cot AND slate)"
# how many candidates a slate answer picks (its answer and ranked alternatives), over ``traces t``
SLATE_PICKS = "(1 + json_array_length(coalesce(json_extract(t.output, '$.alternatives'), '[]')))"
# Words that never make a title word distinctive: the CoT format's labels and common English
# (the persona prototypes' words are added from the config).
COMMON_WORDS = tuple(
    "persona interests interest transition from with that this these those they their there then than "
    "have will would could should into over under about after before other which where when what while "
    "user users item items purchase purchases next most more also just only each both same".split()
)
REASONS = {
    "truncated": "synthesis: generation hit max_tokens",
    "truncated_reasoning": "synthesis: a thinking teacher hit max_tokens inside its reasoning",
    "schema_invalid": "synthesis: answer did not match the schema",
    "cot_format": "the CoT text does not follow the fixed <think> format",
    "too_short": "text shorter than length.min_chars", "too_long": "text longer than length.max_chars",
    "language": "too few Latin letters for the configured language",
    "persona_unknown": "persona prototype not in the domain's list",
    "interest_count": "not 1-5 interest hypotheses", "evidence_out_of_range": "an interest cites a history number that does not exist",
    "unknown_sid": "a SID in the text is not in the catalog", "answer_not_sid": "the answer is not a SID",
    "hallucinated_items": "EHR above grounding.max_ehr", "low_coverage": "cov_rate below grounding.min_cov",
    "leak_sid": "hindsight reasoning contains the target's SID",
    "leak_title_ngram": "hindsight reasoning repeats a word n-gram of the target's title that no history title has",
    "leak_brand": "hindsight reasoning names the target's brand (absent from the history)",
    "leak_token": "hindsight reasoning uses a distinctive word of the target's title",
    "future_event": "an event at or after the cut-off (or the target) is in the sample",
    "no_substance": "the reasoning has fewer than substance.min_words distinct words of its own (besides the layout's labels, "
                    "the personas and common words): numbers, dates or echoed labels, not reasoning",
    "miss": "blind prediction neither matches nor shares the SID prefix of the real next item",
    "slate_miss": "the real next item is not the slate pick (nor among the ranked top k)",
}


class Switch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="false: the rule writes no verdicts")


class LengthRule(Switch):
    min_chars: int = Field(20, ge=0, description="shorter answered texts fail (too_short)")
    max_chars: int = Field(6000, ge=1, description="longer answered texts fail (too_long)")


class LanguageRule(Switch):
    min_latin_share: float = Field(0.8, ge=0, le=1, description="least share of Latin letters among all letters")


class PersonaRule(Switch):
    personas: list[str] = Field(all_personas(), description="the personas an R3 persona must be one of (default: every bundled "
                                "profile's; synthesis already held each trace to its own domain's list)")


class GroundingRule(Switch):
    max_ehr: float = Field(0.5, ge=0, le=1, description="most share of SIDs in the reasoning that are not in the history")
    min_cov: float = Field(0.1, ge=0, le=1, description="least share of history items the reasoning cites or names")


class LeakageRule(Switch):
    ngram: int = Field(3, ge=2, description="target-title word n-grams (absent from the history) that count as a leak")
    min_token_chars: int = Field(4, ge=1, description="shortest title word that can be a distinctive-token leak")
    max_token_df: float = Field(0.01, gt=0, le=1, description="a title word is distinctive when at most this share of catalog titles has it")


class SubstanceRule(Switch):
    min_words: int = Field(5, ge=0, description="least distinct words of 3+ letters a reasoning must have besides the CoT layout's "
                           "labels, the persona prototypes' words and common English")


class BlindHitRule(Switch):
    prefix_levels: int = Field(2, ge=0, description="codes that must match for a near hit; 0: exact hits only")


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_valid: Switch = Field(Switch(), description="the synthesis verdict (truncated, schema_invalid, refused, ...)")
    cot_format: Switch = Field(Switch(), description="R3 text follows the fixed think layout")
    length: LengthRule = Field(LengthRule(), description="answered text length")
    language: LanguageRule = Field(LanguageRule(), description="share of Latin letters")
    persona: PersonaRule = Field(PersonaRule(), description="R3 persona is one of the domain's prototypes")
    interests: Switch = Field(Switch(), description="1-5 interests citing history numbers that exist")
    sid_validity: Switch = Field(Switch(), description="every SID in the text exists; the R3 answer is a SID")
    grounding: GroundingRule = Field(GroundingRule(), description="EHR and cov_rate of the reasoning")
    leakage: LeakageRule = Field(LeakageRule(), description="hindsight reasoning names the target (SID, title n-gram, brand, rare word)")
    future: Switch = Field(Switch(), description="no event at or after the cut-off or the target")
    substance: SubstanceRule = Field(SubstanceRule(), description="R3 reasoning says something in words of its own")
    blind_hit: BlindHitRule = Field(BlindHitRule(), description="a blind answer hits (or nearly hits) the next item; "
                                    "a slate answer picks it (or ranks it in its top k)")


def _schema_valid(_: RulesConfig, sid_re: str) -> str:
    return "SELECT trace_id, status = 'ok', reason, detail FROM traces"


def _cot_format(_: RulesConfig, sid_re: str) -> str:
    return f"""SELECT trace_id, regexp_full_match(text, '{COT_PATTERN}') AS ok,
                      CASE WHEN NOT ok THEN 'cot_format' END, NULL
               FROM traces WHERE status = 'ok' AND task IN {COT}"""


def _length(c: RulesConfig, sid_re: str) -> str:
    return f"""SELECT trace_id, length(text) BETWEEN {c.length.min_chars} AND {c.length.max_chars},
                      CASE WHEN length(text) < {c.length.min_chars} THEN 'too_short'
                           WHEN length(text) > {c.length.max_chars} THEN 'too_long' END,
                      length(text)::VARCHAR || ' characters'
               FROM traces WHERE status = 'ok'"""


def _language(c: RulesConfig, sid_re: str) -> str:
    # ASCII text (as many bytes as characters) is all Latin when it has a letter: no regex rewrite needed. Latin is the
    # script, so a full-width title quoted in a trace counts as its plain twin does (NFKC makes one the other)
    share = ("CASE WHEN strlen(text) = length(text) THEN regexp_matches(text, '[A-Za-z]')::DOUBLE ELSE "
             "length(regexp_replace(text, '[^\\p{Latin}]', '', 'g')) / "
             "greatest(1, length(regexp_replace(text, '[^\\p{L}]', '', 'g')))::DOUBLE END")
    return f"""SELECT trace_id, share >= {c.language.min_latin_share}, CASE WHEN share < {c.language.min_latin_share}
                      THEN 'language' END, printf('%.2f Latin', share)
               FROM (SELECT trace_id, {share} AS share FROM traces WHERE status = 'ok')"""


def _persona(c: RulesConfig, sid_re: str) -> str:
    listed = ", ".join("'" + p.replace("'", "''") + "'" for p in c.persona.personas)
    prototype = "json_extract_string(output, '$.persona.prototype')"
    return f"""SELECT trace_id, coalesce({prototype} IN ({listed}), false) AS ok, CASE WHEN NOT ok THEN 'persona_unknown' END,
                      coalesce({prototype}, 'no persona prototype')
               FROM traces WHERE status = 'ok' AND task IN {COT}"""


# An interest's evidence as the teacher wrote it: JSON values of any type and size. A citation counts only as a JSON
# integer in 1..h (h: history length); anything else (a float, a string, a number past 64 bits, a nested array) fails
# the rule as out of range instead of failing a cast for the whole store.
_CITATION_OK = "lambda e: json_type(e) IN ('UBIGINT', 'BIGINT') AND coalesce(TRY_CAST(e::VARCHAR AS BIGINT) BETWEEN 1 AND h, false)"


def _interests(_: RulesConfig, sid_re: str) -> str:
    return f"""
        WITH x AS (
            SELECT trace_id, coalesce(json_type(output, '$.interests'), 'missing') AS kind,
                   coalesce(json_array_length(output, '$.interests'), 0) AS n, len(history) AS h,
                   len(list_filter(json_extract(output, '$.interests[*].evidence'),
                                   lambda ev: json_type(ev) = 'ARRAY' AND json_array_length(ev) > 0)) AS grounded,
                   json_extract(output, '$.interests[*].evidence[*]') AS cited
            FROM traces WHERE status = 'ok' AND task IN {WITH_INTERESTS}),
        y AS (SELECT *, grounded = n AND list_bool_and(list_transform(cited, {_CITATION_OK})) AS in_range FROM x)
        SELECT trace_id, kind = 'ARRAY' AND n BETWEEN 1 AND 5 AND in_range,
               CASE WHEN kind <> 'ARRAY' THEN 'schema_invalid' WHEN n NOT BETWEEN 1 AND 5 THEN 'interest_count'
                    WHEN NOT in_range THEN 'evidence_out_of_range' END,
               CASE WHEN kind <> 'ARRAY' THEN 'interests is ' || kind || ', not an array'
                    ELSE printf('%d interests (%d with evidence), cites %s of %d', n, grounded, cited::VARCHAR, h) END
        FROM y"""


def _sid_validity(_: RulesConfig, sid_re: str) -> str:
    return f"""
        WITH m AS (SELECT trace_id, unnest(regexp_extract_all(text, '{sid_re}')) AS sid FROM traces WHERE status = 'ok'),
        unknown AS (SELECT trace_id, string_agg(DISTINCT sid, ' ') AS sids FROM m ANTI JOIN catalog c ON m.sid = c.sid_text
                    GROUP BY trace_id),
        answers AS (SELECT trace_id, json_extract_string(output, '$.answer') AS answer,
                           coalesce(regexp_full_match(answer, '{sid_re}'), false) AS is_sid
                    FROM traces WHERE status = 'ok' AND task IN {COT})
        SELECT t.trace_id, u.sids IS NULL AND coalesce(a.is_sid, true),
               CASE WHEN NOT coalesce(a.is_sid, true) THEN 'answer_not_sid' WHEN u.sids IS NOT NULL THEN 'unknown_sid' END,
               CASE WHEN u.sids IS NOT NULL THEN u.sids WHEN a.trace_id IS NOT NULL THEN coalesce(a.answer, 'no answer') END
        FROM traces t LEFT JOIN unknown u USING (trace_id) LEFT JOIN answers a USING (trace_id) WHERE t.status = 'ok'"""


def _grounding_table(sid_re: str) -> str:
    """Per R3 trace: ``ehr`` and ``cov_rate`` of its <think> block (:func:`recot.formats.grounding.grounding_sql`; reads
    the ``trace_columns`` table)."""
    return grounding_sql(f"""(SELECT t.trace_id, {reasoning_sql("t.text")} AS reasoning, coalesce(h.history_sids, []) AS history_sids
                             FROM traces t LEFT JOIN trace_columns h USING (trace_id) WHERE t.status = 'ok' AND t.task IN {COT})""", sid_re)


def _grounding(c: RulesConfig, sid_re: str) -> str:
    g = c.grounding
    return f"""SELECT trace_id, ehr <= {g.max_ehr} AND cov_rate >= {g.min_cov},
                      CASE WHEN ehr > {g.max_ehr} THEN 'hallucinated_items' WHEN cov_rate < {g.min_cov} THEN 'low_coverage' END,
                      printf('ehr %.2f, cov_rate %.2f', ehr, cov_rate)
               FROM grounding"""


def _common_words(c: RulesConfig) -> list[str]:
    """Words that never make a text distinctive or substantial: the layout's labels, common English, the personas'."""
    return sorted({*COMMON_WORDS, *(w for p in c.persona.personas for w in re.findall(WORD_RE, p.lower()))})


def _substance(c: RulesConfig, sid_re: str) -> str:
    common = ", ".join(f"'{w}'" for w in _common_words(c))
    return f"""
        WITH x AS (SELECT t.trace_id, len(list_distinct(list_filter(string_split(trim(coalesce(s.think_words, '')), ' '),
                          lambda w: regexp_full_match(w, '[a-z]{{3,}}') AND w NOT IN ({common})))) AS n
                   FROM traces t LEFT JOIN trace_columns s USING (trace_id) WHERE t.status = 'ok' AND t.task IN {COT})
        SELECT trace_id, n >= {c.substance.min_words}, CASE WHEN n < {c.substance.min_words} THEN 'no_substance' END,
               n::VARCHAR || ' words of its own'
        FROM x"""


def _leakage(c: RulesConfig, sid_re: str) -> str:
    k = c.leakage
    common = _common_words(c)
    words = f"regexp_extract_all(lower(coalesce({{}}, '')), '{WORD_RE}')"
    # Per item, once: its title n-grams and brand as ' w1 w2 ' strings and its rare words (the
    # candidates for a distinctive-token leak). The reasoning's and the history's words come from
    # trace_columns in the same form, so per trace only string containment is left.
    return f"""
        WITH words AS (SELECT item_id, sid_text, brand, {words.format('title')} AS title_words, {words.format('brand')} AS brand_words
                       FROM catalog),
        cat AS (SELECT item_id, sid_text, brand, title_words, len(brand_words) > 0 AS has_brand,
                       ' ' || array_to_string(brand_words, ' ') || ' ' AS brand_text,
                       list_transform(range(1, len(title_words) - {k.ngram - 2}),
                                      lambda i: ' ' || array_to_string(title_words[i:i + {k.ngram - 1}], ' ') || ' ') AS ngrams
                FROM words),
        df AS (SELECT w, count(DISTINCT item_id) / (SELECT count(*) FROM catalog)::DOUBLE AS share
               FROM cat, unnest(title_words) AS u(w) GROUP BY w),
        rare AS (SELECT DISTINCT cat.item_id, u.w, ' ' || u.w || ' ' AS padded FROM cat, unnest(cat.title_words) AS u(w)
                 LEFT JOIN df ON df.w = u.w
                 WHERE length(u.w) >= {k.min_token_chars} AND u.w NOT IN ({", ".join(f"'{w}'" for w in common)})
                   AND coalesce(df.share, 0) <= {k.max_token_df}),
        x AS (SELECT t.trace_id, t.target, c.sid_text AS target_sid, c.brand, c.has_brand, c.brand_text, c.ngrams,
                     contains({reasoning_sql("t.text")}, c.sid_text) AS leak_sid,
                     coalesce(s.history_brands, []) AS history_brands, coalesce(s.history_titles, '') AS history_titles,
                     coalesce(s.think_words, '') AS think_words
              FROM traces t JOIN cat c ON c.item_id = t.target LEFT JOIN trace_columns s USING (trace_id)
              WHERE t.status = 'ok' AND t.task IN {HINDSIGHT}),
        distinctive AS (SELECT x.trace_id, string_agg(r.w, ', ' ORDER BY r.w) AS words
                        FROM x JOIN rare r ON r.item_id = x.target
                        WHERE contains(x.think_words, r.padded) AND NOT contains(x.history_titles, r.padded)
                        GROUP BY x.trace_id),
        y AS (SELECT x.trace_id, x.target_sid, x.brand, x.leak_sid, d.words AS leaked_words,
                 list_filter(x.ngrams, lambda g: contains(x.think_words, g) AND NOT contains(x.history_titles, g)) AS leaked_ngrams,
                 x.has_brand AND NOT list_contains(x.history_brands, lower(x.brand))
                     AND NOT contains(x.history_titles, x.brand_text) AND contains(x.think_words, x.brand_text) AS leak_brand
              FROM x LEFT JOIN distinctive d USING (trace_id))
        SELECT trace_id, NOT (leak_sid OR len(leaked_ngrams) > 0 OR leak_brand OR leaked_words IS NOT NULL),
               CASE WHEN leak_sid THEN 'leak_sid' WHEN len(leaked_ngrams) > 0 THEN 'leak_title_ngram'
                    WHEN leak_brand THEN 'leak_brand' WHEN leaked_words IS NOT NULL THEN 'leak_token' END,
               CASE WHEN leak_sid THEN target_sid WHEN len(leaked_ngrams) > 0 THEN trim(leaked_ngrams[1])
                    WHEN leak_brand THEN brand ELSE leaked_words END
        FROM y"""


def _future(_: RulesConfig, sid_re: str) -> str:
    latest = "list_max(history_ts)"
    bad = f"({latest} >= target_ts OR (part = 'train' AND cutoff_ts IS NOT NULL AND (target_ts >= cutoff_ts OR {latest} >= cutoff_ts)))"
    return f"""SELECT trace_id, NOT {bad}, CASE WHEN {bad} THEN 'future_event' END,
                      printf('latest history %d, target %d, cut-off %s', {latest}, target_ts, coalesce(cutoff_ts::VARCHAR, 'none'))
               FROM traces WHERE target_ts IS NOT NULL AND len(history) > 0"""


def _blind_hit(c: RulesConfig, sid_re: str) -> str:
    """Open answers hit exactly or by a shared SID prefix; slate answers only exactly (the slate holds the item)."""
    k = c.blind_hit.prefix_levels
    return f"""
        WITH x AS (SELECT t.trace_id, {codes_sql("json_extract_string(t.output, '$.answer')")} AS got,
                          {codes_sql('c.sid_text')} AS want, json_extract_string(t.output, '$.answer') AS answer, c.sid_text
                   FROM traces t JOIN catalog c ON c.item_id = t.target
                   WHERE t.status = 'ok' AND t.task IN {BLIND}),
        s AS (SELECT t.trace_id, c.sid_text,
                     list_position(list_prepend(json_extract_string(t.output, '$.answer'),
                                                coalesce(json_extract_string(t.output, '$.alternatives[*]'), [])), c.sid_text) AS rank,
                     {SLATE_PICKS} AS k
              FROM traces t JOIN catalog c ON c.item_id = t.target
              WHERE t.status = 'ok' AND t.task IN {SLATE})
        SELECT trace_id, coalesce(got = want OR ({k} > 0 AND got[1:{k}] = want[1:{k}]), false) AS hit,
               CASE WHEN NOT hit THEN 'miss' END,
               CASE WHEN got = want THEN 'exact' WHEN {k} > 0 AND got[1:{k}] = want[1:{k}] THEN 'prefix' ELSE 'miss' END
                   || ': answer ' || coalesce(answer, '?') || ', next item ' || sid_text
        FROM x
        UNION ALL
        SELECT trace_id, rank IS NOT NULL, CASE WHEN rank IS NULL THEN 'slate_miss' END,
               CASE WHEN rank IS NULL THEN 'not in the top ' || k::VARCHAR ELSE 'rank ' || rank::VARCHAR || ' of the top ' || k::VARCHAR END
                   || ', next item ' || sid_text
        FROM s"""


RULES: dict[str, Callable[[RulesConfig, str], str]] = {
    "schema_valid": _schema_valid, "cot_format": _cot_format, "length": _length, "language": _language,
    "persona": _persona, "interests": _interests, "sid_validity": _sid_validity, "grounding": _grounding,
    "leakage": _leakage, "future": _future, "substance": _substance, "blind_hit": _blind_hit,
}


# rules that judge the teacher's answer or the sample, not the text: a correction of the reasoning cannot change them
ANSWER_RULES = frozenset({"schema_valid", "future", "blind_hit"})


def run_rules(store: Store, config: RulesConfig = RulesConfig()) -> dict[str, int]:
    """Recompute every enabled rule's verdicts (and the grounding scores); returns failures per rule."""
    failed: dict[str, int] = {}
    sid_re = store.sid_pattern()  # the catalog's own SID grammar, recorded when it was loaded
    with store.transaction():
        # built once: grounding reads the history's SIDs, leakage its titles, brands and the reasoning's words
        trace_columns(store, ("history_sids", "history_titles", "history_brands", "think_words"))
        # computed once: the grounding rule and the ehr / cov_rate scores both read it
        store.con.execute(f"CREATE OR REPLACE TEMP TABLE grounding AS {_grounding_table(sid_re)}")
        for name, rule in RULES.items():
            store.con.execute("DELETE FROM verdicts WHERE rule = ?", [name])
            if not getattr(config, name).enabled:
                continue
            store.con.execute(f"""INSERT INTO verdicts SELECT q.trace_id, '{name}', q.passed, q.reason, q.detail
                                  FROM ({rule(config, sid_re)}) AS q(trace_id, passed, reason, detail)""")
            failed[name] = store.scalar("SELECT count(*) FROM verdicts WHERE rule = ? AND NOT passed", [name])
        store.con.execute("INSERT OR REPLACE INTO meta VALUES ('rules_config', ?)", [config.model_dump_json()])
        store.con.execute("DELETE FROM scores WHERE name IN ('ehr', 'cov_rate')")
        store.con.execute("""INSERT INTO scores
            SELECT trace_id, 'ehr', ehr, '{"rule": "grounding"}' FROM grounding
            UNION ALL SELECT trace_id, 'cov_rate', cov_rate, '{"rule": "grounding"}' FROM grounding""")
    return failed


def check_texts(store: Store, relation: str, config: RulesConfig | None = None) -> list[tuple[str, str, str, str]]:
    """Every enabled rule on the store's traces with their text replaced by ``relation`` (``trace_id``, ``text``): a
    reviewer's correction is held to the rules a teacher's trace is. Returns the failures ``(trace_id, rule, reason,
    detail)``; nothing is written (verdicts, scores and the traces stay as they are). ``config``: the rules the store
    last ran (``rules_config``), else the defaults."""
    if config is None:
        recorded = store.meta("rules_config")
        config = RulesConfig.model_validate_json(recorded) if recorded else RulesConfig()
    sid_re, database = store.sid_pattern(), store.scalar("SELECT current_database()")
    # the temp schema is searched first: for this block, `traces` is the store's traces with the texts to check
    store.con.execute(f"""CREATE OR REPLACE TEMP VIEW traces AS SELECT t.* REPLACE (c.text AS text)
                          FROM "{database}".main.traces t JOIN ({relation}) c USING (trace_id)""")
    try:
        trace_columns(store, ("history_sids", "history_titles", "history_brands", "think_words"))
        store.con.execute(f"CREATE OR REPLACE TEMP TABLE grounding AS {_grounding_table(sid_re)}")
        failures = []
        for name, rule in RULES.items():
            if getattr(config, name).enabled and name not in ANSWER_RULES:
                failures += store.con.execute(f"""SELECT q.trace_id, '{name}', q.reason, q.detail
                    FROM ({rule(config, sid_re)}) AS q(trace_id, passed, reason, detail) WHERE NOT q.passed""").fetchall()
        return failures
    finally:
        store.con.execute("DROP VIEW IF EXISTS temp.main.traces")
        store.con.execute("DROP TABLE IF EXISTS temp.main.grounding")
