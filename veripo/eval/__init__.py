"""Evaluation of a policy on a record set: accuracy by problem type, MRA, format and the verifier's
inconsistency rate. Library: `evaluate`, `write_results`; command line: ``python -m veripo.eval``.

    from veripo.eval import evaluate, write_results
    result = evaluate(records, generate, make_request, judge=judge)
    write_results(result, out_dir, meta={"model": path})
"""

from veripo.eval.core import (
                              SAMPLE_KEYS,
                              SUMMARY_KEYS,
                              EvalResult,
                              GenerateFn,
                              evaluate,
                              format_summary,
                              write_results,
)

__all__ = ["SAMPLE_KEYS", "SUMMARY_KEYS", "EvalResult", "GenerateFn", "evaluate", "format_summary",
           "write_results"]
