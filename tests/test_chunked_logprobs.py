"""Chunked LM-head log-probs (issue 23) against the plain path: values, gradients, padded and packed, memory; and
the chosen/rejected container (issue 21). The ZeRO-3 check is in tests/training/test_chunked_zero3.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cst_dist.logprobs as logprobs
from cst_dist.logprobs import ChosenRejected, chosen_rejected_logps, forward_logps

IGNORE = -100
CPU = torch.device("cpu")


def tiny_llama(vocab: int = 97, hidden: int = 32, layers: int = 2, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to(torch.float32)


def sequences(vocab: int = 97, lengths=(7, 12, 5, 9), prompts=(2, 3, 2, 4), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, vocab, (n,), generator=g) for n in lengths]
    labels = [s.clone() for s in seqs]
    for lab, p in zip(labels, prompts, strict=True):
        lab[:p] = IGNORE
    return seqs, labels


def padded_batch(seqs, labels) -> dict[str, torch.Tensor]:
    n, width = len(seqs), max(len(s) for s in seqs)
    batch = {"input_ids": torch.zeros(n, width, dtype=torch.long), "attention_mask": torch.zeros(n, width,
             dtype=torch.long), "labels": torch.full((n, width), IGNORE)}
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        batch["input_ids"][i, : len(s)], batch["attention_mask"][i, : len(s)], batch["labels"][i, : len(s)] = s, 1, lab
    return batch


def packed_batch(seqs, labels, rows: list[list[int]], width: int) -> dict[str, torch.Tensor]:
    """The sequences packed into len(rows) rows of `width` tokens: positions restart per sequence, no attention mask."""
    batch = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long), "labels": torch.full((len(rows), width),
             IGNORE), "position_ids": torch.zeros(len(rows), width, dtype=torch.long),
             "sequence_ids": torch.full((len(rows), width), 99)}
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = len(seqs[i])
            batch["input_ids"][r, at:at + n], batch["labels"][r, at:at + n] = seqs[i], labels[i]
            batch["position_ids"][r, at:at + n], batch["sequence_ids"][r, at:at + n] = torch.arange(n), i
            at += n
        batch["position_ids"][r, at:] = torch.arange(width - at)
    return batch


def logps_and_grads(model, batch, num: int, chunk_size: int | None, average: bool):
    """Log-probs and the gradients of a weighted sum of them w.r.t. every parameter (the tied weight once)."""
    model.zero_grad(set_to_none=True)
    logps = forward_logps(model, batch, num, CPU, average=average, chunk_size=chunk_size)
    (logps * torch.linspace(0.5, 2.0, num)).sum().backward()
    return logps.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same(model, batch, num: int, chunk_size: int, average: bool):
    plain, plain_grads = logps_and_grads(model, batch, num, None, average)
    chunked, chunked_grads = logps_and_grads(model, batch, num, chunk_size, average)
    assert chunked.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)
    assert chunked_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


# Chunks of 1 position, of a few, and one larger than the whole batch's response tokens (K = 22 here).
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_chunked_matches_plain_padded(chunk_size, average, tie):
    model = tiny_llama(tie=tie)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    seqs, labels = sequences()
    assert_same(model, padded_batch(seqs, labels), len(seqs), chunk_size, average)


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
@pytest.mark.parametrize("average", [False, True])
def test_chunked_matches_plain_packed(chunk_size, average):
    model = tiny_llama()
    seqs, labels = sequences()
    # Two rows (the boolean logits_to_keep form) and one row (integer positions): both selections.
    assert_same(model, packed_batch(seqs, labels, [[1, 2], [0, 3]], width=18), len(seqs), chunk_size, average)
    assert_same(model, packed_batch(seqs, labels, [[0, 1, 2, 3]], width=36), len(seqs), chunk_size, average)


def test_chunked_matches_plain_without_logits_to_keep(monkeypatch):
    # A model whose forward takes no logits_to_keep: the head gets every position and selects the counted ones.
    monkeypatch.setattr(logprobs, "_takes_logits_to_keep", lambda model: False)
    model = tiny_llama()
    seqs, labels = sequences()
    assert_same(model, padded_batch(seqs, labels), len(seqs), 3, average=False)


def test_chunked_no_grad_and_head_restored():
    model = tiny_llama()
    seqs, labels = sequences()
    batch = padded_batch(seqs, labels)
    with torch.no_grad():  # the reference's and evaluation's use
        plain = forward_logps(model, batch, len(seqs), CPU)
        chunked = forward_logps(model, batch, len(seqs), CPU, chunk_size=2)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)
    assert "forward" not in vars(model.lm_head)  # the class's forward is back: plain logits again
    assert model(input_ids=batch["input_ids"]).logits.shape[-1] == 97


def test_chunked_function_gradcheck_with_bias():
    # The autograd Function alone, in float64 against finite differences, with a bias and chunks of 2 over 5 rows.
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (5,), generator=g)
    fn = logprobs._ChunkedTokenLogps.apply
    assert torch.autograd.gradcheck(lambda h, w, b: fn(h, w, b, targets, 2), (hidden, weight, bias))
    expected = logprobs._token_logps(torch.nn.functional.linear(hidden, weight, bias), targets)
    torch.testing.assert_close(fn(hidden, weight, bias, targets, 2), expected)


def test_chunked_refuses_a_model_that_transforms_logits():
    class Scaled(torch.nn.Module):  # like logit scaling or softcapping after the head
        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(7, 4), torch.nn.Linear(4, 7)

        def get_output_embeddings(self):
            return self.head

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return type("Out", (), {"logits": self.head(self.embed(input_ids)) / 2})

    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[IGNORE, 2, 3]])}
    forward_logps(Scaled(), batch, 1, CPU)  # the plain path serves it
    with pytest.raises(ValueError, match="chunk_size=None"):
        forward_logps(Scaled(), batch, 1, CPU, chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        forward_logps(Scaled(), batch, 1, CPU, chunk_size=0)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation creates (bytes): on a big vocabulary the logits, when they exist."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


def test_chunked_never_materialises_the_full_logits():
    # Vocabulary 32k, hidden 16: response logits [K, V] (K = 110) are 14 MiB in fp32, the head's weight [V, H] 2 MiB.
    vocab, hidden, chunk = 32768, 16, 4
    model = tiny_llama(vocab=vocab, hidden=hidden, layers=1)
    seqs, labels = sequences(vocab=vocab, lengths=(40, 30, 25, 35), prompts=(5, 5, 5, 5))
    batch = padded_batch(seqs, labels)
    tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
    sizes = {}
    for chunk_size in (None, chunk):
        model.zero_grad(set_to_none=True)
        with LargestTensor() as mode:
            forward_logps(model, batch, len(seqs), CPU, chunk_size=chunk_size).sum().backward()
        sizes[chunk_size] = mode.largest
    assert tokens == 110 and sizes[None] >= tokens * vocab * 4  # the plain path builds the [K, V] fp32 logits
    # The chunked path's largest tensor is the head's weight (or its gradient): a chunk's logits are smaller still.
    assert sizes[chunk] == vocab * hidden * 4 < sizes[None] / 5


# --- the chosen/rejected container ---------------------------------------------------------------------------------


def test_chosen_rejected_container():
    pair = ChosenRejected.split(torch.tensor([1.0, 2.0, 3.0, -1.0, -2.0, -3.0]))
    assert pair.chosen.tolist() == [1.0, 2.0, 3.0] and pair.rejected.tolist() == [-1.0, -2.0, -3.0]
    chosen, rejected = pair  # a tuple: unpacks
    assert chosen is pair.chosen and rejected is pair.rejected
    assert pair.stack().tolist() == [[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]
    assert pair.map(torch.Tensor.double).chosen.dtype == torch.float64
    with pytest.raises(ValueError, match="even"):
        ChosenRejected.split(torch.zeros(3))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_chosen_rejected_logps_halves(chunk_size):
    model = tiny_llama()
    seqs, labels = sequences()  # pairs: (0 chosen, 2 rejected), (1 chosen, 3 rejected)
    batch = padded_batch(seqs, labels)
    with torch.no_grad():
        whole = forward_logps(model, batch, 4, CPU)
        pair = chosen_rejected_logps(model, batch, 2, CPU, chunk_size=chunk_size)
    torch.testing.assert_close(pair.stack(), torch.stack([whole[:2], whole[2:]], dim=1), atol=1e-5, rtol=0)
