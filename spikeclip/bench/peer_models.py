"""`spikeclip bench peer-models`: SpikingJelly 2.0's own model zoo networks, a training step
(forward + backward) as shipped against the same network after `spikeclip.accelerate` (neurons
only; neurons and attention; memory="lossless"), with the bytes saved for the backward per
sample beside each. Every ratio is taken in the same run, on the same weights and input."""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
import types

import torch

import spikeclip
from spikeclip.bench.timing import format_table, median_times
from spikeclip.memory import saved_tensor_bytes

PEER_MODELS = ("spikformer", "spike_driven_transformer", "sew_resnet")
_LIF = {"tau": 2.0, "detach_reset": True}  # the models' published neuron settings


def _import_the_model_zoo() -> None:
    """Imports SpikingJelly's model zoo. Its sew_resnet / spiking_vgg import
    `torchvision.models.utils` for load_state_dict_from_url alone (pretrained weights). PyPI's
    torchvision wheels are built for CUDA torch and do not import beside the CPU wheel: there,
    torch.hub's function of the same name stands in while those two modules import, and the
    stand-in is removed again (others look torchvision up and must not find it)."""
    zoo = ("spikingjelly.activation_based.model.sew_resnet",
           "spikingjelly.activation_based.model.spiking_vgg")  # fmt: skip
    if all(name in sys.modules for name in zoo):
        return
    try:
        importlib.import_module("torchvision.models.utils")
    except Exception:
        pass
    else:
        for name in zoo:
            importlib.import_module(name)
        return
    real = {n: m for n, m in sys.modules.items() if n.split(".")[0] == "torchvision"}
    for name in real:
        del sys.modules[name]
    names = ("torchvision", "torchvision.models", "torchvision.models.utils")
    package, models, utils = (types.ModuleType(n) for n in names)
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    package.models, models.utils = models, utils
    sys.modules.update({m.__name__: m for m in (package, models, utils)})
    try:
        for name in zoo:
            importlib.import_module(name)
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(real)


def zoo_model(name: str, *, T: int = 4, width: int = 128, depth: int = 2, image: int = 32,
              batch: int = 16, classes: int = 10, dtype=torch.float32):  # fmt: skip
    """(SpikingJelly's model `name` with its own neurons, an input batch). width / depth size the
    transformers (embed dims, blocks); the CNNs take their smallest published stage plan."""
    _import_the_model_zoo()
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.model import (
        qkformer,
        sew_resnet,
        spike_driven_transformer,
        spikformer,
        spiking_vgg,
    )

    x = torch.rand(batch, 3, image, image, dtype=dtype)
    if name == "spikformer":
        net = spikformer.Spikformer(
            T=T, img_size_h=image, img_size_w=image, patch_size=4, num_classes=classes,
            embed_dims=width, num_heads=max(1, width // 16), depths=depth, **_LIF)  # fmt: skip
    elif name == "spike_driven_transformer":
        net = spike_driven_transformer.SpikeDrivenTransformer(
            T=T, num_classes=classes, embed_dims=width, num_heads=max(1, width // 16),
            depths=depth, **_LIF)  # fmt: skip
    elif name == "qkformer":
        heads = max(1, width // 48)
        net = qkformer.QKFormer(T=T, num_classes=classes, embed_dims=width,
                                num_heads=(heads, 2 * heads, 2 * heads), depths=(1, 1, depth),
                                **_LIF)  # fmt: skip
    elif name == "sew_resnet":
        net = sew_resnet.SEWResNet(sew_resnet.BasicBlock, [depth] * 4, num_classes=classes,
                                   cnf="ADD", spiking_neuron=neuron.LIFNode, step_mode="m",
                                   **_LIF)  # fmt: skip
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    elif name == "spiking_vgg":
        net = spiking_vgg.SpikingVGG([width // 8, "M", width // 4, "M"], batch_norm=True,
                                     num_classes=classes, spiking_neuron=neuron.LIFNode,
                                     step_mode="m", **_LIF)  # fmt: skip
        # its classifier is fixed at 512*7*7 -> 4096 -> 4096: one of the same layers, smaller
        net.classifier = torch.nn.Sequential(
            layer.Linear(width // 4 * 49, width, step_mode="m"),
            neuron.LIFNode(step_mode="m", **_LIF),
            layer.Linear(width, classes, step_mode="m"),
        )
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    else:
        raise ValueError(f"no SpikingJelly model {name!r}; known: {PEER_MODELS}")
    functional.set_step_mode(net, "m")
    return net.to(dtype), x


def training_step(net, x, owner=None):
    """A function running one training step of SpikingJelly network `net` on x (forward, the
    backward of the output's sum) and then reset_net on `owner` (default net; a compiled
    network's original, whose modules hold the neurons)."""
    from spikingjelly.activation_based import functional

    def run():
        net(x).float().sum().backward()
        functional.reset_net(net if owner is None else owner)

    return run


def _compile_every_module(compile: bool):
    """Every SpikingJelly neuron is its own module, and dynamo compiles each (its default limit,
    8 per function, would leave the rest eager): the limit raised while compiled networks run.
    The setting is `recompile_limit` (`cache_size_limit` before torch 2.6)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: 256}) if compile else contextlib.nullcontext()


def bench_peer_models(models=PEER_MODELS, *, batch: int = 16, T: int = 4,
                      dtypes=(torch.float32,), rounds: int = 5, device="cpu",
                      compile: bool = False) -> list[dict]:  # fmt: skip
    """Rows: model, dtype, contender, step_ms, vs_spikingjelly, saved_MiB_per_sample (and on
    CUDA peak_MiB). On CUDA, SpikingJelly runs its own GPU kernels (its Triton LIF where
    SJ_LIF_CUDA_IMPLEMENTATION=triton), ours the cuda / triton backends. With `compile`, also
    SpikingJelly's network and the accelerated one under torch.compile (compiled before the
    timing; the same rounds)."""
    device = torch.device(device)
    try:
        from spikingjelly.activation_based import functional
    except ImportError as exc:
        raise SystemExit(
            f"bench peer-models needs SpikingJelly 2.0 ({exc}): "
            "pip install --no-deps spikingjelly==2.0.0 loguru h5py"
        ) from exc
    rows = []
    for name in models:
        for dtype in dtypes:
            torch.manual_seed(0)
            shipped, x = zoo_model(name, T=T, batch=batch, dtype=dtype)
            shipped, x = shipped.to(device), x.to(device)
            neurons = copy.deepcopy(shipped)
            spikeclip.accelerate(neurons, attention=False)
            everything = copy.deepcopy(shipped)
            spikeclip.accelerate(everything)
            lossless = copy.deepcopy(shipped)
            spikeclip.accelerate(lossless, memory="lossless")
            contenders = {"spikingjelly (as shipped)": shipped,
                          "accelerate(attention=False)": neurons,
                          "accelerate()": everything,
                          'accelerate(memory="lossless")': lossless}  # fmt: skip
            # the module whose state reset_net clears (a compiled one's original)
            owners = {label: net for label, net in contenders.items()}
            if compile:
                for label, net in (("spikingjelly + torch.compile", shipped),
                                   ("accelerate() + torch.compile", everything)):  # fmt: skip
                    contenders[label], owners[label] = torch.compile(net), net

            with _compile_every_module(compile):
                steps = {k: training_step(net, x, owners[k]) for k, net in contenders.items()}
                times = median_times(steps, device, rounds=rounds, budget_s=60.0)
                measured = {}  # label -> (bytes saved for the backward, peak device bytes)
                for label in contenders:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    out, saved = saved_tensor_bytes(contenders[label], x)
                    del out
                    functional.reset_net(owners[label])
                    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
                    measured[label] = saved, peak
            base = times["spikingjelly (as shipped)"]
            for label, (saved, peak) in measured.items():
                row = dict(model=name, dtype=str(dtype).replace("torch.", ""), contender=label,
                           step_ms=times[label] * 1e3, vs_spikingjelly=base / times[label],
                           saved_MiB_per_sample=saved / batch / 2**20)  # fmt: skip
                if device.type == "cuda":
                    row["peak_MiB"] = peak / 2**20
                rows.append(row)
            print(format_table(rows[-len(contenders) :], list(rows[-1])), flush=True)
    return rows
