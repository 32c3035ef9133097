"""Argument checks shared by the public ops: clear errors naming the argument, the expected and
the given value, raised before any kernel runs."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from spikeclip.kernels.common.surrogates import SURROGATES

# Codes of the surrogates in the fused kernels (csrc/lif_math.h: enum Surrogate).
SURROGATE_CODES = {"sigmoid": 0, "atan": 1, "triangle": 2, "erf": 3}
assert set(SURROGATE_CODES) == set(SURROGATES)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype LIF math and membrane state use: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_sequence(x, name: str = "x") -> None:
    """x must be a floating tensor `[T, *]` (at least 1-d)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), "
            f"got dtype {x.dtype}"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} must have a leading time dimension [T, *], got a 0-d tensor")


def check_number(value, name: str, *, minimum: float | None = None, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_flag(value, name: str) -> bool:
    """A bool option (a string such as "no" would otherwise read as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_tau(tau, x: torch.Tensor, *, allow_inf: bool = False) -> None:
    """tau: a number > 1, or a (learnable) one-element floating tensor on x's device;
    allow_inf: also tau = inf (no leak: the IF neuron, with decay_input=False)."""
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1 or not tau.is_floating_point():
            raise ValueError(
                f"tau must be a number > 1 or a one-element floating tensor, got a tensor of "
                f"shape {tuple(tau.shape)} and dtype {tau.dtype}"
            )
        if tau.device != x.device:
            raise ValueError(f"tau is on {tau.device}, but x is on {x.device}")
        # A learnable tau's value is checked only where reading it costs no device sync.
        on_cpu = tau.device.type == "cpu" and not torch.compiler.is_compiling()
        if on_cpu and not float(tau.detach()) > 1.0:
            raise ValueError(f"tau must be > 1, got {float(tau.detach())}")
    elif not (allow_inf and not isinstance(tau, bool) and tau == float("inf")):
        check_number(tau, "tau", minimum=1.0)


def check_surrogate(surrogate, alpha) -> float:
    """Returns alpha, defaulted per surrogate (0.0, unused, for a callable surrogate)."""
    if callable(surrogate):
        if alpha is not None:
            raise ValueError(
                "alpha goes with a named surrogate; a callable surrogate g(u) closes over "
                "its own shape parameters (pass alpha=None)"
            )
        return 0.0
    if not isinstance(surrogate, str) or surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if alpha is None:
        return SURROGATES[surrogate][1]
    return check_number(alpha, "alpha", minimum=0.0)


def check_state(v0, x: torch.Tensor, name: str = "v0") -> None:
    """v0 `[*]` (x without its time dim) on x's device, in x's dtype or the compute dtype."""
    if v0 is None:
        return
    if not isinstance(v0, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(v0).__name__}")
    if tuple(v0.shape) != tuple(x.shape[1:]):
        raise ValueError(
            f"{name} must have shape {tuple(x.shape[1:])} (x without its time "
            f"dimension), got {tuple(v0.shape)}"
        )
    if v0.device != x.device:
        raise ValueError(f"{name} is on {v0.device}, but x is on {x.device}")
    allowed = {x.dtype, compute_dtype(x.dtype)}
    if v0.dtype not in allowed:
        raise TypeError(
            f"{name} must have dtype {' or '.join(sorted(map(str, allowed)))}, got {v0.dtype}"
        )


class LifOptions(NamedTuple):
    """One LIF's options, checked once (`lif_options`) and then passed around as one value;
    `*options` spreads them into a fused op's arguments, in the order of LIF_OPTIONS_SCHEMA
    (the ops' schemas: csrc/ops.cpp, the Triton ops)."""

    v_th: float
    v_reset: float  # the hard reset's value; 0.0 (unused) with soft_reset
    soft_reset: bool  # v -= v_th on a spike (v_reset=None in the public API)
    decay_input: bool
    detach_reset: bool
    surrogate: str  # or a callable g(u) (the torch backend only)
    alpha: float

    def attention_args(self) -> tuple:
        """The arguments of the attention ops' LIF (ATTENTION_LIF_SCHEMA after tau): these
        options but decay_input, which their LIF always has."""
        if not self.decay_input:
            raise ValueError("the attention's LIF decays its input (decay_input=True)")
        return (self.v_th, self.v_reset, self.soft_reset, self.detach_reset, self.surrogate,
                self.alpha)  # fmt: skip

    def reference_kwargs(self, with_decay_input: bool = True) -> dict:
        """These options as the reference functions take them (v_reset None: soft reset)."""
        kwargs = dict(
            v_th=self.v_th,
            v_reset=None if self.soft_reset else self.v_reset,
            detach_reset=self.detach_reset,
            surrogate=self.surrogate,
            alpha=self.alpha,
        )
        if with_decay_input:
            kwargs["decay_input"] = self.decay_input
        return kwargs

    @classmethod
    def from_attention_args(cls, args) -> LifOptions:
        """The inverse of attention_args."""
        v_th, v_reset, soft_reset, detach_reset, surrogate, alpha = args
        return cls(v_th, v_reset, soft_reset, True, detach_reset, surrogate, alpha)


# The schema fragment of LifOptions, for the fused ops' schemas (the Triton ops are defined
# from it; csrc/ops.cpp spells the same fragment once, as LIF_OPTIONS).
LIF_OPTIONS_SCHEMA = ", ".join(
    f"{'str' if t is str else t.__name__} {name}"
    for name, t in zip(
        LifOptions._fields, (float, float, bool, bool, bool, str, float), strict=True
    )
)
ATTENTION_LIF_SCHEMA = "float tau, " + LIF_OPTIONS_SCHEMA.replace("bool decay_input, ", "")


def lif_options(
    v_th=1.0, v_reset=0.0, decay_input=True, detach_reset=False, surrogate="sigmoid", alpha=None
) -> LifOptions:
    """The checked options of one LIF (a clear error naming the bad one)."""
    v_th = check_number(v_th, "v_th")
    if v_reset is not None:
        v_reset = check_number(v_reset, "v_reset")
    alpha = check_surrogate(surrogate, alpha)
    check_flag(decay_input, "decay_input")
    check_flag(detach_reset, "detach_reset")
    soft = v_reset is None
    return LifOptions(v_th, 0.0 if soft else v_reset, soft, decay_input, detach_reset,
                      surrogate, alpha)  # fmt: skip
