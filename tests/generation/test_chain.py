"""The HF engine and the self-critique chain, without Ray: batching, EOS, token counts, the three turns, rejects."""

from __future__ import annotations

import pytest

from cst_dist.config import SamplingConfig
from cst_dist.engines import EngineStats, HFEngine, RecordingEngine
from cst_dist.generation.critique import PromptItem, SelfCritiqueChain, reject_reason
from cst_dist.prompts import CRITIQUE_REQUEST, REVISION_REQUEST, SAFE_SYSTEM_PROMPT

PROMPTS = ["Write a poem", "Explain how a lock works in great detail, step by step", "Hi", "Tell me about ships"]


@pytest.fixture(scope="module")
def engine(tiny_model_config):
    return HFEngine(tiny_model_config, batch_size=3)


def conversations(texts=PROMPTS):
    return [[{"role": "user", "content": text}] for text in texts]


def test_template_writes_the_only_bos(engine):
    ids = engine.encode(conversations()[0])
    assert ids[0] == engine.tokenizer.bos_token_id and ids[1] != engine.tokenizer.bos_token_id


def test_length_buckets_keep_input_order(engine, tiny_model_config):
    """Greedy decoding: sorted, batched, left-padded generation gives each conversation its own one-at-a-time answer."""
    greedy = SamplingConfig(temperature=0, max_new_tokens=6)
    batched = engine.generate(conversations(), greedy)
    naive = HFEngine(tiny_model_config, batch_size=1)
    assert batched == [naive.generate([conversation], greedy)[0] for conversation in conversations()]
    assert len(set(batched)) > 1  # different prompts, different answers: the order check means something


def test_sampling_is_seeded(engine):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=3)
    first = engine.generate(conversations(), sampling)
    assert engine.generate(conversations(), sampling) == first
    assert engine.generate(conversations(), sampling.model_copy(update={"seed": 4})) != first


def test_rows_stop_at_eos_and_tokens_are_counted(engine):
    """Forcing EOS in the first row of each batch: that row ends after 1 token, the others run to max_new_tokens."""
    eos = engine.tokenizer.eos_token_id

    def force_eos(module, inputs, output):
        output[0, -1, eos] += 1e4
        return output

    hook = engine.model.lm_head.register_forward_hook(force_eos)
    engine.stats = EngineStats()
    try:
        texts = engine.generate(conversations(), SamplingConfig(temperature=0, max_new_tokens=5))
    finally:
        hook.remove()
    batches = -(-len(PROMPTS) // engine.batch_size)
    assert texts.count("") == batches  # one EOS-only answer per batch
    assert engine.stats.generated_tokens == batches * 1 + (len(PROMPTS) - batches) * 5
    assert engine.stats.calls == 1 and engine.stats.conversations == len(PROMPTS)


def test_chain_turns_continue_one_conversation(engine):
    recorder = RecordingEngine(engine)
    items = [PromptItem(id=f"p{i}", prompt=text, text=f"[template] {text}", template_index=i)
             for i, text in enumerate(PROMPTS)]
    chain = SelfCritiqueChain(recorder, system_prompt=SAFE_SYSTEM_PROMPT, generator="tiny")
    result = chain.run(items, SamplingConfig(temperature=1.0, max_new_tokens=6, seed=11))
    first, second, third = recorder.calls
    by_id = {row["id"]: row for row in result.rows + result.rejects}
    assert sorted(by_id) == [item.id for item in items]
    for index, item in enumerate(items):
        row = by_id[item.id]
        assert first[index] == [{"role": "system", "content": SAFE_SYSTEM_PROMPT},
                                {"role": "user", "content": item.text}]
        assert second[index] == first[index] + [{"role": "assistant", "content": row["y0"]},
                                                {"role": "user", "content": CRITIQUE_REQUEST}]
        assert third[index] == second[index] + [{"role": "assistant", "content": row["critique"]},
                                                {"role": "user", "content": REVISION_REQUEST}]
        assert row["prompt"] == item.prompt and row["template_index"] == index and row["generator"] == "tiny"
        assert row["sampling"] == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "seed": 11}


class ScriptedEngine:
    """Answers from a script, for the chain's bookkeeping: turn t of prompt i answers script[i][t - 1]."""

    name, system_role = "scripted", False

    def __init__(self, script):
        self.script, self.turn, self.stats, self.seen = script, 0, EngineStats(), []

    def generate(self, conversations, sampling):
        self.turn += 1
        self.seen.append(conversations)
        return [answers[self.turn - 1] for answers in self.script]


def test_bad_pairs_are_rejected_with_a_reason():
    script = [("a", "c", "b"), ("  ", "c", "b"), ("a", "c", "\n"), ("same", "c", " same ")]
    engine = ScriptedEngine(script)
    items = [PromptItem(id=str(i), prompt=f"q{i}", text=f"q{i}") for i in range(len(script))]
    result = SelfCritiqueChain(engine, system_prompt="be nice").run(items, SamplingConfig())
    assert [row["id"] for row in result.rows] == ["0"]
    assert [(row["id"], row["reason"]) for row in result.rejects] == [("1", "empty y0"), ("2", "empty y1"),
                                                                      ("3", "y0 == y1")]
    # No system role: the system prompt is folded into the first user turn.
    assert engine.seen[0][0] == [{"role": "user", "content": "be nice\n\nq0"}]
    assert reject_reason("x", "y") is None
