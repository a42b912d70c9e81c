"""Log-probs of chosen tokens from a causal LM's linear head, without its logits tensor.

:class:`LinearLogps` computes log softmax(h Wᵀ + b)[target] a chunk of rows at a time, in forward
and in backward, so no [M, V] logits tensor exists; :func:`plain_head` says whether a model's head
allows it. ``larpo.logprobs`` runs it inside the model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Logits per chunk of the LM head: rows x vocabulary float32 values. On a CPU 32 MB, e.g. 170 tokens
# at a 49k vocabulary: large enough for an efficient matmul, small beside the model's activations.
# On CUDA 1 GB (5,461 tokens at 49k, 2,093 at 128k), so that a chunk's matmul fills the GPU.
CHUNK_ELEMENTS = 2**23
CUDA_CHUNK_ELEMENTS = 2**28
# Config fields of models that transform the logits after the head (Gemma, Cohere, Granite, Falcon-H1 ...).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")


def plain_head(base: nn.Module) -> nn.Linear | None:
    """The LM head of the transformers model ``base`` if log-probs may be computed from its weight.

    That is a plain ``nn.Linear`` (not, e.g., a LoRA-wrapped one) whose logits the model uses as
    they are; None otherwise.
    """
    head = base.get_output_embeddings()
    config = base.config.get_text_config()
    if type(head) is not nn.Linear or any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return head


class LinearLogps(torch.autograd.Function):
    """log softmax(h Wᵀ + b)[target] for rows h [M, H]: float32 [M], in chunks of rows.

    Each chunk's logits [rows, V] live only while the chunk is processed; backward recomputes
    them (one extra head matmul) and turns them into the softmax in place. Saved for backward:
    h, the targets and the logsumexp [M]. The matmuls run in the dtype the forward's head matmul
    had (autocast's, e.g. bf16), softmax and sums in float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        rows = max(1, (CUDA_CHUNK_ELEMENTS if weight.is_cuda else CHUNK_ELEMENTS) // weight.shape[0])
        out, lse = [], []
        ctx.dtype = hidden.dtype
        for h, t in zip(hidden.split(rows), targets.split(rows)):
            logits = F.linear(h, weight, bias)
            ctx.dtype = logits.dtype
            logits = _at_least_float32(logits)
            lse.append(torch.logsumexp(logits, dim=-1))
            out.append(logits.gather(-1, t[:, None]).squeeze(-1) - lse[-1])
        ctx.rows = rows
        ctx.save_for_backward(hidden, weight, bias, targets, torch.cat(lse) if lse else _at_least_float32(hidden.new_zeros(0)))
        return torch.cat(out) if out else _at_least_float32(hidden.new_zeros(0))

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, rows = ctx.dtype, ctx.rows
        grad_h = torch.empty_like(hidden) if need_h else None
        sum_dtype = _at_least_float32(weight.new_zeros(0)).dtype
        grad_w = torch.zeros(weight.shape, dtype=sum_dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=sum_dtype, device=weight.device) if need_b else None
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                end = start + rows
                h, g, t = hidden[start:end].to(dtype), grad[start:end].to(lse.dtype), targets[start:end]
                # d logp[t] / d logits = onehot(t) − softmax, times the incoming gradient
                d = _at_least_float32(F.linear(h, w, b)).sub_(lse[start:end, None]).exp_().mul_(-g[:, None])
                d.scatter_add_(1, t[:, None], g[:, None])
                if need_b:
                    grad_b += d.sum(dim=0)
                d = d.to(dtype)
                if need_h:
                    grad_h[start:end] = (d @ w).to(hidden.dtype)
                if need_w and d.dtype == sum_dtype:
                    grad_w.addmm_(d.t(), h)
                elif need_w:  # a bf16 (autocast) matmul, summed in float32
                    grad_w += d.t() @ h
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or as it is when it is already float32 or float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
