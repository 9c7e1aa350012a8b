"""Exact cosine of each sample's parameter gradient to the batch gradient, without forming them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustcore.io import InputError
from robustcore.regimes.crafting import BatchNorm, running_buffers
from robustcore.runtime import eval_mode

GRADMATCH_METHODS = ("auto", "ghost", "direct")


def _own_trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The module's own (non-recursive) parameters that require gradients."""
    return [(k, v) for k, v in module.named_parameters(recurse=False) if v.requires_grad]


def _gradient_layers(model: nn.Module) -> list[nn.Module]:
    """Modules holding trainable parameters; InputError for a layer type without identities."""
    layers = []
    for name, module in model.named_modules():
        if not _own_trainable(module):
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros":
                raise InputError(
                    f"gradmatch: Conv2d {name!r} with groups={module.groups}, "
                    f"padding_mode={module.padding_mode!r} unsupported (needs 1, 'zeros')"
                )
            if isinstance(module.padding, str):
                raise InputError(f"gradmatch: Conv2d {name!r} with padding={module.padding!r}")
        elif isinstance(module, BatchNorm):
            if module.running_mean is None:
                raise InputError(
                    f"gradmatch: BatchNorm {name!r} without running statistics "
                    "(track_running_stats=False) couples samples even in eval mode"
                )
        elif not isinstance(module, nn.Linear):
            raise InputError(
                f"gradmatch: layer type {type(module).__name__} ({name!r}) unsupported; "
                "per-sample gradient norms are implemented for Linear, Conv2d and BatchNorm"
            )
        layers.append(module)
    return layers


def weight_terms(
    a: torch.Tensor, d: torch.Tensor, g: torch.Tensor, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖Wᵢ‖², ⟨Wᵢ, g⟩) per sample for Wᵢ = Σₜ dₜ aₜᵀ, a (B, T, Da), d (B, T, Dd), g (Dd, Da).

    "ghost": ‖Wᵢ‖² = Σₜₜ' (aₜ·aₜ')(dₜ·dₜ') and ⟨Wᵢ, g⟩ = Σₜ dₜ·(g aₜ), cost ∝ T²(Da + Dd) +
    T·Da·Dd, memory B·T²; "direct": this one layer's per-sample gradients Wᵢ, cost ∝ T·Da·Dd,
    memory B·Da·Dd; "auto" takes the cheaper. T = 1: ‖a‖²‖d‖². All exact.
    """
    _, t, da = a.shape
    dd = d.shape[2]
    if t > 1 and (method == "direct" or (method == "auto" and t * (da + dd) >= da * dd)):
        per_sample = torch.bmm(d.transpose(1, 2), a)
        return per_sample.square().sum((1, 2)), (per_sample * g).sum((1, 2))
    dot = (d * (a @ g.T)).sum((1, 2))
    if t == 1:
        return a.square().sum((1, 2)) * d.square().sum((1, 2)), dot
    gram = torch.bmm(a, a.transpose(1, 2)) * torch.bmm(d, d.transpose(1, 2))
    return gram.sum((1, 2)), dot


def _layer_terms(
    module: nn.Module,
    inputs: torch.Tensor,
    delta: torch.Tensor,
    grads: dict[str, torch.Tensor],
    method: str,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖gᵢ‖², ⟨gᵢ, G⟩) of one layer's parameters per sample, from its input, δ and BN stats."""
    n = len(inputs)
    sq = torch.zeros(n, dtype=torch.float32, device=inputs.device)
    dot = torch.zeros_like(sq)
    if isinstance(module, BatchNorm):
        dims = [0, *range(2, inputs.dim())]
        shape = [1, -1] + [1] * (inputs.dim() - 2)
        mean, var = (t.view(shape) for t in stats)  # the batch's, held fixed
        normalized = (inputs - mean) / torch.sqrt(var + module.eps)
        reduce = dims[1:]
        per_sample = {
            "weight": (delta * normalized).sum(reduce) if reduce else delta * normalized,
            "bias": delta.sum(reduce) if reduce else delta,
        }
        for key, g in per_sample.items():
            if key in grads:
                sq += g.square().sum(1)
                dot += g @ grads[key]
        return sq, dot
    if isinstance(module, nn.Conv2d):
        a = F.unfold(
            inputs, module.kernel_size, module.dilation, module.padding, module.stride
        ).transpose(1, 2)
        d = delta.flatten(2).transpose(1, 2)
    else:  # Linear, on (B, D) or (B, ..., D)
        a = inputs.reshape(n, -1, inputs.shape[-1])
        d = delta.reshape(n, -1, delta.shape[-1])
    if "weight" in grads:
        weight_sq, weight_dot = weight_terms(a, d, grads["weight"].reshape(d.shape[2], -1), method)
        sq += weight_sq
        dot += weight_dot
    if "bias" in grads:
        g_b = d.sum(1)
        sq += g_b.square().sum(1)
        dot += g_b @ grads["bias"]
    return sq, dot


def gradmatch_similarity(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "auto"
) -> torch.Tensor:
    """Cosine similarity of each sample's CE parameter gradient gᵢ to G = Σᵢ gᵢ, exactly.

    gᵢ is the gradient of sample i's own loss with BatchNorm's batch statistics held fixed: the
    network computes exactly the activations of the train-mode forward of this batch, but the
    statistics are constants, so gᵢ depends on the others only through them and Σᵢ gᵢ is the
    batch gradient without the terms through the statistics. (The fully coupled gradient has no
    per-sample norm short of B backward passes.) It runs as one forward in eval mode with each
    BatchNorm's running statistics swapped, in scratch copies, for the batch's mean and biased
    variance, plus one backward for G and every layer's output gradient δ; then per layer
    ⟨gᵢ, G⟩ = Σₜ δᵢₜᵀ G aᵢₜ and ‖gᵢ‖² from `_weight_terms` (BatchNorm: γ: Σ δ ⊙ x̂, β: Σ δ).
    No B × P per-sample gradient is formed. The model's mode, parameters and running statistics
    are left as they were. Supports Linear, Conv2d (groups 1, zero padding) and BatchNorm.
    """
    if method not in GRADMATCH_METHODS:
        raise InputError(
            f"gradmatch method {method!r} unknown; expected one of {GRADMATCH_METHODS}"
        )
    layers = _gradient_layers(model)
    scratch = {k: v.clone() for k, v in running_buffers(model).items()}
    captured: dict[nn.Module, tuple[torch.Tensor, int, torch.Tensor]] = {}
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def batch_stats(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inputs = args[0].detach().float()
        dims = [0, *range(2, inputs.dim())]
        mean = inputs.mean(dims, keepdim=True)
        var = (inputs - mean).square().mean(dims)  # biased, as train mode; 10× torch.var on CPU
        stats[module] = (mean.flatten(), var)
        # Under functional_call these are the scratch copies, not the model's buffers.
        module.running_mean.copy_(stats[module][0])
        module.running_var.copy_(stats[module][1])

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor):
        if module in captured:
            raise InputError(f"gradmatch: layer {type(module).__name__} is called twice")
        inputs = args[0].detach()
        captured[module] = (inputs, inputs._version, out)
        return out.clone()  # an in-place op downstream (ReLU) must not overwrite `out`

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, BatchNorm) and module.running_mean is not None:
                handles.append(module.register_forward_pre_hook(batch_stats))
        handles += [layer.register_forward_hook(capture) for layer in layers]
        with (
            eval_mode(model),
            torch.enable_grad(),
            torch.autocast(x.device.type, enabled=False),
        ):
            logits = functional_call(model, scratch, (x.detach().float(),))
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            params = [dict(_own_trainable(layer)) for layer in layers]
            flat = [p for own in params for p in own.values()]
            outs = [captured[layer][2] for layer in layers]
            grads = torch.autograd.grad(losses.sum(), flat + outs)
            g_params, deltas = grads[: len(flat)], grads[len(flat) :]
            sq = torch.zeros(len(y), device=x.device)
            dot = torch.zeros_like(sq)
            position = 0
            for layer, own, delta in zip(layers, params, deltas, strict=True):
                inputs, version, _ = captured[layer]
                if inputs._version != version:
                    raise InputError(
                        f"gradmatch: the input of {type(layer).__name__} was modified in place"
                    )
                layer_grads = dict(zip(own, g_params[position : position + len(own)], strict=True))
                position += len(own)
                layer_sq, layer_dot = _layer_terms(
                    layer, inputs.float(), delta.float(), layer_grads, method, stats.get(layer)
                )
                sq += layer_sq
                dot += layer_dot
    finally:
        for handle in handles:
            handle.remove()
    g_norm = torch.sqrt(sum(g.float().square().sum() for g in g_params))
    return dot / (sq.clamp_min(0).sqrt() * g_norm).clamp_min(1e-12)
