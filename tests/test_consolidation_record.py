"""What a consolidation writes down (its record, read back by `corp rebuild` and the experiment's
resume) and the fix/regression count the released Stage 2 sorts by."""

import json

import numpy as np

from corp.method.consolidate import (ConsolidationResult, Decision, fixes_minus_regressions,
                                     member_from_json, member_json)
from corp.method.perturb import Member

BIG = 2 ** 63 - 25  # a 63-bit seed: a JSON reader that parses numbers as doubles would round it


def test_a_record_round_trips_through_json_text():
    update = Member((BIG, 7), (1e-3, -2.5e-4))
    candidate = Member((BIG, 7, 9), (1e-3, -2.5e-4, 3e-4))
    decisions = [Decision("stage1", True, {"q": 0.9, "gate": {"lcb": 0.01}}),
                 Decision("stage2", False, {"round": 0, "why": "gate"})]
    result = ConsolidationResult(update, decisions, "stage 1 accepted", candidate)
    obj = result.to_json()
    assert set(obj) == {"update", "candidate", "reason", "decisions"}
    assert obj["update"] == {"seeds": [str(BIG), "7"], "coeffs": [1e-3, -2.5e-4]}
    assert obj["candidate"]["seeds"] == [str(BIG), "7", "9"]
    assert obj["reason"] == "stage 1 accepted"
    assert obj["decisions"][1] == {"stage": "stage2", "accepted": False,
                                   "detail": {"round": 0, "why": "gate"}}
    back = ConsolidationResult.from_json(json.loads(json.dumps(obj)))
    assert back == result
    assert back.update.seeds[0] == BIG and isinstance(back.update.coeffs[0], float)


def test_the_base_model_is_recorded_as_no_update():
    result = ConsolidationResult(None, [], "no update passed its gate")
    obj = result.to_json()
    assert obj["update"] is None and obj["candidate"] is None and obj["decisions"] == []
    assert ConsolidationResult.from_json(obj) == result
    assert member_json(None) is None and member_from_json(None) is None
    # an older record without candidate/decisions/reason still reads
    assert ConsolidationResult.from_json({"update": None}) == ConsolidationResult(None, [], "")


def test_member_json_keeps_seeds_exact_as_strings():
    m = Member((BIG, 1), (0.5, -0.25))
    assert member_json(m) == {"seeds": [str(BIG), "1"], "coeffs": [0.5, -0.25]}
    assert member_from_json(member_json(m)) == m


def test_fixes_minus_regressions_counts_partial_credit_above_one_half():
    new = np.array([1.0, 1.0, 0.0, 0.0, 0.6, 0.4])
    old = np.array([0.0, 1.0, 1.0, 0.0, 0.4, 0.6])
    # fixes: 0 (0 -> 1) and 4 (0.4 -> 0.6); regressions: 2 (1 -> 0) and 5 (0.6 -> 0.4);
    # 1 and 3 unchanged
    assert fixes_minus_regressions(new, old) == 0
    assert fixes_minus_regressions(new[:5], old[:5]) == 1
    assert fixes_minus_regressions(old[:5], new[:5]) == -1
    assert fixes_minus_regressions(np.ones(3), np.ones(3)) == 0
    assert fixes_minus_regressions(np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 0.0])) == 2
