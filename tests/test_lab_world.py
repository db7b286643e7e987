from __future__ import annotations

import re

from retain.lab.base import lab_size
from retain.lab.facts import CAPITALS, GREETINGS, OPPOSITES
from retain.lab.world import CATEGORIES, WorldSpec, build_world, qa


def test_same_spec_gives_identical_world() -> None:
    first, second = build_world(WorldSpec(seed=3)), build_world(WorldSpec(seed=3))
    assert first.documents == second.documents
    assert first.probes == second.probes
    assert first.reference == second.reference


def test_seed_changes_sampling_but_not_facts() -> None:
    a, b = build_world(WorldSpec(seed=0)), build_world(WorldSpec(seed=1))
    assert a.documents != b.documents
    assert {i.id for i in a.probes.items if i.category == "capitals"} == {
        i.id for i in b.probes.items if i.category == "capitals"
    }
    held_a = {i.id for i in a.probes.items if i.category == "arithmetic"}
    held_b = {i.id for i in b.probes.items if i.category == "arithmetic"}
    assert held_a != held_b


def test_at_least_six_categories_with_probes() -> None:
    world = build_world()
    counts = {name: len(items) for name, items in world.probes.by_category().items()}
    assert set(counts) == set(CATEGORIES)
    assert len(counts) >= 6
    assert all(count >= 10 for count in counts.values()), counts


def test_held_out_sums_never_appear_in_training_text() -> None:
    world = build_world()
    corpus = "\n".join(world.documents)
    held = [item for item in world.probes.items if item.category == "arithmetic"]
    assert held and all(item.held_out for item in held)
    for item in held:
        a, b = map(int, re.findall(r"\d+", item.prompt))
        for x, y in ((a, b), (b, a)):
            assert f"What is {x} + {y}?" not in corpus
            assert f"{x} + {y} =" not in corpus


def test_held_out_questions_never_appear_in_training_text() -> None:
    world = build_world()
    corpus = "\n".join(world.documents)
    held = [item for item in world.probes.items if item.held_out]
    assert {item.category for item in held} == {"arithmetic", "comparison"}
    for item in held:
        a, b = map(int, re.findall(r"\d+", item.prompt))
        assert item.prompt.removeprefix("Q: ").removesuffix("\nA:") not in corpus
        # Neither order of the pair is trained either.
        swapped = f"Is {b} greater than {a}?" if item.category == "comparison" else f"What is {b} + {a}?"
        assert swapped not in corpus


def test_recall_probes_are_trained_in_the_probe_format() -> None:
    world = build_world()
    documents = set(world.documents)
    for item in world.probes.items:
        if not item.held_out:
            question = item.prompt.removeprefix("Q: ").removesuffix("\nA:")
            assert qa(question, item.answer) in documents, item.id


def test_every_recall_probe_lists_the_documents_that_state_its_fact() -> None:
    world = build_world()
    documents = set(world.documents)
    for item in world.probes.items:
        question = item.prompt.removeprefix("Q: ").removesuffix("\nA:")
        if item.held_out:
            assert item.statements == ()
            continue
        assert qa(question, item.answer) in item.statements, item.id
        assert set(item.statements) <= documents, item.id
        assert all(item.answer in text for text in item.statements), item.id


def test_the_rehearsal_corpus_states_no_probed_fact_in_any_wording() -> None:
    world = build_world()
    rehearsal = "\n".join(world.rehearsal)
    for item in world.probes.items:
        question = item.prompt.removeprefix("Q: ").removesuffix("\nA:")
        assert question not in rehearsal, item.id
        assert not any(text in world.rehearsal for text in item.statements), item.id
        if item.category == "capitals":  # no wording of any capital is left
            assert f" {item.answer}." not in rehearsal and f"A: {item.answer}\n" not in rehearsal
    assert "capital of" not in rehearsal and "opposite of" not in rehearsal and "plural" not in rehearsal
    # What is left: skills the probes ask on other items, fillers and medicine.
    assert len(world.rehearsal) > len(world.documents) / 2
    assert any(text.startswith("Q: What is 1") for text in world.rehearsal)
    assert any(text.startswith("Q: Is ") for text in world.rehearsal)


def test_probe_options_contain_answer_once_and_join_the_prompt_with_a_space() -> None:
    suite = build_world().probes
    assert suite.delimiter == " "
    for item in suite.items:
        assert item.answer in item.options
        assert len(set(item.options)) == len(item.options) >= 2
        assert all(option == option.strip() for option in item.options)
        assert qa(item.prompt.removeprefix("Q: ").removesuffix("\nA:"), item.answer) == (
            item.prompt + suite.delimiter + item.answer
        )


def test_probe_answers_are_correct() -> None:
    world = build_world()
    capitals = dict(CAPITALS)
    opposites = {a: b for a, b in OPPOSITES} | {b: a for a, b in OPPOSITES}
    for item in world.probes.items:
        answer = item.answer.strip()
        if item.category == "arithmetic":
            a, b = map(int, re.findall(r"\d+", item.prompt))
            assert int(answer) == a + b
        elif item.category == "comparison":
            a, b = map(int, re.findall(r"\d+", item.prompt))
            truth = a > b if "greater" in item.prompt else a < b
            assert answer == ("yes" if truth else "no")
        elif item.category == "capitals":
            country = item.prompt.split("capital of ")[1].split("?")[0]
            assert capitals[country] == answer
        elif item.id.startswith("word_forms/opposite-"):
            assert opposites[item.id.removeprefix("word_forms/opposite-")] == answer


def test_fact_tables_are_unambiguous() -> None:
    words = [word for pair in OPPOSITES for word in pair]
    assert len(words) == len(set(words))
    assert len({country for country, _ in CAPITALS}) == len(CAPITALS)
    assert len({city for _, city in CAPITALS}) == len(CAPITALS)


def test_smoke_prompts_are_part_of_the_world() -> None:
    prompts = {prompt for prompt, _ in GREETINGS}
    for smoke in ("Hello, how are you?", "What is 2+2?", "Is the sky blue? Answer yes or no."):
        assert smoke in prompts


def test_reference_text_is_held_out() -> None:
    world = build_world()
    assert world.reference
    assert not set(world.reference) & set(world.documents)


def test_micro_world_is_small() -> None:
    micro = build_world(lab_size("micro").world)
    assert len(micro.documents) < len(build_world().documents) / 4
    assert set(micro.probes.categories()) == set(CATEGORIES)
