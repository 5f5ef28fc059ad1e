"""Chat messages and their token ids: the ONE place a conversation becomes model input, for every stage.

Generation, training and evaluation must feed a model the same ids for the same conversation, or a model trained on
one encoding is sampled and judged on another. The BOS rule, in one place: the chat template's text is tokenized
without special tokens, and BOS is prepended once when the tokenizer adds one by itself (`tokenizer("a")` starts
with it) and the template did not already write it. So ChatML templates that write `{{ bos_token }}` (the tiny
model) and templates that leave it to the tokenizer (OpenHermes-2.5's ChatML) both get exactly one BOS.
"""

from __future__ import annotations

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
