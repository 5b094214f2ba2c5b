"""The four PLD phases, each a plain function `run_*(project, ..., progress)` that writes as it goes."""
