"""The stages the loop runs: each is a function of the run's workers and config, with the details."""
