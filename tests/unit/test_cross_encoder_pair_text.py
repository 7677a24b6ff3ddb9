"""What the cross-encoder reads: the mention marked in its context, the name with its semantic types."""

from experiments.cross_encoder.pair_text import candidate_input, context, mention_input, segments
from experiments.cross_encoder.records import Pair

DOC = "Risk of RI after surgery. RI was performed in 40 patients under general anaesthesia."


def test_context_takes_whole_words_on_each_side_within_the_document():
    start = DOC.index("RI was")
    assert context(DOC, start, start + 2, 3) == ("RI after surgery.", "was performed in")
    assert context(DOC, 8, 10, 10) == ("Risk of", "after surgery. RI was performed in 40 patients under general")
    assert context(DOC, 0, 4, 2) == ("", "of RI")
    assert context(DOC, 8, 10, 0) == ("", "")


def test_the_two_segments():
    assert mention_input("RI", "Risk of", "after surgery.") == "Risk of [ RI ] after surgery."
    assert mention_input("RI", "", "") == "[ RI ]"
    assert candidate_input("Renal imaging", ["Therapeutic or Preventive Procedure"]) == \
        "Renal imaging ( Therapeutic or Preventive Procedure )"
    assert candidate_input("X", ["A", "B"]) == "X ( A ; B )" and candidate_input("X", []) == "X"


def test_one_ambiguous_name_gives_different_inputs_per_concept_and_context():
    """The same string under two concepts of different types, in two sentences: four distinct inputs,
    where the mention and the name alone would give one."""
    shown = {segments(Pair(0, "RI", "RI", cui, 0, "hard", left, "", [tui]))
             for cui, tui in (("C1", "Disease or Syndrome"), ("C2", "Therapeutic or Preventive Procedure"))
             for left in ("patients with", "Patients who underwent")}
    assert len(shown) == 4
