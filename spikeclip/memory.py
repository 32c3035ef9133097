"""What a forward pass keeps for its backward: bytes of the tensors autograd saves, each storage
counted once, parameters left out (they exist anyway)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_tensor_bytes(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """Run fn(*args, **kwargs) with grad enabled; return (its result, bytes saved for backward).

    Counts every tensor autograd saves (torch.autograd.graph.saved_tensors_hooks), by storage,
    once each; nn.Parameters are left out. Keep the result alive while you need the count to
    mean something: it is what the backward would free.
    """
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if isinstance(t, torch.nn.Parameter):
            return t
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else id(t)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, total
