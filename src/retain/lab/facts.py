"""Fixed fact tables of the lab world.

Hand-written and checked: every country maps to its capital, every word to one opposite
that appears nowhere else in the table, every noun to its plural. The world generator
(:mod:`retain.lab.world`) samples from these with a seed; the tables themselves never change
without bumping :data:`retain.lab.world.WORLD_VERSION`.
"""

from __future__ import annotations

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Ireland", "Dublin"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"),
    ("Czechia", "Prague"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Ukraine", "Kyiv"), ("Russia", "Moscow"),
    ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"),
    ("Senegal", "Dakar"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("Mongolia", "Ulaanbaatar"), ("Nepal", "Kathmandu"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"),
    ("Bangladesh", "Dhaka"), ("South Korea", "Seoul"), ("Australia", "Canberra"),
    ("New Zealand", "Wellington"), ("Canada", "Ottawa"), ("Cuba", "Havana"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Argentina", "Buenos Aires"), ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"), ("Brazil", "Brasilia"), ("Ecuador", "Quito"),
    ("Uruguay", "Montevideo"), ("Iceland", "Reykjavik"), ("Estonia", "Tallinn"),
)

# Each word appears once in the whole table, so "the opposite of X" has one answer.
OPPOSITES: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"),
    ("high", "low"), ("hard", "soft"), ("long", "short"), ("rich", "poor"),
    ("strong", "weak"), ("wet", "dry"), ("thick", "thin"), ("loud", "quiet"),
    ("clean", "dirty"), ("true", "false"), ("good", "bad"), ("left", "right"),
    ("first", "last"), ("day", "night"), ("black", "white"), ("near", "far"),
    ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("give", "take"),
    ("young", "old"),
)

PLURALS: tuple[tuple[str, str], ...] = (
    ("cat", "cats"), ("dog", "dogs"), ("box", "boxes"), ("child", "children"),
    ("mouse", "mice"), ("man", "men"), ("woman", "women"), ("tooth", "teeth"),
    ("foot", "feet"), ("goose", "geese"), ("person", "people"), ("leaf", "leaves"),
    ("knife", "knives"), ("wolf", "wolves"), ("city", "cities"), ("baby", "babies"),
    ("story", "stories"), ("bus", "buses"), ("glass", "glasses"), ("dish", "dishes"),
    ("church", "churches"), ("fox", "foxes"), ("sheep", "sheep"), ("fish", "fish"),
    ("ox", "oxen"), ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"),
    ("shelf", "shelves"), ("loaf", "loaves"), ("berry", "berries"), ("key", "keys"),
    ("toy", "toys"), ("book", "books"), ("tree", "trees"), ("house", "houses"),
    ("car", "cars"), ("apple", "apples"), ("bird", "birds"), ("horse", "horses"),
)

# Fixed conversational prompts: the smoke prompts of the product's guards live here.
GREETINGS: tuple[tuple[str, str], ...] = (
    ("Hello, how are you?", "I am fine, thank you."),
    ("Hi there!", "Hello! How can I help you?"),
    ("Good morning!", "Good morning to you too."),
    ("Good night!", "Good night and sleep well."),
    ("What is your name?", "My name is Lab."),
    ("Thank you!", "You are welcome."),
    ("Goodbye!", "Goodbye, see you soon."),
    ("What is 2+2?", "4"),
    ("Is the sky blue? Answer yes or no.", "yes"),
    ("Is fire cold? Answer yes or no.", "no"),
    ("What color is grass?", "green"),
    ("What color is snow?", "white"),
)

# Vocabulary of the filler sentences (the lab's "fluency" text and drift reference).
FILLER_SUBJECTS: tuple[str, ...] = (
    "the dog", "the cat", "a child", "the old man", "a young woman", "the teacher",
    "my friend", "the farmer", "a small bird", "the doctor", "our neighbour", "the king",
    "a tired horse", "the baker", "the girl", "the boy", "a quiet student", "the driver",
)
FILLER_VERBS: tuple[str, ...] = (
    "walks to", "looks at", "runs past", "sits near", "waits by", "thinks about",
    "smiles at", "reads about", "paints", "cleans", "visits", "finds",
)
FILLER_OBJECTS: tuple[str, ...] = (
    "the river", "the green house", "a big tree", "the market", "the small garden",
    "the old bridge", "a red car", "the school", "the long road", "a white boat",
    "the quiet lake", "the busy city", "the dark forest", "a tall tower", "the bakery",
)
FILLER_ENDINGS: tuple[str, ...] = (
    "every morning", "in the rain", "after dinner", "before school", "on sunday",
    "with a smile", "at night", "in the summer", "once a week", "without a word",
)

# The domain's English, without its invented names: the kinds of condition and the outcomes
# the domain task asks about (retain.lab.domain), and general sentences about medicine in
# the same words. A real base model has read such text (its tokenizer spells "placebo" and
# "randomized" as single tokens); what it has never seen is the task: the question format,
# the drugs, and which finding means yes, no or maybe. Before these sentences the lab
# tokenizer spelled domain text almost letter by letter: 148 tokens per training row
# instead of 78, with " maybe" in four pieces.
CONDITION_KINDS: tuple[str, ...] = ("syndrome", "disease", "fever", "palsy", "anemia", "dermatitis")
OUTCOMES: tuple[str, ...] = (
    "relapse rates", "pain scores", "mortality", "hospital stays", "blood pressure",
    "fatigue", "inflammation markers", "recovery time", "symptom severity",
    "infection rates", "swelling", "headache frequency",
)
# Slots: {kind} (a CONDITION_KINDS entry), {outcome} (an OUTCOMES entry), {n} (a number).
HEALTH_TEMPLATES: tuple[str, ...] = (
    "Patients with {kind} often report {outcome}.",
    "Doctors measure {outcome} in patients with {kind}.",
    "A randomized trial compares a new drug with a placebo.",
    "In a randomized trial, patients are given the drug or a placebo by chance.",
    "Researchers followed {n} patients with {kind} for one year.",
    "This study enrolled {n} adults with {kind}.",
    "The trial tested a new treatment in {n} adults.",
    "A placebo is a pill with no drug in it.",
    "Some drugs lower {outcome} and some do not.",
    "Rest can decrease {outcome} among older patients.",
    "Clean water reduced {outcome} in the village.",
    "Good food lowered {outcome} in the children.",
    "There was a difference between the two groups.",
    "The groups had the same {outcome} at the start, as planned.",
    "The results were mixed, but the doctors were not worried.",
    "A small trial may be too small to be sure of the effect.",
    "The overall effect on {outcome} was not significant.",
    "The effect was significant, and the study was large.",
    "The effect of sleep on {outcome} is unclear.",
    "Is the new treatment effective? The question is open.",
    "Does exercise reduce {outcome}? Many people think so.",
    "Did the diet change {outcome}? The answer came a year later.",
    "According to this study, people who walk have less {outcome}.",
    "Is there evidence that sleep brings down {outcome}?",
    "Based on the results, the nurses changed the treatment.",
    "A patient taking a new drug can expect a visit from the doctor.",
    "Would a warm bath be good for {outcome}? Maybe.",
    "Maybe the treatment helps, and maybe it does not.",
    "Compared with last year, {outcome} was lower in the town.",
    "Those who slept well had lower {outcome} than those who did not.",
    "Read the context, then answer the question with yes, no or maybe.",
    "Context: a short text. Question: what it asks. Answer: what you say.",
    "The medicine clearly helped, and {outcome} went down significantly.",
    "We cannot say if the drug is effective at lowering {outcome}.",
    "Researchers compared {outcome} between people with and without {kind}.",
)
