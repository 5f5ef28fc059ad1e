"""Varlen attention for packed batches, registered with transformers as the `varlen` backend (shared floor).

A packed batch is one row of sequences laid end to end; `cu_seq_lens` (their cumulative lengths, built by the
collator) says where each starts. Every token attends causally within its own sequence only, at the cost of that
sequence alone: no padding, no block-diagonal T x T mask. One function, the kernel chosen by the tensors' device:
  - CUDA: torch's own FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`, causal with
    window_size=(-1, 0)), so FlashAttention-class packing needs no flash-attn package (which ships no wheels for
    current torch). Where flash-attn is installed, `cst_dist.models` picks transformers' flash_attention_2 instead,
    which reads the same `cu_seq_lens` keywords.
  - CPU: SDPA once per sequence (causal); the Python loop costs microseconds per sequence and layer.
The model forward receives `cu_seq_lens_q/k` and `max_length_q/k` as keywords (transformers passes them to the
attention function untouched), so nothing is derived from position ids on the device and nothing syncs with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VARLEN = "varlen"  # the name under which transformers' AttentionInterface knows the function below


def varlen_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                             scaling: float | None = None, dropout: float = 0.0, *, cu_seq_lens_q=None,
                             max_length_q=None, sliding_window=None, **kwargs):
    """transformers' attention-function contract: query [B, Hq, T, D], key/value [B, Hkv, T, D] -> ([B, T, Hq, D],
    None). The B rows are taken end to end; `cu_seq_lens_q` [S + 1] (int32) indexes that flat token axis."""
    if cu_seq_lens_q is None:
        raise ValueError(
            "the varlen attention backend needs a packed batch with cu_seq_lens (data.packing=true); padded batches "
            "and generation use sdpa"
        )
    if dropout:
        raise ValueError("varlen attention runs without dropout (training disables it, as DPO needs)")
    batch, heads, tokens, dim = query.shape
    if sliding_window is not None and max_length_q is not None and max_length_q > sliding_window:
        raise ValueError(f"a packed sequence of {max_length_q} tokens exceeds the model's sliding window "
                         f"({sliding_window}); lower data.max_length")
    gqa = key.shape[1] != heads
    # [B, H, T, D] -> [B*T, H, D]: the layout of both the varlen kernel and the per-sequence loop
    q, k, v = (x.transpose(1, 2).reshape(batch * tokens, x.shape[1], dim) for x in (query, key, value))
    if query.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
        out = varlen_attn(q, k, v, cu, cu, int(max_length_q), int(max_length_q), scale=scaling,
                          window_size=(-1, 0), enable_gqa=gqa)
    else:
        bounds = cu_seq_lens_q.tolist()  # a CPU tensor: no device sync
        # [1, H, B*T, D] slices: 4-D inputs take SDPA's fused CPU kernel (3-D ones its slower math path)
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        parts = [
            F.scaled_dot_product_attention(q4[:, :, a:b], k4[:, :, a:b], v4[:, :, a:b], is_causal=True, scale=scaling,
                                           enable_gqa=gqa)
            for a, b in zip(bounds, bounds[1:], strict=False) if b > a
        ]
        out = torch.cat(parts, dim=2)[0].transpose(0, 1)
    return out.reshape(batch, tokens, heads, dim), None


def register() -> None:
    """Make `attn_implementation="varlen"` loadable (idempotent); masks are skipped for it, as packed rows need none."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)


def varlen_supported(device: torch.device | str) -> bool:
    """CPU always (SDPA per sequence); CUDA where this torch has its varlen FlashAttention kernel."""
    if torch.device(device).type != "cuda":
        return True
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True
