"""Arrow routing (Ostapenko et al. 2024): zero-shot, per token and per layer, from each skill's own update.

For an adapted linear and skill i with update `dW_i = s_i B_i diag(E_i) A_i`, the prototype `v_i` is the
top right-singular vector of `dW_i` (unit norm; its sign is arbitrary, so only |.| is ever used). A token
whose input to that linear is `x` gets

    logits_i = |<x, v_i>|,   w = softmax(top_k(logits) / temperature)   (skills outside the top k get 0)

and the linear returns `W x + sum_i w_i(x) dW_i x`: the base in full plus the routed skills, each skill's
weight multiplying its whole update. No task data and no fitting: the prototypes come from the bank.

This is peft's `ArrowConfig` routing (peft 0.21, `tuners/lora/arrow.py`, without GenKnowSub), with two
differences that do not change the definition: peft finds `v_i` by 15 power-iteration steps from a random
start, we by an exact SVD (the two agree when the top singular value is separated from the next); and
peft refuses adapters that do not all adapt the same modules, while here a skill with no update at a
module (or an all-zero one) has no prototype there and is not routed to at that module.
"""

from __future__ import annotations

import torch

from mdkif.fusion.bank import LayerDelta, SkillBank

DEFAULT_TOP_K = 3  # peft ArrowConfig.top_k
DEFAULT_TEMPERATURE = 1.0  # peft ArrowConfig.router_temperature


@torch.no_grad()
def top_right_singular(delta: LayerDelta) -> torch.Tensor:
    """The unit top right-singular vector [in] of `dW = s B diag(E) A`, in fp32; zero when dW is zero.

    Computed without the dense `[out, in]` matrix: with `s B = Q R` (QR), `dW = Q (R diag(E) A)` and Q has
    orthonormal columns, so dW's right-singular vectors are those of the small `[r, in]` matrix
    `R diag(E) A`. The sign is fixed (largest entry positive) only so that results are reproducible.
    """
    live = delta.E != 0  # triplets the rank allocator masked add nothing
    if not bool(live.any()):
        return torch.zeros(delta.A.shape[1])
    down = (delta.A.double() * delta.E.double()[:, None])[live]
    up = (delta.B.double() * delta.scale)[:, live]
    _, R = torch.linalg.qr(up)
    _, S, Vh = torch.linalg.svd(R @ down, full_matrices=False)
    if float(S[0]) <= 0.0:
        return torch.zeros(delta.A.shape[1])
    v = Vh[0]
    v = v * torch.sign(v[v.abs().argmax()])
    return v.float()


def arrow_prototypes(bank: SkillBank) -> dict[str, torch.Tensor]:
    """Per adapted module, the skills' prototypes `[K, in]` in the bank's order (fp32).

    Row i is zero where skill i does not adapt the module (or its update there is zero): such a skill is
    never routed to at that module.
    """
    out: dict[str, torch.Tensor] = {}
    for module in bank.modules():
        deltas = [s.layers.get(module) for s in bank.skills]
        width = next(d.A.shape[1] for d in deltas if d is not None)
        out[module] = torch.stack(
            [torch.zeros(width) if d is None else top_right_singular(d) for d in deltas]
        )
    return out


def arrow_weights(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    top_k: int | torch.Tensor,
    temperature: float | torch.Tensor,
) -> torch.Tensor:
    """Per-token skill weights `[..., K]` (fp32) for inputs `x [..., in]` and prototypes `[K, in]`.

    `logits = |x @ prototypes.T|`; the `top_k` largest are kept and the rest set to -inf before
    `softmax(logits / temperature)`, as peft does. Skills without a prototype (a zero row) are never kept,
    so at a module with fewer than `top_k` such skills every one of them is kept. `top_k` and
    `temperature` may be tensors that broadcast against `[..., 1]` (one setting per example).
    """
    K = prototypes.shape[0]
    present = prototypes.norm(dim=-1) > 0
    n = int(present.sum())
    if n == 0:
        return x.new_zeros(*x.shape[:-1], K)
    # The product in the activations' dtype; selection and softmax in fp32, so a bf16 model's weights
    # still sum to 1 and near-ties are broken as in fp32.
    logits = (x @ prototypes.to(x.dtype).T).abs().float()
    if n < K:
        logits = logits.masked_fill(~present, float("-inf"))
    if isinstance(top_k, torch.Tensor):
        kmax = min(int(top_k.max()), n)
        top_v, idx = logits.topk(kmax, dim=-1)
        rank = torch.arange(kmax, device=x.device)
        top_v = top_v.masked_fill(rank >= top_k.to(x.device), float("-inf"))
    else:
        top_v, idx = logits.topk(min(int(top_k), n), dim=-1)
    scores = torch.full_like(logits, float("-inf")).scatter(-1, idx, top_v)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(device=x.device, dtype=torch.float32)
    return torch.softmax(scores / temperature, dim=-1)
