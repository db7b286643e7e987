"""How a row becomes tokens, in one place: reading rows (:mod:`~retain.data.rows`), the prompt
format and rendering (:mod:`~retain.data.prompting`), encoding and collators
(:mod:`~retain.data.encoding`), and the perturbations of a prompt
(:mod:`~retain.data.perturb`). Training, evaluation, the audit and the doctor all import
from here; nothing here imports them."""
