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
