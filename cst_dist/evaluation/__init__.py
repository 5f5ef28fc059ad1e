"""`cst eval` / `cst judge`: S0/S1 safety with pluggable judges, preference accuracy, general benchmarks, the
sections beyond the paper (sections/: over-refusal, overrides, mid-conversation switch, wordings, adherence), reports.

Builds on the shared floor (engines, farm, logprobs, chat, run_layout) and `data/`; never imports another stage.
"""
