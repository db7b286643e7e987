"""Tests for the overlap checks: planted flaws are found and counted, clean data is quiet."""

from __future__ import annotations

from collections import Counter

import pytest

from retain.audit.contamination import blended_contamination, contamination, rehearsed_ids
from retain.audit.overlap import conflicting_labels, exact_duplicates, near_duplicates, normalize_text
from retain.data.rows import Example
from retain.evaluation.probes import ProbeItem, ProbeSuite
from retain.lab.domain import DomainExample, DomainSpec, build_domain
from retain.lab.world import build_world

_CLEAN = [
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
    ("Name the largest planet in the solar system.", "Jupiter is the largest planet."),
    ("Who wrote the play Hamlet?", "William Shakespeare wrote Hamlet."),
    ("Translate 'good morning' into French.", "Bonjour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What gas do plants take in for photosynthesis?", "Carbon dioxide."),
]


def _rows(pairs: list[tuple[str, str]]) -> list[Example]:
    return [Example(prompt=p, response=r, line=i + 1) for i, (p, r) in enumerate(pairs)]


def _examples(rows: tuple[DomainExample, ...]) -> list[Example]:
    return [Example(prompt=e.prompt, response=e.response, line=i + 1) for i, e in enumerate(rows)]


def test_normalize_text() -> None:
    assert normalize_text("  Hello,\n  WORLD!! ") == "hello, world"
    assert normalize_text(" yes") == normalize_text("Yes.")


def test_clean_list_gives_nothing() -> None:
    rows = _rows(_CLEAN)
    assert exact_duplicates(rows) is None
    assert near_duplicates(rows) is None
    assert conflicting_labels(rows) is None
    assert contamination(rows[:3], rows[3:]) == []


def test_exact_duplicates_counts_redundant_rows() -> None:
    rows = _rows(_CLEAN + [
        ("who wrote the play  hamlet", "William Shakespeare wrote Hamlet"),
        ("Who wrote the play Hamlet?", "William Shakespeare wrote Hamlet."),
        ("Translate 'good morning' into French.", "bonjour"),
    ])
    finding = exact_duplicates(rows)
    assert finding is not None and finding.code == "exact_duplicates"
    assert finding.count == 3 and finding.severity == "warning"
    assert finding.examples[0] == {"line": 7, "text": "who wrote the play hamlet", "same_as": 3}
    assert finding.details == {"clusters": 2, "largest_cluster": 3}


def test_near_duplicates_cluster_edited_rows_but_not_exact_copies() -> None:
    long_prompt = "Summarise the quarterly report of the northern branch, focusing on revenue growth."
    rows = _rows(_CLEAN + [
        (long_prompt, "Revenue grew by twelve percent, driven by new contracts."),
        (long_prompt.replace("northern", "northen"), "Revenue grew by twelve percent, driven by new contracts."),
        (long_prompt, "Revenue grew by twelve percent, driven by new contracts."),  # exact copy
        (long_prompt + " Thanks", "Revenue grew by twelve percent, driven by new contracts."),
    ])
    finding = near_duplicates(rows)
    assert finding is not None
    assert finding.count == 2
    assert finding.examples[0]["cluster"] == [7, 8, 10]
    assert finding.details["clusters"] == 1 and finding.details["threshold"] == 0.8
    assert "2 near-duplicate row(s) in 1 cluster(s) (Jaccard >= 0.8)" == finding.title


def test_conflicting_labels_exact_and_near_prompts() -> None:
    prompt = ("In a trial of 200 adults with mild hypertension, half took the new drug for a "
              "year. Does the new drug reduce blood pressure compared with placebo?")
    rows = _rows(_CLEAN + [
        (prompt, "yes"), (prompt.upper(), "No."),
        (prompt.replace("200", "201"), "maybe"), (prompt, "yes"),
    ])
    finding = conflicting_labels(rows)
    assert finding is not None
    assert finding.count == 2  # two rows off the majority answer "yes"
    assert finding.severity == "blocker"  # 2 of 10 rows > 1%
    assert finding.examples[0]["line"] == 7 and finding.examples[0]["other_answer"] == "No."


def test_conflicting_labels_warning_below_one_percent() -> None:
    rows = _rows([(f"Question number {i} about topic {i * 7}?", f"answer {i}") for i in range(200)]
                 + [("Question number 3 about topic 21?", "another answer")])
    finding = conflicting_labels(rows)
    assert finding is not None and finding.count == 1 and finding.severity == "warning"


def test_contamination_eval_rows_and_probes() -> None:
    train = _rows(_CLEAN + [("What is 17 + 25?", "42"), ("Capital of Peru?", "Lima")])
    eval_rows = [
        Example("What is the boiling point of water at sea level", "100", line=1),
        Example("Who wrote the play Hamlett?", "Shakespeare", line=2),  # near copy
        Example("What colour is the sky on a clear day?", "Blue", line=3),
    ]
    suite = ProbeSuite(name="toy", version="1", items=(
        ProbeItem(id="a", category="arithmetic", prompt="What is 17 + 25?", answer="42"),
        ProbeItem(id="b", category="capitals", prompt="Capital of Chile?", answer="Santiago"),
    ))
    findings = {finding.code: finding for finding in contamination(train, eval_rows, [suite])}
    overlap = findings["train_eval_overlap"]
    assert overlap.count == 2 and overlap.severity == "blocker"
    assert "2 of 3 evaluation row(s)" in overlap.title
    assert [example["line"] for example in overlap.examples] == [1, 2]
    probe = findings["probe_contamination"]
    assert probe.count == 1 and probe.severity == "warning"
    assert "measures nothing" in probe.title and probe.examples[0]["item"] == "a"
    assert probe.examples[0]["line"] == 7


def test_a_statement_of_a_probed_fact_in_training_counts_as_contamination() -> None:
    suite = ProbeSuite(name="toy", version="1", items=(
        ProbeItem(id="peru", category="capitals", prompt="Q: What is the capital of Peru?\nA:", answer="Lima",
                  statements=("The capital of Peru is Lima.",)),
        ProbeItem(id="chile", category="capitals", prompt="Q: What is the capital of Chile?\nA:",
                  answer="Santiago", statements=("The capital of Chile is Santiago.",)),
    ))
    train = _rows(_CLEAN + [("Tell me a fact.", "The capital of Peru is Lima")])
    (probe,) = contamination(train, None, [suite])
    assert probe.count == 1 and probe.examples[0]["item"] == "peru" and probe.examples[0]["line"] == 7
    assert rehearsed_ids(probe) == {"toy": ["peru"]}


def test_blended_rows_are_checked_and_the_finding_names_their_source() -> None:
    suite = ProbeSuite(name="toy", version="1", items=(
        ProbeItem(id="sum", category="arithmetic", prompt="Q: What is 17 + 25?\nA:", answer="42"),
        ProbeItem(id="sky", category="facts", prompt="Q: What colour is the sky?\nA:", answer="blue"),
    ))
    texts = ["A plain sentence about nothing.", "Q: What is 17 + 25?\nA: 42", "Another plain sentence."]
    probe = blended_contamination(texts, [suite], "replay rows from general.txt")
    assert probe is not None and probe.count == 1 and probe.examples[0]["line"] == 2
    assert "appear in replay rows from general.txt" in probe.title and rehearsed_ids(probe) == {"toy": ["sum"]}
    assert blended_contamination(texts[::2], [suite], "replay rows") is None
    assert rehearsed_ids(None) == {}


def test_the_lab_rehearsal_corpus_holds_no_probe_and_its_pretraining_corpus_every_recall_probe() -> None:
    """The audit's own proof that the lab's replay source does not rehearse its probes."""
    world = build_world()
    assert blended_contamination(list(world.rehearsal), [world.probes], "lab rehearsal") is None
    leaked = blended_contamination(list(world.documents), [world.probes], "lab pretraining")
    recall = {item.id for item in world.probes.items if not item.held_out}
    assert leaked is not None and set(rehearsed_ids(leaked)["lab"]) == recall and len(recall) == 217


@pytest.fixture(scope="module")
def flawed_lab() -> tuple[list[Example], list[Example], Counter[str | None]]:
    task = build_domain(DomainSpec(
        n_train=400, n_validation=20, n_test=100, n_ood=20,
        duplicates=0.05, conflicts=0.03, contamination=0.05,
    ))
    flaws = Counter(example.flaw for example in task.train)
    return _examples(task.train), _examples(task.test), flaws


def test_lab_flaws_are_counted_exactly(flawed_lab) -> None:
    train, test, flaws = flawed_lab
    assert flaws["duplicate"] and flaws["near_duplicate"] and flaws["conflict"] and flaws["contamination"]
    assert exact_duplicates(train).count == flaws["duplicate"]
    assert near_duplicates(train).count == flaws["near_duplicate"]
    assert conflicting_labels(train).count == flaws["conflict"]
    (overlap,) = contamination(train, test)
    assert overlap.code == "train_eval_overlap" and overlap.count == flaws["contamination"]


def test_clean_lab_gives_nothing() -> None:
    task = build_domain(DomainSpec(n_train=400, n_validation=20, n_test=100, n_ood=20))
    train, test = _examples(task.train), _examples(task.test)
    assert exact_duplicates(train) is None
    assert near_duplicates(train) is None
    assert conflicting_labels(train) is None
    assert contamination(train, test) == []
