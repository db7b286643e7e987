"""retain's forgetting mitigations for a trainer of your own (``transformers.Trainer``,
TRL's ``SFTTrainer`` and ``DPOTrainer``), each one of ``retain train``'s methods driven
from outside it: rehearsal as data (:mod:`retain.dropin.rows`: ``replay``,
``self_rehearsal``, ``check_rehearsal``) and the EWC and L2-SP penalties as callbacks
(:mod:`retain.dropin.penalties`: ``ewc``, ``l2sp``). ``retain.RetainCallback``, the guards
for the same trainers, is :mod:`retain.guards.dropin`.
"""
