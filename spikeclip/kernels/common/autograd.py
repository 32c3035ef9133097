"""One autograd for each fused forward op, two ways in.

`register(fwd_name, backward, setup_context)` registers them with torch.library (what
torch.compile traces) and builds a torch.autograd.Function over the same setup_context and
backward; `apply(fwd_name, *args)` calls the op through that Function in eager mode, which skips
the custom-op autograd layer's Python: LIF forward+backward on a tiny CPU tensor took 199 us a
call through it and 70 us through the Function (2-core Xeon; what a GPU step pays per neuron
while its kernels are short). Compiled code calls the op itself.
"""

from __future__ import annotations

import torch

_EAGER: dict[str, type[torch.autograd.Function]] = {}


def _op(fwd_name: str):
    namespace, name = fwd_name.split("::")
    return getattr(getattr(torch.ops, namespace), name)


def register(fwd_name: str, backward, setup_context) -> None:
    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)
    op = _op(fwd_name)

    # forward(ctx, ...) rather than a separate setup_context: Function.apply binds the
    # signature of a forward without ctx on every call (inspect.signature, ~20 us).
    def forward(ctx, *args):
        output = op(*args)
        setup_context(ctx, args, output)
        return output

    _EAGER[fwd_name] = type(
        f"Eager_{fwd_name.split('::')[1]}",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def apply(fwd_name: str, needs_grad: bool, *args):
    """fwd_name's op on args, with its autograd (eager: the Function; compiling, or when no
    gradient is needed: the op)."""
    if not needs_grad or torch.compiler.is_compiling():
        return _op(fwd_name)(*args)
    return _EAGER[fwd_name].apply(*args)
