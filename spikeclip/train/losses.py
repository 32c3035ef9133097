"""The recipe's losses, each written once."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over the batch (features `[B, E]`, any norm)."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def cosine_logits(
    image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, scale: float
) -> torch.Tensor:
    """scale * cos(image, class): `[B, E]` x `[K, E]` -> `[B, K]`."""
    return (
        scale
        * F.normalize(image_embeddings.float(), dim=-1)
        @ F.normalize(class_embeddings.float(), dim=-1).t()
    )


def dual_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ce_weight: float = 1.0,
    kl_weight: float = 1.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SpikeCLIP's fine-tuning loss: ce_weight * CE(student, labels) + kl_weight * tau^2 *
    KL(teacher probabilities || student probabilities), both at temperature tau."""
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)
    return ce_weight * ce + kl_weight * kl, {"ce": ce.item(), "kl": kl.item()}


def official_dual_loss(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    class_embeddings: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpikeCLIP's official dual loss, as its code computes it: (CE, KL), to be weighted 1:1.

    class_embeddings `[K, E]`: per class the mean over templates of the L2-normalised SNN text
    features, not renormalised (SpikeCLIP.classifier(..., renormalize=False)). Student logits
    = normalised student image feature . class embeddings (scale 1); CE against the labels;
    KL = kl_div(log_softmax(student logits), softmax(normalised teacher image feature . the
    same SNN class embeddings), reduction "sum": summed over the batch, not averaged)."""
    classes = class_embeddings.float().t()
    logits = F.normalize(student_embeddings.float(), dim=-1) @ classes
    with torch.no_grad():
        target = (F.normalize(teacher_embeddings.float(), dim=-1) @ classes).softmax(-1)
    ce = F.cross_entropy(logits, labels)
    kl = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="sum")
    return ce, kl


def gradient_angle(a: torch.Tensor, b: torch.Tensor, params) -> float:
    """The angle in degrees between the gradients of losses a and b with respect to params
    (all flattened into one vector); parameters neither reaches count as zeros."""
    params = list(params)
    ga = torch.autograd.grad(a, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(b, params, retain_graph=True, allow_unused=True)

    def flat(grads):
        return torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
            for g, p in zip(grads, params, strict=True)
        ])  # fmt: skip

    va, vb = flat(ga), flat(gb)
    cos = (va @ vb) / (va.norm() * vb.norm()).clamp_min(1e-30)
    return float(torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))))
