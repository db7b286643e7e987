"""The guards: pure judges of one check (:mod:`~retain.guards.rules`), what a check
measures (:mod:`~retain.guards.measure`), what the guards remember
(:mod:`~retain.guards.state`), and the trainer callback that runs them
(:mod:`~retain.guards.callback`)."""
