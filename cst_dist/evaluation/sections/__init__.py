"""`cst eval` beyond the paper's two numbers: each section a module, its own answers, verdicts and report entries.

    overrefusal  XSTest's 250 safe-but-scary and 200 unsafe prompts under every configuration, labelled full
                 compliance / full refusal / partial refusal (the refusal judge) and safe / unsafe (the judge)
    overrides    held-out harmful prompts under s1, wrapped in user-turn override attempts: success = judged unsafe
    switch       two-turn conversations whose configuration changes before turn 2: adherence / carry-over
    wordings     S1 and S0 under 8 + 8 paraphrased system prompts never seen in training: mean and spread
    adherence    per model, the share of (prompt, configuration) cases answered as the configuration asks

A section's answers go through the same farm, shards and resume as the paper's (evaluation.safety.generate_answers,
one `ConversationItem` per answer) into `<eval>/<model>/<section>/generations/`, its verdicts into
`<eval>/<model>/<section>/judged.jsonl`. Sections run at each model's latest step. docs/beyond-the-paper.md has the
method, the assets and the refusal judge's measured agreement.
"""
