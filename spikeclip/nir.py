"""NIR, the Neuromorphic Intermediate Representation, in and out.

    graph = spikeclip.nir.export(module, example_input, dt=1e-4)    # -> nir.NIRGraph
    net = spikeclip.nir.load(graph_or_file, dt=1e-4, backend="auto")  # -> NIRNetwork

NIR is how SpikingJelly, snnTorch, Norse, Sinabs, Rockpool, Spyx and neuromorphic chips
exchange networks. The discretisation is SpikingJelly 2.0's (`nir_exchange`), so graphs move
between the two unchanged: with dt the step in seconds and tau the time constant in steps,
- LIF: nir.LIF(tau = tau dt, r = 1 with decay_input (the input divided by tau), r = tau
  without, v_leak = v_reset, v_threshold, v_reset); a PLIF exports at its current tau;
- IF: nir.IF(r = 1 / dt, v_threshold, v_reset);
- a soft reset (v_reset=None) has no NIR form and is refused, as every neuron parameter that
  differs between neurons of one node (our neurons hold one value each);
- shapes exclude the batch (and time) dimensions; Flatten's start_dim counts from the sample.
A loaded network runs multi-step, `[T, B, ...]` -> `[T, B, ...]`: per-step nodes (Affine,
Linear, Conv2d, AvgPool2d, SumPool2d, Flatten) with time folded into the batch, neurons as
our fused LIF / IF (spikeclip.models.neurons) on the backend asked for; a node with several
inputs sums them, as NIR defines. Anything else (CubaLIF, recurrent graphs, subgraphs) is
refused with an error naming the node.

Export takes chains of layers: nn.Sequential / SeqToANN (ours or SpikingJelly's
SeqToANNContainer) of Linear, Conv2d, BatchNorm (folded into the Linear or Conv2d before it,
with its running statistics), AvgPool2d, Flatten and neurons (ours, SpikingJelly's LIFNode,
ParametricLIFNode and IFNode, `accelerate`d or not), and our SeqConvBN / SeqLinearBN units.
The first module NIR cannot express (an attention, a max-pool, a module with its own forward)
is named in the error, with the call that exports the part before it (`upto=`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spikeclip.models import ImageEncoder, SpikeCLIP, TextEncoder
from spikeclip.models.layers import SeqConvBN, SeqLinearBN
from spikeclip.models.neurons import IF, LIF
from spikeclip.models.spiking_layers import SeqToANN

__all__ = ["NIRError", "NIRNetwork", "export", "exportable_part", "load"]


class NIRError(ValueError):
    """A graph or module that cannot cross: names the node or module and why."""


def _nir():
    import nir  # optional: pip install nir

    return nir


# ---- load -----------------------------------------------------------------------------------


def _uniform(node_name: str, field: str, value) -> float:
    values = np.unique(np.asarray(value, dtype=np.float64))
    if values.size != 1:
        raise NIRError(f"node {node_name!r}: {field} differs between its neurons "
                       f"({values.size} values); our neurons hold one value each")  # fmt: skip
    return float(values[0])


def _close(a: float, b: float) -> bool:
    return bool(np.isfinite(a) and np.isfinite(b) and np.isclose(a, b, rtol=1e-6, atol=1e-12))


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _neuron(name: str, node, dt: float, backend: str) -> nn.Module:
    nir = _nir()
    v_th = _uniform(name, "v_threshold", node.v_threshold)
    v_reset = _uniform(name, "v_reset", node.v_reset)
    if isinstance(node, nir.IF):
        r = _uniform(name, "r", node.r)
        if not _close(r, 1.0 / dt):
            raise NIRError(f"node {name!r}: nir.IF r = {r:g}, not 1 / dt = {1 / dt:g} (dt={dt:g})")
        return IF(v_th=v_th, v_reset=v_reset, backend=backend)
    tau = _uniform(name, "tau", node.tau) / dt
    if not (math.isfinite(tau) and tau > 1):
        raise NIRError(f"node {name!r}: nir.LIF tau / dt = {tau:g} must be finite and > 1")
    r = _uniform(name, "r", node.r)
    if _close(r, 1.0):
        decay_input = True
    elif _close(r, tau):
        decay_input = False
    else:
        raise NIRError(f"node {name!r}: nir.LIF r = {r:g} is neither 1 nor tau / dt = {tau:g}")
    v_leak = _uniform(name, "v_leak", node.v_leak)
    if not _close(v_leak, v_reset):
        raise NIRError(f"node {name!r}: nir.LIF v_leak = {v_leak:g} differs from v_reset = "
                       f"{v_reset:g} (our LIF leaks to its reset potential)")  # fmt: skip
    return LIF(tau=tau, v_th=v_th, v_reset=v_reset, decay_input=decay_input, backend=backend)


def _per_step(name: str, node) -> nn.Module:
    """The torch module of a stateless node, applied to one time step `[B, ...]`."""
    nir = _nir()
    if isinstance(node, nir.Affine | nir.Linear):
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
        bias = isinstance(node, nir.Affine)
        m = nn.Linear(w.shape[1], w.shape[0], bias=bias)
        with torch.no_grad():
            m.weight.copy_(w)
            if bias:
                m.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
        return m
    if isinstance(node, nir.Conv2d):
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
        if isinstance(node.padding, str):
            raise NIRError(f"node {name!r}: nir.Conv2d padding {node.padding!r}: give numbers")
        groups = int(np.asarray(node.groups).reshape(-1)[0])
        m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[-2:]),
                      stride=_pair(node.stride), padding=_pair(node.padding),
                      dilation=_pair(node.dilation), groups=groups, bias=True)  # fmt: skip
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
        return m
    if isinstance(node, nir.AvgPool2d | nir.SumPool2d):
        k = _pair(node.kernel_size)
        pool = nn.AvgPool2d(k, _pair(node.stride), _pair(node.padding))
        if isinstance(node, nir.SumPool2d):
            return nn.Sequential(pool, _Scale(float(k[0] * k[1])))
        return pool
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)  # of the sample: one more here
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
    raise NIRError(f"node {name!r}: nir.{type(node).__name__} is not a node spikeclip runs "
                   "(Affine, Linear, Conv2d, AvgPool2d, SumPool2d, Flatten, LIF, IF)")  # fmt: skip


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _shape(types: dict) -> tuple | None:
    for v in (types or {}).values():
        a = np.asarray(v).reshape(-1)
        return tuple(int(i) for i in a) if a.size else None
    return None


def _order(graph, name_of_input: str) -> list[str]:
    """The nodes in an order where each follows its inputs; NIRError on a cycle."""
    preds = {n: set() for n in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].add(src)
    try:
        return list(TopologicalSorter(preds).static_order())
    except CycleError as exc:
        raise NIRError(f"the graph is recurrent (a cycle through {exc.args[1][:4]}): spikeclip "
                       "runs feed-forward graphs over whole sequences") from None  # fmt: skip


class NIRNetwork(nn.Module):
    """A NIR graph as a module: `[T, B, *input]` -> `[T, B, *output]`, multi-step. Nodes are
    submodules under their NIR names (`.nodes[name]`)."""

    def __init__(self, graph, dt: float = 1e-4, backend: str = "auto"):
        super().__init__()
        nir = _nir()
        if not dt > 0:
            raise NIRError(f"dt must be > 0, got {dt}")
        inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
        outputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NIRError(f"the graph has {len(inputs)} Input and {len(outputs)} Output nodes; "
                           "spikeclip runs graphs with one of each")  # fmt: skip
        self.input_name, self.output_name = inputs[0], outputs[0]
        for src, dst in graph.edges:
            for n in (src, dst):
                if n not in graph.nodes:
                    raise NIRError(f"edge ({src!r}, {dst!r}): no node {n!r} in the graph")
            out, into = (
                _shape(getattr(graph.nodes[src], "output_type", None)),
                _shape(getattr(graph.nodes[dst], "input_type", None)),
            )
            if out is not None and into is not None and out != into:
                raise NIRError(f"edge ({src!r}, {dst!r}): {src!r} gives {list(out)} but {dst!r} "
                               f"takes {list(into)}")  # fmt: skip
        self.order = [n for n in _order(graph, self.input_name) if n != self.input_name]
        self.preds = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
        self.nodes = nn.ModuleDict()
        self._keys = {}
        for name in self.order:
            node = graph.nodes[name]
            if isinstance(node, nir.Output):
                continue
            if isinstance(node, nir.NIRGraph):
                raise NIRError(f"node {name!r}: a subgraph; flatten it first")
            if isinstance(node, nir.LIF | nir.IF):
                module = _neuron(name, node, dt, backend)
            else:
                module = SeqToANN(_per_step(name, node))
            key = name.replace(".", "_") or "_"
            self._keys[name] = key
            self.nodes[key] = module
            if not self.preds[name]:
                raise NIRError(f"node {name!r} has no input")
        self.input_shape = _shape(graph.nodes[self.input_name].input_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"NIRNetwork: input must be [T, B, ...], got {tuple(x.shape)}")
        if self.input_shape is not None and tuple(x.shape[2:]) != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ValueError(f"NIRNetwork: input must be [T, B, {want}], got {tuple(x.shape)}")
        values = {self.input_name: x}
        for name in self.order:
            ins = [values[p] for p in self.preds[name]]
            y = ins[0] if len(ins) == 1 else torch.stack(torch.broadcast_tensors(*ins)).sum(0)
            values[name] = self.nodes[self._keys[name]](y) if name in self._keys else y
        return values[self.output_name]


def load(graph, *, dt: float = 1e-4, backend: str = "auto") -> NIRNetwork:
    """A NIR graph (nir.NIRGraph, or the path of a file nir.write wrote) as a NIRNetwork that
    runs on spikeclip's kernels (backend: as for the neurons)."""
    nir = _nir()
    if isinstance(graph, str | Path):
        path = Path(graph)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such NIR file")
        try:
            graph = nir.read(path)
        except Exception as exc:  # h5py and nir raise many types for a file that is not NIR
            raise NIRError(f"{path}: not a NIR file ({type(exc).__name__}: {exc})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"load takes a nir.NIRGraph or a file path, got {type(graph).__name__}")
    return NIRNetwork(graph, dt=dt, backend=backend)


# ---- export ---------------------------------------------------------------------------------


def exportable_part(encoder: nn.Module) -> nn.Sequential:
    """The part of a SpikeCLIP encoder NIR can express, as a chain export takes (sharing the
    encoder's modules):
    - ImageEncoder: the convolutional tokenizer's stages before its first max-pool (conv-BN,
      LIF, conv-BN, LIF, conv-BN), on images normalised and resized as the encoder does them,
      repeated over T: `[T, B, 3, S, S]` (stage 0 computes the same on every step);
    - TextEncoder: its spiking core (LIF, Linear, LIF, Linear) on the flattened (normalised)
      token + position embeddings repeated over T: `[T, B, context_length * text_width]`."""
    if isinstance(encoder, ImageEncoder):
        tok = encoder.tokenizer
        return nn.Sequential(tok.stages[0], tok.neurons[0], tok.stages[1], tok.neurons[1],
                             tok.stages[2])  # fmt: skip
    if isinstance(encoder, TextEncoder):
        return nn.Sequential(encoder.input_neuron, encoder.fc1, encoder.hidden_neuron, encoder.fc2)
    raise TypeError(f"exportable_part takes an ImageEncoder or a TextEncoder, got "
                    f"{type(encoder).__name__}")  # fmt: skip


def _refuse_spikeclip(module: nn.Module) -> None:
    """SpikeCLIP's encoders hold what NIR cannot express: say what, and what exports."""
    if isinstance(module, ImageEncoder):
        raise NIRError(
            "ImageEncoder: NIR cannot express its spiking self-attention (blocks.0.attn, "
            f"{type(module.blocks[0].attn).__name__}), its max-pools (tokenizer.pool) or its "
            "weighted readout over time (readout). Its convolutional stages before the first "
            "max-pool export: spikeclip.nir.export(spikeclip.nir.exportable_part(encoder), x) "
            "with x the normalised, resized images repeated over T [T, B, 3, S, S]"
        )
    if isinstance(module, TextEncoder):
        raise NIRError(
            "TextEncoder: NIR cannot express its token lookup (token_embedding) or its "
            "weighted readout over time (readout). Its spiking core (LIF, Linear, LIF, Linear) "
            "exports: spikeclip.nir.export(spikeclip.nir.exportable_part(encoder), x) with x "
            "the flattened embeddings repeated over T [T, B, context_length * text_width]"
        )
    if isinstance(module, SpikeCLIP):
        raise NIRError(
            "SpikeCLIP: NIR cannot express its image encoder's spiking self-attention "
            "(image_encoder.blocks.0.attn) and max-pools, or its text encoder's token lookup; "
            "export parts of each with spikeclip.nir.exportable_part(model.image_encoder) and "
            "exportable_part(model.text_encoder)"
        )


def _sj_kinds():
    """SpikingJelly's neuron and container classes where it is installed (optional)."""
    try:
        from spikingjelly.activation_based import layer, neuron
    except ImportError:
        return (), (), ()
    return ((neuron.LIFNode, neuron.ParametricLIFNode), (neuron.IFNode,),
            (layer.SeqToANNContainer,))  # fmt: skip


def _leaves(module: nn.Module, path: str, folded: bool) -> Iterator[tuple[str, nn.Module, bool]]:
    """(path, leaf, folded: runs on [T*B, ...]) of a chain, in order."""
    _, _, sj_containers = _sj_kinds()
    if isinstance(module, (SeqToANN, nn.Sequential, *sj_containers)):
        inner = folded or isinstance(module, (SeqToANN, *sj_containers))
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name, inner)
        return
    if isinstance(module, SeqConvBN | SeqLinearBN):
        yield f"{path}.op", module.op, True
        yield f"{path}.bn", module.bn, True
        if module.neuron is not None:
            yield f"{path}.neuron", module.neuron, False
        return
    yield path, module, folded


def _neuron_node(path: str, m: nn.Module, shape, dt: float):
    nir = _nir()
    lifs, ifs, _ = _sj_kinds()
    if isinstance(m, (LIF, *lifs, *ifs)):
        if getattr(m, "step_mode", "m") != "m":
            raise NIRError(f"{path}: export neurons in multi-step mode (step_mode 'm')")
        if isinstance(m, LIF):
            v_th, v_reset, decay = m.current_v_th(), m.v_reset, m.decay_input
            tau = float(m.current_tau())
            is_if = isinstance(m, IF)
        else:
            v_th, v_reset, decay = float(m.v_threshold), m.v_reset, getattr(m, "decay_input", True)
            is_if = isinstance(m, ifs)
            tau = (
                1.0 / float(torch.sigmoid(m.w)) if hasattr(m, "w") else float(getattr(m, "tau", 0))
            )
        if v_reset is None:
            raise NIRError(f"{path}: a soft reset (v_reset=None) has no NIR form")
        full = lambda v: np.full(shape, float(v))
        if is_if:
            return nir.IF(r=full(1.0 / dt), v_threshold=full(v_th), v_reset=full(v_reset))
        return nir.LIF(tau=full(tau * dt), r=full(1.0 if decay else tau), v_leak=full(v_reset),
                       v_threshold=full(v_th), v_reset=full(v_reset))  # fmt: skip
    return None


def _fold_bn(weight, bias, bn: nn.modules.batchnorm._BatchNorm):
    """weight and bias of the product followed by bn (its running statistics)."""
    if bn.running_mean is None:
        raise NIRError("a BatchNorm without running statistics cannot be folded")
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )
    shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = (bias if bias is not None else torch.zeros_like(shift)) * scale + shift
    return w, b


def export(module: nn.Module, example_input: torch.Tensor, *, dt: float = 1e-4,
           upto: str | None = None):  # fmt: skip
    """The NIR graph of `module`, a chain of layers (see the module docstring), for inputs like
    example_input `[T, B, ...]` (run once, in eval mode, to learn each layer's shapes).
    upto: stop before the leaf at that path (the part a refusal says can be exported)."""
    nir = _nir()
    _refuse_spikeclip(module)
    if not dt > 0:
        raise NIRError(f"dt must be > 0, got {dt}")
    if example_input.dim() < 3:
        raise ValueError(f"example_input must be [T, B, ...], got {tuple(example_input.shape)}")
    leaves = list(_leaves(module, "", False))
    if upto is not None:
        paths = [p for p, _, _ in leaves]
        if upto not in paths:
            raise NIRError(f"upto={upto!r}: no such leaf in the chain ({', '.join(paths[:8])}...)")
        leaves = leaves[: paths.index(upto)]
    shapes: dict[int, torch.Size] = {}

    def record(m, args):  # the first call's input shape (a pre-hook that returns None)
        shapes.setdefault(id(m), args[0].shape)

    hooks = [m.register_forward_pre_hook(record) for _, m, _ in leaves]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if upto is None:
                module(example_input)
            else:
                x = example_input
                for _, m, folded in leaves:
                    x = m(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if folded else m(x)
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    nodes = []
    pending = None  # a Linear / Conv2d whose BatchNorm may follow
    for i, (path, m, folded) in enumerate(leaves):
        if id(m) not in shapes:
            raise NIRError(f"{path}: not reached when the module ran on example_input")
        shape = tuple(shapes[id(m)])
        time_folded = folded and len(shape) and shape[0] == math.prod(example_input.shape[:2])
        sample = shape[1:] if time_folded else shape[2:]
        # the dims before the sample in the module's own terms: [B] for a per-step module
        # (inside SeqToANN, or SpikingJelly's multi-step layers, which fold time themselves)
        lead = 1 if time_folded or getattr(m, "step_mode", None) == "m" else 2
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if pending is None:
                raise NIRError(f"{path}: a BatchNorm that follows no Linear / Conv2d to fold into")
            pending[1], pending[2] = _fold_bn(pending[1], pending[2], m)
            continue
        if pending is not None:
            nodes.append(_product_node(*pending))
            pending = None
        neuron = _neuron_node(path, m, sample, dt)
        if neuron is not None:
            nodes.append(neuron)
        elif isinstance(m, nn.Linear | nn.Conv2d):
            if isinstance(m, nn.Conv2d) and (
                m.padding_mode != "zeros" or isinstance(m.padding, str)
            ):
                raise NIRError(f"{path}: only numeric zero padding crosses to NIR")
            bias = None if m.bias is None else m.bias.detach().float()
            pending = [m, m.weight.detach().float(), bias, sample]
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override is not None or (
                    any(_pair(m.padding)) and not m.count_include_pad):  # fmt: skip
                raise NIRError(f"{path}: this AvgPool2d (ceil_mode / divisor / padding not "
                               "counted) has no NIR form")  # fmt: skip
            nodes.append(nir.AvgPool2d(np.array(_pair(m.kernel_size)),
                                       np.array(_pair(m.stride or m.kernel_size)),
                                       np.array(_pair(m.padding))))  # fmt: skip
        elif isinstance(m, nn.Flatten):
            start = m.start_dim - lead if m.start_dim >= 0 else m.start_dim
            end = m.end_dim - lead if m.end_dim >= 0 else m.end_dim
            if start < 0 and m.start_dim >= 0:
                raise NIRError(f"{path}: a Flatten over the batch or time dimensions")
            nodes.append(nir.Flatten({"input": np.array(sample)}, start, end))
        else:
            before = f"export(module, example_input, upto={path!r})" if i else "nothing before it"
            raise NIRError(f"{path} ({type(m).__name__}) has no NIR form (NIR has no attention, "
                           f"max-pool, token lookup or readout over time); the part before it "
                           f"exports: {before}")  # fmt: skip
    if pending is not None:
        nodes.append(_product_node(*pending))
    if not nodes:
        raise NIRError("nothing to export: the chain is empty")
    graph = nir.NIRGraph.from_list(*nodes)
    graph.nodes["input"] = nir.Input({"input": np.array(tuple(example_input.shape[2:]))})
    return graph


def _product_node(m, weight, bias, sample):
    nir = _nir()
    w = weight.detach().cpu().numpy()
    bias = None if bias is None else bias.detach()
    if isinstance(m, nn.Conv2d):
        b = bias.cpu().numpy() if bias is not None else np.zeros(w.shape[0], dtype=w.dtype)
        return nir.Conv2d(input_shape=tuple(int(s) for s in sample[-2:]), weight=w,
                          stride=_pair(m.stride), padding=_pair(m.padding),
                          dilation=_pair(m.dilation), groups=m.groups, bias=b)  # fmt: skip
    return nir.Linear(w) if bias is None else nir.Affine(w, bias.cpu().numpy())
