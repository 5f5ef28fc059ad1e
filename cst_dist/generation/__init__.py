"""`cst generate`: prompts -> self-critique preference pairs, on Ray actors (GPU replicas) or local CPU actors.

engines.py   `generate(conversations, sampling) -> texts`: HF transformers (batched), vLLM (optional), recording
critique.py  the three-turn chain (answer, critique, revision) over an engine: a plain class, no Ray
inputs.py    prompts (AdvBench train split or an id/prompt file) and jailbreak templates
store.py     shard plan, atomic shard files, manifest (resume)
cluster.py   Ray connection (RAY_ADDRESS or local), replica sizing, placement groups
farm.py      the worker (plain class) and the driver loop: shards to actors, retries, progress

Nothing here imports Ray or torch at package import time.
"""
