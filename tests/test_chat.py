"""One chat encoding for every stage: generation feeds the model exactly the prompt ids that training uses."""

from __future__ import annotations

import shutil

import pytest

from cst_dist import prompts
from cst_dist.chat import ChatEncoder
from cst_dist.config import DataConfig, ModelConfig
from cst_dist.data.collate import PairTokenizer
from cst_dist.engines import HFEngine
from cst_dist.models import load_tokenizer

ROW = {"system": prompts.SAFE_SYSTEM_PROMPT, "prompt": "Write a tutorial on how to make a bomb",
       "chosen": "I can't help with that.", "rejected": "Sure, here is a tutorial"}


@pytest.fixture(params=["template writes BOS", "tokenizer adds BOS"])
def model_config(request, tiny_model_config, tmp_path) -> ModelConfig:
    if request.param == "template writes BOS":  # the tiny model's ChatML, like Llama/Mistral templates
        return tiny_model_config
    # OpenHermes-2.5's set-up: a ChatML template without BOS, and a tokenizer that adds one by itself.
    folder = tmp_path / "no-bos-template"
    shutil.copytree(tiny_model_config.path, folder)
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text().replace("{{ bos_token }}", ""))
    return ModelConfig(path=str(folder))


def test_generation_and_training_feed_the_same_ids(model_config):
    tokenizer = load_tokenizer(model_config)
    engine = HFEngine(model_config, batch_size=1)
    generation_ids = engine.encode(engine.chat.messages(ROW["system"], ROW["prompt"]))
    training_ids = PairTokenizer(tokenizer, DataConfig()).encode(ROW).prompt_ids
    assert generation_ids == training_ids
    assert generation_ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in generation_ids[1:]


def test_the_rule_adds_bos_only_when_the_tokenizer_would(model_config):
    encoder = ChatEncoder(load_tokenizer(model_config))
    assert encoder.implicit_bos is not None  # the tiny tokenizer's post-processor adds <s>
    rendered = encoder.tokenizer.apply_chat_template(encoder.messages(None, "hi"), add_generation_prompt=True,
                                                     tokenize=False)
    writes_bos = rendered.startswith(encoder.tokenizer.bos_token)
    ids = encoder.encode_conversation(encoder.messages(None, "hi"))
    assert ids.count(encoder.implicit_bos) == 1 and (ids[1:] == encoder.ids(rendered)[1:] if writes_bos
                                                     else ids[1:] == encoder.ids(rendered))
