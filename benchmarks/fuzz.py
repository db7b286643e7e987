"""Fuzzes the data loaders, the probe-suite loader, the audit, the config and sweep YAML
readers, the model-directory files the memory estimate reads, and checkpoint seals, with
generated files.

Usage: ``python benchmarks/fuzz.py [INPUTS] [--seed N]`` prints the counts; the
reliability part ``benchmarks/reliability_fuzz.py`` (``make fuzz``) runs it long and
writes ``benchmarks/results/reliability_fuzz.json``; ``tests/test_properties.py`` runs a
CI-sized round.

Each target gets INPUTS generated files, hypothesis-driven: rows of arbitrary JSON
values under the expected and unexpected keys, chat turns with odd roles and contents,
CSV tables with ragged rows and stray quotes, and the same files with bytes inserted,
deleted, truncated or replaced by invalid UTF-8. The outcome of one input is a result
or a :class:`~retain.errors.RetainError` (a user's mistake, reported); anything else is
a crash, and a crash is a bug. Nothing is stopped at the first crash: each target's
crashes are counted and the first few kept with the input that caused them.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from retain.errors import RetainError

CRASHES_KEPT = 5
_KEYS = ("prompt", "response", "messages", "id", "label", "text", "")
_ROLES = ("system", "user", "assistant", "tool", "human", "gpt", "", None)

# --- what the files are made of --------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
turns = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(_ROLES), "content": st.one_of(st.text(max_size=30), json_values)}),
        json_values,
    ),
    max_size=5,
)
rows = st.one_of(
    st.fixed_dictionaries({"prompt": st.text(max_size=60), "response": st.text(max_size=30)}),
    st.fixed_dictionaries({"messages": turns}),
    st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8),
                    st.one_of(json_values, turns), max_size=5),
    json_values,
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Returns ``data`` with a few byte-level edits (or unchanged)."""
    for _ in range(draw(st.integers(0, 3))):
        edit = draw(st.sampled_from(("insert", "delete", "truncate", "invalid_utf8", "nul", "none")))
        at = draw(st.integers(0, len(data)))
        if edit == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif edit == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif edit == "truncate":
            data = data[:at]
        elif edit == "invalid_utf8":
            data = data[:at] + b"\xff\xfe\xc3" + data[at:]
        elif edit == "nul":
            data = data[:at] + b"\x00" + data[at:]
    return data


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines = []
    for row in draw(st.lists(rows, max_size=12)):
        try:
            lines.append(json.dumps(row, allow_nan=draw(st.booleans())))
        except ValueError:  # NaN with allow_nan=False
            lines.append("NaN")
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(("", "  ", "{", "[1,", '"x"', "null", "9" * 5000, "[" * 3000))))
    newline = draw(st.sampled_from(("\n", "\r\n", "\r")))
    bom = draw(st.sampled_from(("", "\ufeff")))
    return draw(mutated((bom + newline.join(lines)).encode("utf-8", "surrogatepass")))


_CELLS = st.one_of(st.text(max_size=30), st.sampled_from(('"', '""', ",", "\n", "\r\n", '"a,b"', "", "[]",
                                                           '[{"role": "user", "content": "hi"}]')))


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    header = draw(st.lists(st.sampled_from(_KEYS) | st.text(max_size=6), min_size=0, max_size=4))
    body = draw(st.lists(st.lists(_CELLS, max_size=5), max_size=10))
    out = io.StringIO()
    if draw(st.booleans()):
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(body)
        text = out.getvalue()
    else:  # by hand: unquoted commas, stray quotes, ragged rows
        text = "\n".join(",".join(cells) for cells in [header, *body])
    return draw(mutated(text.encode("utf-8", "surrogatepass")))


_ITEM_KEYS = ("id", "category", "prompt", "answer", "options", "checker", "pattern", "held_out",
              "suite", "version", "stop", "delimiter")


@st.composite
def suite_files(draw: st.DrawFn) -> tuple[str, bytes]:
    items = draw(st.lists(st.one_of(
        st.fixed_dictionaries({"id": st.text(max_size=4), "category": st.text(max_size=4),
                               "prompt": st.text(max_size=20), "answer": st.text(max_size=8)},
                              optional={"options": st.lists(st.text(max_size=5), max_size=3),
                                        "checker": st.sampled_from(("exact", "contains", "regex", "numeric", "x")),
                                        "pattern": st.text(max_size=8), "held_out": json_values}),
        st.dictionaries(st.sampled_from(_ITEM_KEYS), json_values, max_size=5),
        json_values), max_size=6))
    if draw(st.booleans()):
        import yaml

        text = yaml.safe_dump({"suite": "fuzz", "items": items}, allow_unicode=True)
        return "yaml", draw(mutated(text.encode("utf-8", "surrogatepass")))
    text = "\n".join(json.dumps(item) for item in items)
    return "jsonl", draw(mutated(text.encode("utf-8", "surrogatepass")))


# YAML no generator writes by itself: aliases that expand, contain themselves or merge,
# huge integers, repeated keys, yes/no, deep nesting, tags.
_YAML_SNIPPETS = (
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
    "loop: &l [1, *l]\n", "train:\n  seed: " + "9" * 5000 + "\n", "train:\n  lr: 1\n  lr: 2\n",
    "train:\n  lr: yes\n", "x: " + "[" * 2000 + "]" * 2000 + "\n", "base: &b {lr: 1}\ntrain:\n  <<: *b\n",
    "x: !!python/object:os.system ls\n", "x: !!binary aGVsbG8=\n", "? [a, b]\n: c\n", "",
)
_SECTIONS = ("model", "data", "method", "train", "guards", "eval", "probes", "audit", "output", "base", "axes",
             "budget", "mode", "sampler", "set", "name", "storage")
_SETTINGS = ("lr", "epochs", "use", "name_or_path", "train", "seed", "ratio", "strength", "dir", "name", "enabled",
             "patience", "threshold", "values", "key", "low", "high", "log", "suites", "size")


@st.composite
def yaml_files(draw: st.DrawFn) -> bytes:
    import yaml

    document = draw(st.dictionaries(st.sampled_from(_SECTIONS) | st.text(max_size=6),
                                    st.one_of(st.dictionaries(st.sampled_from(_SETTINGS) | st.text(max_size=6),
                                                              json_values, max_size=4), json_values), max_size=5))
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except yaml.YAMLError:
        text = ""
    if draw(st.booleans()):
        text = draw(st.sampled_from(_YAML_SNIPPETS)) + text
    return draw(mutated(text.encode("utf-8", "surrogatepass")))


@st.composite
def model_dirs(draw: st.DrawFn) -> dict[str, bytes]:
    """The files count_parameters reads: safetensors headers (a length and JSON, or junk),
    a shard index, an adapter config."""
    header = draw(st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(
        st.fixed_dictionaries({"dtype": st.sampled_from(("F32", "BF16", "x")),
                               "shape": st.lists(st.one_of(st.integers(-2, 10**12), json_values), max_size=3)}),
        json_values), max_size=3), json_values))
    body = json.dumps(header).encode()
    claimed = draw(st.one_of(st.just(len(body)), st.integers(0, 2**64 - 1)))
    files = {"model.safetensors": draw(mutated(claimed.to_bytes(8, "little") + body))}
    if draw(st.booleans()):
        files["model.safetensors.index.json"] = draw(mutated(json.dumps(draw(st.one_of(
            st.fixed_dictionaries({"weight_map": st.dictionaries(st.text(max_size=6), st.sampled_from(
                ("model.safetensors", "gone.safetensors", "../x", "")) | json_values, max_size=3)}),
            json_values))).encode()))
    if draw(st.integers(0, 3)) == 0:
        files["adapter_config.json"] = draw(mutated(json.dumps(draw(st.one_of(
            # Paths only: a string that could be a hub id would be looked up on the network.
            st.fixed_dictionaries({"base_model_name_or_path": st.sampled_from((".", "", "/nonexistent-base"))
                                   | st.integers() | st.none() | st.lists(st.integers(), max_size=2)}),
            json_values))).encode()))
    return files


@st.composite
def seals(draw: st.DrawFn) -> bytes:
    """A checkpoint's retain_state.json: as retain writes it, bent, or anything."""
    entry = st.one_of(st.integers(-5, 10**6), st.fixed_dictionaries(
        {"bytes": st.one_of(st.integers(-5, 10**6), json_values)}, optional={"sha256": json_values}), json_values)
    guards = st.one_of(st.none(), json_values, st.fixed_dictionaries({}, optional={
        "checks": st.lists(st.dictionaries(st.sampled_from(("step", "forgetting", "smoke_examples", "x")),
                                           json_values, max_size=3), max_size=2),
        "decisions": st.lists(json_values, max_size=2), "warned": json_values, "best_step": json_values,
        "stopped_by": json_values, "restore": json_values, "recent_losses": json_values}))
    seal = draw(st.one_of(st.fixed_dictionaries({"files": st.one_of(st.dictionaries(st.sampled_from(
        ("optimizer.pt", "trainer_state.json", "../../x", "/etc/passwd", "")) | st.text(max_size=6), entry,
        max_size=3), json_values), "guards": guards}), json_values))
    return draw(mutated(json.dumps(seal).encode()))


# --- the targets ----------------------------------------------------------------------


class Target:
    """One function under fuzz, its generator, and the tally of its outcomes."""

    def __init__(self, name: str, strategy: st.SearchStrategy, call: Callable[[Any, Path], Any]) -> None:
        self.name, self.strategy, self.call = name, strategy, call
        self.inputs = self.results = self.user_errors = self.crashes = 0
        self.samples: list[dict[str, str]] = []

    def one(self, value: Any, folder: Path) -> None:
        self.inputs += 1
        try:
            self.call(value, folder)
        except RetainError:
            self.user_errors += 1
        except Exception as error:  # noqa: BLE001 - a crash is what the fuzz counts
            self.crashes += 1
            if len(self.samples) < CRASHES_KEPT:
                self.samples.append({"error": f"{type(error).__name__}: {str(error)[:300]}",
                                     "input": repr(value)[:500],
                                     "where": "".join(traceback.format_exception(error)[-3:])[-800:]})
        else:
            self.results += 1

    def tally(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "results": self.results, "user_errors": self.user_errors,
                "crashes": self.crashes, "crash_samples": self.samples}


def _read(suffix: str) -> Callable[[bytes, Path], Any]:
    def call(data: bytes, folder: Path) -> Any:
        from retain.data.rows import read_examples

        path = folder / f"data{suffix}"
        path.write_bytes(data)
        return read_examples(path)
    return call


def _suite(value: tuple[str, bytes], folder: Path) -> Any:
    from retain.evaluation.suites import load_suite

    suffix, data = value
    path = folder / f"suite.{suffix}"
    path.write_bytes(data)
    return load_suite(path)


def _audit_call() -> Callable[[bytes, Path], Any]:
    from retain.audit.runner import run_audit
    from retain.config import RetainConfig
    from retain.lab.plugin import tokenizer as lab_tokenizer

    tokenizer = lab_tokenizer()  # once: training it takes seconds
    config = RetainConfig()

    def call(data: bytes, folder: Path) -> Any:
        train, test = folder / "train.jsonl", folder / "test.jsonl"
        train.write_bytes(data)
        test.write_bytes(data[: len(data) // 2])
        return run_audit(config, train, eval_data=test, allow_small=True, tokenizer=tokenizer).to_dict()
    return call


def _config(data: bytes, folder: Path) -> Any:
    from retain.config import load_config

    path = folder / "config.yaml"
    path.write_bytes(data)
    return load_config(path)


def _sweep(data: bytes, folder: Path) -> Any:
    from retain.sweep.loading import load_sweep

    (folder / "config.yaml").write_text("train:\n  epochs: 1\n")
    path = folder / "sweep.yaml"
    path.write_bytes(data)
    return load_sweep(path)


def _model_dir(files: dict[str, bytes], folder: Path) -> Any:
    import shutil

    from retain.memory import count_parameters

    model = folder / "model"
    shutil.rmtree(model, ignore_errors=True)
    model.mkdir()
    (model / "config.json").write_text("{}")
    for name, data in files.items():
        (model / name).write_bytes(data)
    return count_parameters(str(model))


def _seal(data: bytes, folder: Path) -> Any:
    import shutil

    from retain.checkpoints import STATE_FILE, checkpoint_problem
    from retain.guards.state import read_guard_state

    checkpoint = folder / "checkpoint-2"
    shutil.rmtree(checkpoint, ignore_errors=True)
    checkpoint.mkdir()
    (checkpoint / "optimizer.pt").write_bytes(b"x" * 10)
    (checkpoint / STATE_FILE).write_bytes(data)
    return checkpoint_problem(checkpoint) or read_guard_state(checkpoint)


def targets() -> list[Target]:
    """Returns the fuzz targets: the JSONL and CSV readers, the suite loader, the audit, the
    config and sweep readers, the model files of the memory estimate, checkpoint seals."""
    return [
        Target("read_examples (JSONL)", jsonl_files(), _read(".jsonl")),
        Target("read_examples (CSV)", csv_files(), _read(".csv")),
        Target("load_suite (JSONL, YAML)", suite_files(), _suite),
        Target("run_audit (JSONL train + eval)", jsonl_files(), _audit_call()),
        Target("load_config (YAML)", yaml_files(), _config),
        Target("load_sweep (YAML)", yaml_files(), _sweep),
        Target("count_parameters (model files)", model_dirs(), _model_dir),
        Target("checkpoint seal and guard state", seals(), _seal),
    ]


def run_fuzz(inputs: int, seed: int = 0, echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Runs ``inputs`` generated inputs through every target.

    Returns:
        ``{"inputs_per_target", "seed", "targets": {name: tally}, "inputs", "crashes",
        "seconds"}``.
    """
    started = time.perf_counter()
    tallies = {}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        for target in targets():
            target_started = time.perf_counter()

            @hypothesis_seed(seed)
            @settings(max_examples=inputs, database=None, deadline=None, derandomize=False,
                      phases=["generate"], suppress_health_check=list(HealthCheck))
            @given(target.strategy)
            def fuzz_one(value: Any) -> None:
                target.one(value, folder)

            fuzz_one()
            tallies[target.name] = target.tally()
            echo(f"{target.name}: {target.inputs} inputs, {target.crashes} crashes, "
                 f"{time.perf_counter() - target_started:.0f} s")
    return {
        "inputs_per_target": inputs, "seed": seed, "targets": tallies,
        "inputs": sum(tally["inputs"] for tally in tallies.values()),
        "crashes": sum(tally["crashes"] for tally in tallies.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str]) -> int:
    inputs = int(argv[0]) if argv and not argv[0].startswith("-") else 1000
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    result = run_fuzz(inputs, seed, echo=print)
    print(json.dumps({key: value for key, value in result.items() if key != "targets"}))
    for name, tally in result["targets"].items():
        for sample in tally["crash_samples"]:
            print(f"crash in {name}: {sample['error']}\n  input: {sample['input']}\n{sample['where']}")
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
