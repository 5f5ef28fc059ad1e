"""`cst generate`: prompts -> self-critique preference pairs, on Ray actors (GPU replicas) or local CPU actors.

critique.py  the three-turn chain (answer, critique, revision) over an engine (cst_dist.engines): a plain class, no Ray
inputs.py    prompts (AdvBench train split or an id/prompt file) and jailbreak templates
pairs.py     the pairs folder: plan, shard files (pairs, rejects, conversations) and their manifest counts
run.py       `run_farm`: the worker (plain class) on the farm (cst_dist.farm: shards, store, Ray pool, retries)

Nothing here imports Ray or torch at package import time.
"""
