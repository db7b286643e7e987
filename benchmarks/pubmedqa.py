"""PubMedQA's expert-labelled set (PQA-L) as retain data: a worked example of converting a
real dataset.

Usage: ``python benchmarks/pubmedqa.py ../shared/data/pubmedqa OUT_DIR`` writes
``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` into OUT_DIR and prints their
sizes. The dataset stays outside the repository (its path is an argument).

The source (Jin et al., 2019, arXiv 1909.06146) is ``ori_pqal.json``: ``{pmid: {QUESTION,
CONTEXTS, final_decision, ...}}``, 1,000 items labelled yes, no or maybe; and
``test_ground_truth.json``: the 500 pmids of the official test split. Each item becomes one
prompt/response row: the abstract's context paragraphs, the question, and the instruction
to answer with one of the labels; the response is the label. The official test split is
``test.jsonl``; the other 500 items are split, in file order, into 400 training rows and
100 validation rows (the order is the authors', not a shuffle of ours).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VALIDATION = 100


def prompt(item: dict) -> str:
    """The question as retain asks it: context, question, the labels to choose from."""
    context = "\n".join(item["CONTEXTS"])
    return f"Context:\n{context}\n\nQuestion: {item['QUESTION']}\nAnswer yes, no or maybe."


def convert(source: Path, out: Path) -> dict[str, int]:
    """Writes the three splits into ``out``; returns each split's row count.

    Raises:
        SystemExit: With one line when ``source`` lacks the dataset's files.
    """
    try:
        items = json.loads((source / "ori_pqal.json").read_text(encoding="utf-8"))
        test_ids = set(json.loads((source / "test_ground_truth.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise SystemExit(f"{source}: not PubMedQA's PQA-L folder ({error}); it holds ori_pqal.json and "
                         "test_ground_truth.json") from None
    rows = {pmid: {"prompt": prompt(item), "response": item["final_decision"]} for pmid, item in items.items()}
    pool = [row for pmid, row in rows.items() if pmid not in test_ids]
    splits = {"train": pool[: len(pool) - VALIDATION], "validation": pool[len(pool) - VALIDATION:],
              "test": [row for pmid, row in rows.items() if pmid in test_ids]}
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split), encoding="utf-8")
    return {name: len(split) for name, split in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the PubMedQA folder (ori_pqal.json, test_ground_truth.json)")
    parser.add_argument("out", type=Path, help="where to write train/validation/test.jsonl")
    args = parser.parse_args()
    for name, count in convert(args.source, args.out).items():
        print(f"{count:>5}  {args.out / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
