"""Scores of the evaluate stage that need no model."""
import json

from pipelines.stages.evaluate import json_scores


def test_json_scores_table():
    ref = json.dumps({"intent": "card_arrival", "amount": None, "urgency": "high"})
    cases = [(ref, 1.0, 1.0), ('{"intent": "card_arrival", "amount": null, "urgency": "normal"}', 1.0, 2 / 3),
             ('{"intent": "card_arrival"', 0.0, 0.0), ("[1, 2]", 0.0, 0.0), ('{"other": 1}', 1.0, 0.0)]
    for answer, valid, fields in cases:
        assert json_scores(answer, ref) == {"json_valid": valid, "field_match": fields}, answer
