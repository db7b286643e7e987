"""The probe checkers on real chat answers: what SmolLM2-135M-Instruct said to items of the
general suite (greedy, its chat template, 64 new tokens; collected with retain's own
generation on 2026-12-06), each judged by hand. A chat model restates the question,
explains, then answers ("To add 68 and 54 ... 68 + 54 = 122."), so the first number or
an exact match would score a right answer wrong, and the forgetting guard would read a
change of style as forgetting."""

from __future__ import annotations

import pytest

from retain.evaluation.probes import ProbeItem, answer_number, check_answer
from retain.evaluation.suites import load_suite

# (item, its answer, right by hand, what the model said). Hand count: 6 of 20 right
# (001, 002, 006, 007, 009, 018); the rest state a wrong result, some after a right one
# restated from the question ("90 - 45 = 15").
ARITHMETIC = [
    ('arith-001', '12', True,
     '7 + 5 = 12\n\nThis is a classic example of arithmetic operations in Python, where the addition of 5 and 7 is performed using the `+` operator.'),
    ('arith-002', '17', True,
     'To add 9 and 8, you simply add them together: 9 + 8 = 17.'),
    ('arith-003', '42', False,
     '23 + 19 = 32\n\nThis is a classic example of how math can be used to solve seemingly complex problems. In this case, the answer is based on the concept of arithmetic and the properties of numbers.'),
    ('arith-004', '83', False,
     '46 + 37 = 121\n\nThis is a classic example of arithmetic with a twist. The original equation 46 + 37 is indeed 121, which is the result of 46 + 37, which is 121.'),
    ('arith-005', '375', False,
     '125 + 250 = 325\n\nThis is a classic example of arithmetic with a twist. The original equation 125 + 250 is indeed 325, but when you add 250, you get 325. This is a'),
    ('arith-006', '122', True,
     'To add 68 and 54, we need to combine the numbers 68 and 54. We can do this by adding them together: 68 + 54 = 122.\n\nThis is a classic example of how to perform arithmetic operations within a specific range.'),
    ('arith-007', '750', True,
     '300 + 450 = 750\n\nThis is a classic example of arithmetic with a twist. The original equation 300 + 450 is indeed 750, but when you add 450 to it, you get 750. This'),
    ('arith-008', '200', False,
     '199 + 1 = 201'),
    ('arith-009', '45', True,
     '17 + 28 = 45\n\nThis is a classic example of arithmetic with a twist. In mathematics, 17 + 28 is indeed 45, which is the result of 17 and 28 being added to themselves.'),
    ('arith-010', '7', False,
     '15 - 8 = 9'),
    ('arith-011', '27', False,
     'To find 50 - 23, we need to subtract 23 from 50. \n\n50 - 23 = 23 - 23 = 0\n\nSo, 50 - 23 is indeed 0.'),
    ('arith-012', '63', False,
     '100 - 37 = 23\n\nThis is a classic example of how math can be used to solve problems that involve subtraction. In this case, the problem asks for a number that is 100 - 37, which is 23. This type of problem is often'),
    ('arith-013', '52', False,
     'To calculate 81 - 29, we need to subtract 29 from 81. \n\n81 - 29 = 57\n\nSo, 81 - 29 is 57.'),
    ('arith-014', '999', False,
     '1000 - 1 = 1000\n\nThis is a mathematical operation that is equivalent to 1000 - 1, which is 1001.'),
    ('arith-015', '48', False,
     'To calculate 64 - 16, we need to subtract 16 from 64, which is 12. So, 64 - 16 = 12.'),
    ('arith-016', '175', False,
     '250 - 75 = 125'),
    ('arith-017', '45', False,
     'To solve this problem, we need to first find the difference between 90 and 45.\n\nThe difference between 90 and 45 is 15.\n\nSo, 90 - 45 = 15 is the answer.'),
    ('arith-018', '42', True,
     'To find 6 times 7, we can multiply 7 by itself, which gives us 7. So, 6 times 7 is 42.'),
    ('arith-019', '72', False,
     'To find 8 times 9, we can multiply 8 by itself, which gives us 8*8*8*8*8*8 = 5160. Now, we can add 9 to this result to get 5160.\n\nSo, 8 times '),
    ('arith-020', '144', False,
     '12 * 12 = 120\n\nThis is the result of the multiplication of 12 by itself, which is 120.'),
]
HAND_COUNT = 6

# Yes/no and pick-one items (checker ``label``): the model says "No, ..." to nearly every
# question; only the two reading items it answers "no" to are right.
LABELS = [
    ('common-001', 'yes', False,
     'Fish do not live in water. They are primarily found in aquatic environments, such as oceans, rivers, and lakes, where they play a crucial role in the ecosystem. They are predators that feed on various organisms, including other fish, and are also a food source for other animals.'),
    ('common-002', 'yes', False,
     'No, the answer to this question is not necessarily "faster" in temperature terms. Ice is a solid substance, whereas water is a liquid substance. The difference between these two substances lies in their physical properties. Water is composed of molecules that are less dense than ice, which is why it is less dense than ice'),
    ('common-003', 'yes', False,
     'The answer to this question is no. The sun does not rise in the east.'),
    ('common-004', 'yes', False,
     'No, a kitten is not a young cat. A kitten is a domesticated animal that is typically considered to be a young cat. However, there are some domesticated animals that are considered to be young cats, such as kittens, which are typically considered to be kittens.'),
    ('common-005', 'yes', False,
     'No, an umbrella is not designed to help you stay dry in the rain. An umbrella is a tool designed to protect people from heavy rain, not to keep them dry.'),
    ('common-006', 'yes', False,
     'The answer to this classic question is not a logical one. The glass is not broken because it is not a physical object that can be shattered or shattered. The glass is a material that can be damaged or damaged by the action of dropping. The glass is a physical object that can be damaged by the action of dropping,'),
    ('common-007', 'yes', False,
     'No, a week has 5hrs.'),
    ('common-008', 'yes', False,
     "It's not always darker at midnight than at noon. In fact, it can be anywhere in between. The reason is that the human body has a circadian rhythm, which regulates our sleep-wake cycle. When we're awake, our body is active and focused, and our internal clock is set to a specific time."),
    ('common-009', 'yes', False,
     'No, a typical piece of dry wood does not float on water. This is a fundamental concept in physics, specifically in the realm of buoyancy. When a piece of dry wood is placed in water, it will sink, but it will not float. This is because the density of dry wood is lower than that of water'),
    ('common-010', 'yes', False,
     'While both cars and people can move, the speed difference is negligible when considering the physical capabilities of both. Cars can reach speeds of up to 60 mph (97 km/h) while people can reach speeds of up to 60 mph (97 km/h) in a single lap. This'),
    ('common-011', 'yes', False,
     'No, plants do not need water to grow. They are a vital part of the ecosystem, and they require a variety of nutrients to survive. However, they do need water to grow, as they require a source of carbon dioxide to produce their own food.'),
    ('common-012', 'yes', False,
     'No, a candle would not melt if it were left next to a hot fire. The heat from the fire would cause the wax to melt, but the wax itself would not melt. The heat from the fire would cause the wax to crackle and crackle, but the wax itself would not melt.'),
    ('read-020', 'no', True,
     "No, Nora did not wake up at the time she planned. She missed the school bus, which was scheduled for seven o'clock."),
    ('read-029', 'no', True,
     'No, Diego was not allowed to go on the trip. He had finished his homework and was not allowed to go on the trip.'),
    ('lang-046', 'an', False,
     'The article "I ate an apple" is a blank sentence.'),
    ('lang-047', 'a', False,
     'The article is "She rode a horse"'),
    ('lang-048', 'an', False,
     'The article is a.'),
]


def _item(item_id: str) -> ProbeItem:
    return next(item for item in load_suite("general").items if item.id == item_id)


@pytest.mark.parametrize(("item_id", "answer", "right", "said"), ARITHMETIC + LABELS,
                         ids=[row[0] for row in ARITHMETIC + LABELS])
def test_each_real_chat_answer_is_judged_as_by_hand(item_id: str, answer: str, right: bool, said: str) -> None:
    item = _item(item_id)
    assert item.answer == answer
    assert check_answer(item, said) is right


def test_arithmetic_by_the_checker_is_within_5_points_of_the_hand_count() -> None:
    by_checker = sum(check_answer(_item(item_id), said) for item_id, _, _, said in ARITHMETIC)
    assert abs(by_checker - HAND_COUNT) / len(ARITHMETIC) <= 0.05, (by_checker, HAND_COUNT)


@pytest.mark.parametrize(("said", "number"), [
    ("12", 12), ("7 + 5 = 12", 12), ("The sum of 7 and 5 is 12.", 12), ("So, 6 times 7 is 42.", 42),
    ("The answer: 1,200 apples", 1200), ("3 apples and 4 more, so 7", 7), ("-3", -3), ("about .5", 0.5),
    ("no idea", None), ("x equals $15", 15), ("7 plus 5 makes 12, I think", 12),
])
def test_the_answer_number_is_the_stated_result_else_the_last(said: str, number: float | None) -> None:
    assert answer_number(said) == number


@pytest.mark.parametrize(("said", "right"), [
    ("yes", True), ("Yes, fish live in water.", True), ("**Yes**. Fish live in water.", True),
    ("The answer is yes.", True), ("Answer: yes", True), ("No, they do not.", False), ("yes or no", False),
    ("Fish do not live in water.", False), ("", False), ("I think yes", False),
])
def test_a_yes_no_item_reads_the_label_the_answer_commits_to(said: str, right: bool) -> None:
    assert check_answer(_item("common-001"), said) is right
