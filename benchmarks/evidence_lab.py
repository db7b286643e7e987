"""The table ``make lab`` prints, as measured by ``python benchmarks/run.py lab``.

``bench_lab.py`` runs ``retain lab`` and saves its warm run's findings in
``results/evidence_lab.json``; this module renders them as the "lab" section of
docs/RESULTS.md (``python benchmarks/evidence_guards.py --render`` rebuilds the document).
"""

from __future__ import annotations

from retain.lab.story import markdown_table


def markdown(result: dict) -> str:
    lines = [
        "## `make lab`: the story on the lab model (issue 8)\n",
        f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py lab` (runs `retain lab`, "
        "default size, seed 0, cold and then warm; this is the warm run). Seed 0 is the seed the recipe "
        "search chose the lab's recipe at, so the recipe's row here is not evidence for it: the methods and "
        "guard sections judge it on seeds 1 and up. General accuracy and forgetting are on all 337 lab probes "
        "(by generation), none of which any training row states. Each step's one-line finding, as printed:\n",
    ]
    for name, line in result["lines"].items():
        lines.append(f"- **{name}**: {line}")
    lines += ["", markdown_table(result["rows"])]
    cold = {row["model"]: row for row in result.get("cold_rows", [])}
    differ = [row["model"] for row in result["rows"]
              if row["model"] in cold and (cold[row["model"]]["task"], cold[row["model"]]["forgetting"])
              != (row["task"], row["forgetting"])]
    lines.append("\nThe cold run of the same command gave "
                 + ("the same task accuracy and forgetting in every row." if not differ else
                    "other figures in: " + ", ".join(differ) + ".")
                 + " Figures move with the seed (`retain lab --seed N`), with the number of CPU threads "
                 "and with the CPU (floating-point sums in another order); RESULTS.md's guard and method "
                 "sections give the spread over seeds.\n")
    return "\n".join(lines)
