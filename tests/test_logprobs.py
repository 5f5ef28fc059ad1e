"""Sequence log-probs against a naive loop: padded, packed, chunked, and on a real tiny Llama."""

from __future__ import annotations

import pytest
import torch

from cst_dist.logprobs import sequence_logps, sequence_token_counts

IGNORE = -100


def test_sequence_logps_argument_errors():
    logits, labels = torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(logits, labels[:, :4])
    with pytest.raises(ValueError, match="num_sequences"):
        sequence_logps(logits, labels, sequence_ids=labels)
    with pytest.raises(ValueError, match="sequence_ids"):
        sequence_logps(logits, labels, sequence_ids=labels[:, :4], num_sequences=2)
    with pytest.raises(ValueError, match="num_sequences"):
        sequence_logps(logits, labels, num_sequences=3)


# --- sequence_logps against a naive loop ---------------------------------------------------------------------------


def naive_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> list[float]:
    """Per row: sum over t of log_softmax(logits[t])[labels[t + 1]] for counted labels, one position at a time."""
    out = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        total, count = 0.0, 0
        for t in range(row_labels.shape[0] - 1):
            target = int(row_labels[t + 1])
            if target == IGNORE:
                continue
            total += float(torch.log_softmax(row_logits[t].double(), -1)[target])
            count += 1
        out.append(total / max(count, 1) if average else total)
    return out


def random_padded(seed: int = 0, rows: int = 4, length: int = 9, vocab: int = 13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, length, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (rows, length), generator=g)
    labels[0, :3] = IGNORE  # prompt
    labels[1, 6:] = IGNORE  # right padding
    labels[2, ::2] = IGNORE  # scattered
    labels[3:, 1:] = IGNORE  # nothing counted
    return logits, labels


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_padded_matches_naive_loop(average):
    logits, labels = random_padded()
    got = sequence_logps(logits, labels, average=average)
    assert got.shape == (4,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(naive_logps(logits, labels, average), abs=1e-5)
    assert got[3].item() == 0.0  # a row with no counted token sums (and averages) to 0


def test_sequence_logps_float64_and_chunking(monkeypatch):
    # float64 logits stay float64; a chunk smaller than the token count must not change the result.
    import cst_dist.logprobs as losses_mod

    logits, labels = random_padded(seed=1)
    logits = logits.double()
    monkeypatch.setattr(losses_mod, "_LOGSUMEXP_CHUNK", 3)
    got = sequence_logps(logits, labels)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(naive_logps(logits, labels), abs=1e-10)


def test_average_divides_by_token_counts():
    logits, labels = random_padded(seed=2)
    counts = sequence_token_counts(labels)
    # Shifted counts: row 0 labels 3..8 -> 6; row 1 labels 1..5 -> 5; row 2 odd positions 1,3,5,7 -> 4; row 3 -> 0.
    assert counts.tolist() == [6, 5, 4, 0]
    total, mean = sequence_logps(logits, labels), sequence_logps(logits, labels, average=True)
    assert mean[:3].tolist() == pytest.approx((total[:3] / counts[:3]).tolist(), abs=1e-6)


def test_sequence_logps_gradient_matches_log_softmax():
    logits, labels = random_padded(seed=3)
    logits = logits.double().requires_grad_()
    sequence_logps(logits, labels).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    logp = torch.log_softmax(ref_logits[:, :-1], -1)
    mask = labels[:, 1:] != IGNORE
    picked = logp.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (picked * mask).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def pack(logits: torch.Tensor, labels: torch.Tensor, lengths: list[int], rows: list[list[int]], width: int):
    """Pack padded rows (with the given lengths) into len(rows) packed rows of `width` tokens, padding the tails."""
    vocab = logits.shape[-1]
    p_logits = torch.zeros(len(rows), width, vocab, dtype=logits.dtype)
    p_labels = torch.full((len(rows), width), IGNORE)
    p_ids = torch.full((len(rows), width), 99)  # tail padding: any id, its labels are ignored
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = lengths[i]
            p_logits[r, at : at + n], p_labels[r, at : at + n], p_ids[r, at : at + n] = logits[i, :n], labels[i, :n], i
            at += n
    return p_logits, p_labels, p_ids


@pytest.mark.parametrize("average", [False, True])
def test_packed_rows_match_padded(average):
    # Three sequences (lengths 9, 6, 4) in two packed rows of width 12: [seq 1, seq 2 + 2 pad], [seq 0 + 3 pad].
    logits, labels = random_padded(seed=4, rows=3)
    lengths = [9, 6, 4]
    labels[2, 4:] = IGNORE
    labels[2, 0] = 5  # seq 2 follows seq 1 in its packed row: its first label must not be counted (as when padded)
    p_logits, p_labels, p_ids = pack(logits, labels, lengths, [[1, 2], [0]], width=12)
    padded = sequence_logps(logits, labels, average=average)
    packed = sequence_logps(p_logits, p_labels, sequence_ids=p_ids, num_sequences=3, average=average)
    assert packed.tolist() == pytest.approx(padded.tolist(), abs=1e-6)
    counts = sequence_token_counts(p_labels, sequence_ids=p_ids, num_sequences=3)
    assert counts.tolist() == sequence_token_counts(labels).tolist()


def test_packed_boundary_token_not_counted():
    # Row [a a b b]: label of the first b would be predicted by a's last logits -> must be dropped.
    labels = torch.tensor([[1, 2, 3, 4]])
    ids = torch.tensor([[0, 0, 1, 1]])
    assert sequence_token_counts(labels, sequence_ids=ids, num_sequences=2).tolist() == [1, 1]


# --- packed vs padded on a real tiny Llama -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to(torch.float32).eval()


@pytest.fixture(scope="module")
def three_sequences():
    g = torch.Generator().manual_seed(1)
    lengths, prompt = [7, 12, 5], [2, 3, 2]
    seqs = [torch.randint(1, 97, (n,), generator=g) for n in lengths]
    labels = [s.clone() for s in seqs]
    for lab, p in zip(labels, prompt, strict=True):
        lab[:p] = IGNORE
    return seqs, labels


def test_packed_matches_padded_on_tiny_llama(tiny_llama, three_sequences):
    seqs, labels = three_sequences
    n, width = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    attention_mask = torch.zeros(n, width, dtype=torch.long)
    padded_labels = torch.full((n, width), IGNORE)
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        input_ids[i, : len(s)], attention_mask[i, : len(s)], padded_labels[i, : len(s)] = s, 1, lab

    # Packed row [1, 24 + 4 tail pad]: position ids restart at 0 per sequence; no attention mask.
    pad = 4
    packed_ids = torch.cat([*seqs, torch.zeros(pad, dtype=torch.long)])[None]
    packed_labels = torch.cat([*labels, torch.full((pad,), IGNORE)])[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs] + [torch.arange(pad)])[None]
    sequence_ids = torch.cat([torch.full((len(s),), i) for i, s in enumerate(seqs)] + [torch.full((pad,), 7)])[None]

    with torch.no_grad():
        padded = sequence_logps(tiny_llama(input_ids=input_ids, attention_mask=attention_mask).logits, padded_labels)
        # use_cache=False matters: with a cache object (the default, even in train mode) transformers skips the
        # packed-sequence detection from position_ids and silently attends across sequences.
        out = tiny_llama(input_ids=packed_ids, position_ids=position_ids, use_cache=False)
        packed = sequence_logps(out.logits, packed_labels, sequence_ids=sequence_ids, num_sequences=n)
        # Same row with plain positions 0..N-1: one causal sequence, later sequences see earlier ones.
        naive = tiny_llama(input_ids=packed_ids, use_cache=False)
        naive = sequence_logps(naive.logits, packed_labels, sequence_ids=sequence_ids, num_sequences=n)

    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    assert (packed - naive)[1:].abs().min() > 1e-3  # the check above can fail: cross-sequence attention shows
