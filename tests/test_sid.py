"""SID codec: dialect round trips, detection, malformed input, catalog validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recot.formats.sid import SidDialect, SidError, parse_sid

DIALECTS = [
    SidDialect(),
    SidDialect("s_"),
    SidDialect("", "<|sid_begin|>", "<|sid_end|>"),
    SidDialect("s_", "<|sid_begin|>", "<|sid_end|>"),
]


@given(codes=st.lists(st.integers(0, 4095), min_size=1, max_size=8), source=st.sampled_from(DIALECTS),
       target=st.sampled_from(DIALECTS))
def test_round_trip_between_any_dialects(codes, source, target):
    text = source.format(codes)
    parsed, detected = parse_sid(text)
    assert parsed == tuple(codes) and detected == source
    assert target.parse(target.format(parsed)) == tuple(codes)


def test_known_forms():
    assert SidDialect().format([12, 3, 77]) == "<a_12><b_3><c_77>"
    assert SidDialect("s_").format([12, 3, 77, 5]) == "<s_a_12><s_b_3><s_c_77><s_d_5>"
    assert SidDialect.detect("<|sid_begin|><s_a_1><s_b_2><|sid_end|>") == DIALECTS[3]
    assert SidDialect().tokens([2, 1]) == ["<a_0>", "<a_1>", "<b_0>"]
    assert DIALECTS[2].tokens([1])[-2:] == ["<|sid_begin|>", "<|sid_end|>"]


@pytest.mark.parametrize("text, says", [
    ("<a_1><c_2>", "levels must run a, b, c"),
    ("<a_1><b_x>", "expected one token per level"),
    ("a_1 b_2", "expected one token per level"),
    ("<|sid_begin|><a_1><b_2>", "begin marker needs an end marker"),
    ("<a_1><s_b_2>", "mix prefixes"),
    ("", "malformed SID ''"),
])
def test_malformed_sids_are_named(text, says):
    with pytest.raises(SidError, match=says) as err:
        parse_sid(text)
    assert repr(text) in str(err.value)


def test_dialect_parse_refuses_other_dialect():
    with pytest.raises(SidError, match="dialect"):
        SidDialect().parse("<s_a_1><s_b_2>")


def test_catalog_lookup_and_collisions(sample):
    cat = sample.catalog
    first = cat.sid_text()[0]
    found = cat.lookup([first, "<a_999><b_0><c_0>", "<a_1><c_1>", ""])
    assert found["status"].to_list() == ["ok", "unknown", "malformed", "malformed"]
    assert cat.items["item_id"][0] in found["item_ids"][0]
    summary = cat.collision_summary()
    assert summary["items_with_sid"] == len(cat)
    assert summary["distinct_sids"] == cat.sid_text().n_unique()


def test_full_set_collision_report_matches_card(full_path):
    from recot.data.loaders import load_dataset

    cat = load_dataset(full_path).catalog
    summary = cat.collision_summary()
    # The data card: 3,686 items, 3,670 distinct SIDs, 16 items share a SID with another item.
    assert (summary["items_with_sid"], summary["distinct_sids"]) == (3686, 3670)
    assert summary["items_in_collisions"] - summary["collision_groups"] == 16
    assert cat.levels == 3 and max(cat.codebook_sizes) == 256


def test_a_wrapped_dialect_survives_the_minionerec_token_lists(tmp_path):
    """sids.json holds token lists: the begin/end markers must be written as tokens, not dropped."""
    import json

    from recot.data.sid_files import convert_sid_file
    from recot.formats.sid import SidDialect, parse_sid_values

    (tmp_path / "sids.json").write_text(json.dumps({"1": ["<a_1>", "<b_2>"], "2": ["<a_3>", "<b_4>"]}))
    wrapped = SidDialect.detect("<|sid_begin|><s_a_0><|sid_end|>")
    convert_sid_file(tmp_path / "sids.json", tmp_path / "out.json", wrapped)
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["1"] == ["<|sid_begin|>", "<s_a_1>", "<s_b_2>", "<|sid_end|>"]
    assert parse_sid_values(written.values()).dialect == wrapped
