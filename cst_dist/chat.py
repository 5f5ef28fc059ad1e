"""Chat messages and their token ids: the ONE place a conversation becomes model input, for every stage.

Generation, training and evaluation must feed a model the same ids for the same conversation, or a model trained on
one encoding is sampled and judged on another. The BOS rule, in one place: the chat template's text is tokenized
without special tokens, and BOS is prepended once when the tokenizer adds one by itself (`tokenizer("a")` starts
with it) and the template did not already write it. So ChatML templates that write `{{ bos_token }}` (the tiny
model) and templates that leave it to the tokenizer (OpenHermes-2.5's ChatML) both get exactly one BOS.
"""

from __future__ import annotations

from functools import cached_property

Conversation = list[dict[str, str]]  # chat messages: [{"role": "user", "content": "..."}, ...]


def supports_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system message (Mistral-Instruct's, for one, raises or drops it)."""
    probe = "SYSTEM-PROBE-7d1f"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}], tokenize=False
        )
    except Exception:  # templates signal "no system role" by raising a jinja exception of their own
        return False
    return probe in text


def supports_second_system(tokenizer) -> bool:
    """Whether the chat template renders a system message in the middle of a conversation, in place (after the
    earlier turns). ChatML templates (the tiny model's, SmolLM2's, OpenHermes-2.5's) write every message with its own
    role header, so a second system message is simply one more `<|im_start|>system` block; templates that allow a
    system message only first (Llama-2/Mistral style: "roles must alternate") raise or drop it."""
    messages = [{"role": "system", "content": "FIRST-7d1f"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ANSWER-7d1f"}, {"role": "system", "content": "SECOND-7d1f"},
                {"role": "user", "content": "again"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # as in supports_system_role: a jinja exception of the template's own
        return False
    return "ANSWER-7d1f" in text and text.find("SECOND-7d1f") > text.find("ANSWER-7d1f")


def build_messages(system: str | None, prompt: str, system_role: bool = True) -> Conversation:
    """Chat messages for (system, prompt). Without a system role (see `supports_system_role`), the system prompt is
    folded into the first user turn, as the CST paper's README prescribes for such models."""
    if not system:
        return [{"role": "user", "content": prompt}]
    if system_role:
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return [{"role": "user", "content": f"{system}\n\n{prompt}"}]


class ChatEncoder:
    """Renders and tokenizes conversations for one tokenizer; the template's quirks are probed once, here."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.system_role = supports_system_role(tokenizer)
        probe = tokenizer("a").input_ids
        self.implicit_bos = tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None

    def messages(self, system: str | None, prompt: str) -> Conversation:
        return build_messages(system, prompt, self.system_role)

    @cached_property
    def second_system(self) -> bool:
        """Whether a system message after the first turn is rendered in place (see `supports_second_system`)."""
        return self.system_role and supports_second_system(self.tokenizer)

    def conversation(self, messages: Conversation) -> Conversation:
        """A whole conversation as this template takes it. A leading system message is folded into the first user
        turn when the template has no system role (as `messages` does); a system message later on needs a template
        that renders it in place (`second_system`), else ValueError: the caller chooses another form (see
        cst_dist.evaluation.sections.switch), nothing is folded silently."""
        if any(message["role"] == "system" for message in messages[1:]) and not self.second_system:
            raise ValueError("this chat template cannot hold a system message after the first turn")
        if messages and messages[0]["role"] == "system" and not self.system_role:
            first, rest = messages[0], list(messages[1:])
            if not rest or rest[0]["role"] != "user":
                raise ValueError("a folded system message needs a user turn right after it")
            return build_messages(first["content"], rest[0]["content"], False) + rest[1:]
        return [dict(message) for message in messages]

    def ids(self, text: str) -> list[int]:
        """Token ids of a piece of rendered text, no special tokens added."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """The conversation as the chat template writes it (+ the assistant header): text, not yet token ids."""
        return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def encode_conversation(self, conversation: Conversation, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the conversation (+ the assistant header): what a model is given to answer it."""
        return self.encode_text(self.render(conversation, add_generation_prompt))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a whole model input given as text (a rendered chat, or a plain few-shot prompt): the text's
        ids with BOS prepended once, by the rule above (what the tokenizer's own default gives plain text)."""
        ids = self.ids(text)
        if self.implicit_bos is not None and ids[:1] != [self.implicit_bos]:
            ids = [self.implicit_bos] + ids
        return ids

    def response_text(self, conversation: Conversation, response: str) -> str:
        """The text an assistant answer adds after the generation prompt (the answer and its end-of-turn markup)."""
        prompt_text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        full_text = self.tokenizer.apply_chat_template(
            conversation + [{"role": "assistant", "content": response}], tokenize=False
        )
        if not full_text.startswith(prompt_text):
            raise ValueError("chat template renders the prompt differently with and without an answer")
        return full_text[len(prompt_text):]
