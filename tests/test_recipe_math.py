"""The recipe's math on values worked out by hand: losses (incl. the KL direction, the tau^2
factor and the weights), cosine logits, top-1, the label experiments and the training
vocabulary, soft reset with v_th != 1 on every backend, `auto`'s choice on CPU, the split of
a batch over ranks, atomic writes under a failure, the token mean of the image encoder, and
the energy counts of SDSA and of SSA with d >= N. Each test fails for a plausible one-line
bug in the code it covers."""

import math
import os
from pathlib import Path

import pytest
import torch
from conftest import FUSED

from spikeclip.train.losses import alignment_loss, cosine_logits, dual_loss


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_dual_loss_against_its_formula():
    s, t, label, tau, ce_w, kl_w = [2.0, 0.0, -1.0], [0.0, 1.0, 0.0], 0, 2.0, 0.5, 3.0
    ce = -math.log(softmax(s)[label])
    p_t, p_s = softmax([x / tau for x in t]), softmax([x / tau for x in s])
    kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s, strict=True))  # KL(t||s)
    want = ce_w * ce + kl_w * tau**2 * kl
    got, parts = dual_loss(
        torch.tensor([s]), torch.tensor([t]), torch.tensor([label]),
        ce_weight=ce_w, kl_weight=kl_w, temperature=tau,
    )  # fmt: skip
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert parts["kl"] == pytest.approx(tau**2 * kl, rel=1e-6)
    reverse = sum(b * (math.log(b) - math.log(a)) for a, b in zip(p_t, p_s, strict=True))
    assert abs(reverse - kl) > 1e-3  # the direction is told apart by these values


def test_alignment_loss_and_cosine_logits():
    student = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    teacher = torch.tensor([[8.0, 6.0], [0.0, 2.0]])  # cos 24/25 and 0; norms do not matter
    assert alignment_loss(student, teacher).item() == pytest.approx((1 / 25 + 1) / 2)
    classes = torch.tensor([[0.0, 5.0], [1.0, 1.0]])
    want = [[4 / 5, 7 / 5 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]
    got = cosine_logits(student, classes, 10.0)
    torch.testing.assert_close(got, 10 * torch.tensor(want))


def test_top1_takes_the_most_similar_class():
    from spikeclip.train.evaluate import top1

    images = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.2]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert top1(images, classes, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert top1(images, classes, torch.tensor([1, 0, 1])) == pytest.approx(0.0)  # argmin: 1


def test_label_experiments_and_the_vocabulary_leave_replace_names_out():
    from spikeclip.data import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
    from spikeclip.train.vocabulary import alignment_vocabulary, label_experiment

    fm = label_experiment("fashion-mnist", FASHION_MNIST_CLASSES)
    assert fm["replace"][FASHION_MNIST_CLASSES.index("sneaker")] == "running shoe"
    assert fm["replace"][FASHION_MNIST_CLASSES.index("trouser")] == "trouser"
    c10 = label_experiment("cifar10", CIFAR10_CLASSES)  # the paper's, as the official code
    assert c10["name"] == "paper" and c10["renamed"] == {"horse": "zebra", "ship": "boat"}
    assert c10["replace"][CIFAR10_CLASSES.index("horse")] == "zebra"
    assert c10["replace"][CIFAR10_CLASSES.index("ship")] == "boat"
    assert c10["expand"] == ["apple", "aquarium fish", "bear", "beaver", "bed", "bee", "beetle",
                             "bicycle", "bottle", "bowl"]  # fmt: skip
    from spikeclip.train.vocabulary import label_experiments

    both = label_experiments("cifar10", CIFAR10_CLASSES)
    assert [e["name"] for e in both] == ["paper", "ours"]
    assert both[1]["renamed"]["automobile"] == "car"  # our extra row
    assert "car" not in alignment_vocabulary(CIFAR10_CLASSES, "cifar10")
    for dataset, names, exp in (("fashion-mnist", FASHION_MNIST_CLASSES, fm),
                                ("cifar10", CIFAR10_CLASSES, c10)):  # fmt: skip
        vocab = alignment_vocabulary(names, dataset)
        new_names = set(exp["replace"]) - set(names)
        assert new_names and not new_names & set(vocab)  # never seen in training
        assert set(names) <= set(vocab)


@pytest.mark.parametrize(
    "backend", ["torch", *(p.values[0] for p in FUSED if p.values[1] == "cpu")]
)
def test_soft_reset_with_another_threshold_by_hand(backend):
    from spikeclip.kernels import lif

    x = torch.tensor([1.5, 0.2, 2.0]).view(3, 1)
    # h0 = 1.5 / 2 = 0.75 >= 0.7: fire, v = 0.05; h1 = 0.05 + (0.2 - 0.05) / 2 = 0.125;
    # h2 = 0.125 + (2 - 0.125) / 2 = 1.0625: fire, v = 0.3625
    spikes, v = lif(x, tau=2.0, v_th=0.7, v_reset=None, return_v=True, backend=backend)
    assert spikes.flatten().tolist() == [1.0, 0.0, 1.0]
    assert v.item() == pytest.approx(0.3625, abs=1e-6)
    # hard reset to 0.2: h0 = 0.2 + (1.5 - 0) / 2 = 0.95: fire, v = 0.2; h1 = 0.2 + 0.2 / 2
    spikes, v = lif(x, tau=2.0, v_th=0.7, v_reset=0.2, return_v=True, backend=backend)
    assert spikes.flatten().tolist() == [1.0, 0.0, 1.0]
    assert v.item() == pytest.approx(0.2, abs=1e-6)


def test_auto_picks_the_fused_cpu_backend():
    from spikeclip.kernels.common.backends import resolve_backend, why_unavailable

    if why_unavailable("cpp", torch.device("cpu")) is not None:
        pytest.skip("the C++ extension is not built")
    assert resolve_backend("auto", torch.device("cpu"), op="lif") == "cpp"


def test_ranks_take_disjoint_parts_of_each_batch():
    from spikeclip.train.distributed import Dist
    from spikeclip.train.loop import IndexBatches

    parts = [
        list(IndexBatches(10, 4, 0, "s", Dist(rank=r, world=2)).batches(0, 0, None))
        for r in range(2)
    ]
    whole = list(IndexBatches(10, 4, 0, "s", Dist()).batches(0, 0, None))
    assert len(parts[0]) == len(parts[1]) == len(whole) == 3
    for a, b, w in zip(parts[0], parts[1], whole, strict=True):
        assert not set(a.tolist()) & set(b.tolist())
        assert torch.equal(torch.cat([a, b]), w)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from spikeclip.checkpoint import atomic_write_bytes

    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert [p.name for p in Path(tmp_path).iterdir()] == ["state.json"]  # no temporary left


def test_image_encoder_pools_tokens_by_their_mean():
    from spikeclip.models import ImageEncoder, SpikeCLIPConfig

    # train mode: batch statistics make a fresh network fire (in eval mode its tokens are 0)
    enc = ImageEncoder(SpikeCLIPConfig.named("tiny", depth=1), backend="torch").train()
    seen = {}
    enc.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    images = torch.rand(3, 3, 28, 28)
    with torch.no_grad():
        out = enc(images)
        tokens = seen["tokens"]  # [T, B, N, C]
        assert tokens.dim() == 4 and tokens.shape[1] == 3
        assert (tokens.mean(2) - tokens.amax(2)).abs().max() > 0.1  # the pool is told apart
        want = enc.proj(enc.readout(tokens.mean(2)))
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_energy_of_sdsa_and_of_ssa_when_d_is_not_below_n():
    from spikeclip import energy
    from spikeclip.models import AttentionCore, SpikeCLIPConfig

    q = torch.tensor([[1.0, 0, 1], [0, 0, 0]]).view(1, 1, 1, 2, 3)  # nnz 2; N = 2 <= d = 3
    k = torch.tensor([[1.0, 1, 0], [0, 1, 0]]).view(1, 1, 1, 2, 3)  # nnz 3
    v = torch.tensor([[0.0, 0, 1], [1, 1, 1]]).view(1, 1, 1, 2, 3)  # nnz 4
    sdsa = AttentionCore(SpikeCLIPConfig(attention="sdsa"), spiking=True, backend="torch")
    report = energy.estimate(sdsa, (q, k, v), images=1)
    assert report.rows[0].sops == 3 + 2  # k * v gates nnz(k), q * s gates nnz(q)
    ssa = AttentionCore(SpikeCLIPConfig(attention="ssa"), spiking=True, backend="torch")
    report = energy.estimate(ssa, (q, k, v), images=1)
    assert report.rows[0].sops == (2 + 4) * 2  # (q k^T) @ v: nnz(q) x N + nnz(v) x N


@pytest.mark.parametrize("op", ["lif", "ssa", "sdsa"])
def test_empty_inputs_keep_the_graph(op):
    from spikeclip import kernels

    if op == "lif":
        x = torch.rand(0, 3, 4, requires_grad=True)
        out = kernels.lif(x)
        inputs = (x,)
    else:
        inputs = tuple(torch.rand(0, 1, 2, 3, 4).round().requires_grad_() for _ in range(3))
        out = getattr(kernels, op)(*inputs)
    assert out.shape == inputs[0].shape and out.grad_fn is not None
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    assert all(g is None or g.shape == i.shape for g, i in zip(grads, inputs, strict=True))


def test_nonsense_is_refused_where_it_is_given():
    from spikeclip.kernels import lif, spike_linear, ssa
    from spikeclip.models import SpikeCLIPConfig

    x = torch.rand(2, 3)
    with pytest.raises(TypeError, match="decay_input must be True or False"):
        lif(x, decay_input="no")
    with pytest.raises(TypeError, match="weight must be a floating tensor"):
        spike_linear(x, torch.zeros(2, 1, dtype=torch.uint8), torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="v_th must be finite"):
        SpikeCLIPConfig(v_th=float("nan"))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        SpikeCLIPConfig(alpha=-1.0)
    q = torch.rand(1, 1, 1, 3, 4, requires_grad=True)  # not spikes, and a gradient is needed
    with pytest.raises(ValueError, match="must hold spikes"):
        ssa(q, q.detach().round(), q.detach().round(), backend="torch")
    ssa(q.detach(), q.detach(), q.detach(), backend="torch")  # forward only: any values


def test_non_finite_images_are_refused():
    from spikeclip.models import ImageEncoder, SpikeCLIPConfig

    enc = ImageEncoder(SpikeCLIPConfig.named("tiny", depth=1), backend="torch").eval()
    images = torch.rand(2, 3, 28, 28)
    for bad in (float("nan"), float("inf")):
        images[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            enc(images)
    enc.check_finite = False
    enc(images)  # the documented way to skip the check
