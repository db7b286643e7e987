"""lm-evaluation-harness tasks as probe suites (optional: ``pip install "retain[lmeval]"``).

``--suite lmeval:hellaswag`` (or ``lmeval:arc_easy,piqa``, or ``lmeval:my_task@DIR`` for
task YAML files in DIR) turns the named multiple-choice tasks into one probe suite, one
category per task, scored by retain's own engine: log-likelihood ranking and generation,
forgetting per category with intervals. Only lm-eval's task definitions and data are
used, and the data must already be where lm-eval finds it (the Hugging Face datasets
cache, or local files named by the task YAML): without network access nothing is
downloaded, and a task whose data is missing is a clear error.
"""

from __future__ import annotations

import hashlib
from typing import Any

from retain.errors import DataError
from retain.evaluation.probes import ProbeItem, ProbeSuite

PREFIX = "lmeval:"


def is_lmeval_name(name: str) -> bool:
    """Returns whether a suite name refers to lm-evaluation-harness tasks."""
    return name.startswith(PREFIX)


def load_lmeval_suite(name: str, limit: int | None = None) -> ProbeSuite:
    """Returns the lm-eval tasks named in ``name`` as one probe suite.

    Args:
        name: ``lmeval:`` then comma-separated task names, optionally ``@DIR`` for a
            folder of extra task YAML files (lm-eval's ``--include_path``).
        limit: At most this many items per task (the first ones).

    Raises:
        DataError: If lm-eval is not installed, a task is unknown, not multiple-choice,
            or its data is not available offline.
    """
    spec, _, include_path = name.removeprefix(PREFIX).partition("@")
    tasks = [task.strip() for task in spec.split(",") if task.strip()]
    if not tasks:
        raise DataError("no lm-eval task named", field="probes.suites",
                        fix="write lmeval:TASK, e.g. lmeval:arc_easy")
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise DataError(
            "lm-evaluation-harness is not installed", field="probes.suites",
            fix='pip install "retain[lmeval]" (or lm_eval), or use a built-in or file suite',
        ) from None
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    items: list[ProbeItem] = []
    delimiter = " "
    for task_name in tasks:
        task = _load_task(task_name, manager, get_task_dict)
        delimiter = getattr(task.config, "target_delimiter", " ")
        items += _task_items(task_name, task, limit)
    digest = hashlib.sha256("\n".join(f"{i.id}\t{i.prompt}\t{i.answer}" for i in items).encode()).hexdigest()[:12]
    return ProbeSuite(name=name, version=f"lm-eval-{digest}", items=tuple(items), delimiter=delimiter,
                      description=f"lm-evaluation-harness tasks: {', '.join(tasks)}")


def _load_task(task_name: str, manager: Any, get_task_dict: Any) -> Any:
    if task_name not in manager.all_tasks:
        raise DataError(f"lm-eval has no task '{task_name}'", field="probes.suites",
                        fix="list tasks with `lm-eval ls tasks`; for your own task YAML write lmeval:TASK@DIR")
    try:
        if hasattr(manager, "load"):  # newer lm-eval; get_task_dict is deprecated there
            task = manager.load([task_name])["tasks"][task_name]
        else:
            task = get_task_dict([task_name], manager)[task_name]
    except Exception as error:  # lm-eval raises anything from datasets/hub when data is missing
        raise DataError(
            f"lm-eval task '{task_name}' could not load its data ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})",
            field="probes.suites",
            fix="download the dataset once with network access (it is then cached), or point "
            "the task at local files",
        ) from None
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice" and task.config.output_type != "multiple_choice":
        raise DataError(f"lm-eval task '{task_name}' is not multiple-choice ({task.config.output_type})",
                        field="probes.suites", fix="use multiple-choice tasks (log-likelihood over options)")
    return task


def _task_items(task_name: str, task: Any, limit: int | None) -> list[ProbeItem]:
    docs = list(task.eval_docs)
    if limit is not None:
        docs = docs[:limit]
    items = []
    for index, doc in enumerate(docs):
        text, choices, target = task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)
        choices = [str(choice) for choice in choices]
        answer = choices[target] if isinstance(target, int) and 0 <= target < len(choices) else str(target)
        if not isinstance(text, str) or len(set(choices)) != len(choices) or answer not in choices:
            continue  # multi-context items (winogrande) and ambiguous options are not probes
        items.append(ProbeItem(
            id=f"{task_name}/{index}",
            category=task_name,
            prompt=text,
            answer=answer,
            options=tuple(choices),
        ))
    return items
