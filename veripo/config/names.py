"""The names of registries whose entries live beside torch code, declared here so that a recipe is checked
without importing torch (a config error must come back in well under 2 s; importing torch takes 2-9 s).

The pattern, for any registry a config field chooses from:

- the registry itself stays where its code is (``veripo.algos``: ``KL_ESTIMATORS``, ...), filled by
  ``@REG.register(name)`` as before;
- the config field names it with ``choice(default, registry_choices("veripo.algos", "KL_ESTIMATORS"))``;
- if that module imports torch, its names are also listed in `DECLARED` below, keyed ``"module.ATTR"``.

`registry_choices` then answers from the live registry when its module is already imported (so a name a
plugin registered at run time is accepted), else from `DECLARED`, and imports the module only for a
registry that is neither (correct, but slow: a torch-free registry such as ``veripo.rewards.REWARDS``
costs nothing to import). ``tests/test_config.py`` imports each declared registry and fails when its names
and the declared ones differ, or when a config field chooses from a torch-side registry not declared here:
adding a registry or a name means adding it here too, and that test says so.
"""

from __future__ import annotations

DECLARED: dict[str, tuple[str, ...]] = {
    "veripo.algos.ADV_ESTIMATORS": ("grpo", "drgrpo", "rloo", "reinforce_pp"),
    "veripo.algos.POLICY_LOSSES": ("vanilla", "ppo_clip", "gspo", "gspo_token", "cispo"),
    "veripo.algos.ROLLOUT_CORRECTIONS": ("tis", "mis", "monitor"),
    "veripo.algos.KL_ESTIMATORS": ("k1", "abs", "k2", "k3"),
    "veripo.algos.AGG_MODES": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"),
    "veripo.algos.PREFERENCE_LOSSES": ("sigmoid", "robust", "cdpo", "ipo", "hinge", "rrpo", "leanpo", "simpo"),
}

# the preference losses whose `PreferenceLoss.uses_label_smoothing` is true (preference.label_smoothing
# is checked against it at config time)
SMOOTHED_PREFERENCE_LOSSES: tuple[str, ...] = ("robust", "cdpo", "leanpo")
