"""Zero-shot evaluation: top-1 over any list of class names, and SpikeCLIP's two label
experiments ("replace": some classes under names never used in training; "expand": distractor
names added to the candidates), for any encoder pair (teacher or student)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from spikeclip.train.losses import cosine_logits
from spikeclip.train.vocabulary import label_experiments

Classifier = Callable[[Sequence[str]], torch.Tensor]  # class names -> class embeddings [K, E]


@torch.no_grad()
def embed_images(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "embedding images",
) -> torch.Tensor:
    """encode(images `[B, 3, H, W]` on `device`) -> `[B, E]` over the whole dataset, on CPU."""
    out = []
    n = len(dataset)
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        images, _ = dataset.batch(torch.arange(i, min(i + batch_size, n)))
        out.append(encode(images.to(device)).float().cpu())
    return torch.cat(out)


def top1(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels) -> float:
    """Fraction of images whose most similar class embedding is their label's."""
    if class_embeddings.shape[0] == 0:
        raise ValueError("no classes to choose from")
    pred = cosine_logits(image_embeddings, class_embeddings.to(image_embeddings), 1.0).argmax(1)
    return float((pred == torch.as_tensor(labels)).float().mean())


def clip_benchmark_result(dataset: str, model: str, acc1: float, acc5: float,
                          mean_per_class_recall: float) -> dict:  # fmt: skip
    """The fields of LAION clip_benchmark's result JSON for zero-shot classification (its
    `eval` writes them), so that its tables read our results: acc5 is NaN with fewer than 5
    classes, mean_per_class_recall the mean of the classes' recalls (balanced accuracy)."""
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": None,
        "task": "zeroshot_classification",
        "metrics": {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall},
        "language": "en",
    }


def retrieval_recalls(similarity: torch.Tensor, caption_image, ks=(1, 5, 10)) -> dict:
    """Image-text retrieval recall@k as LAION clip_benchmark defines it, from the cosine
    similarity `[captions, images]` and each caption's image index (an image may have several
    captions): image_retrieval_recall@k, the fraction of captions whose k most similar images
    hold theirs; text_retrieval_recall@k, the fraction of images whose k most similar captions
    hold one of theirs (k capped at the candidates there are)."""
    n_captions, n_images = similarity.shape
    positive = torch.zeros(n_captions, n_images, dtype=torch.bool)
    positive[torch.arange(n_captions), torch.as_tensor(caption_image)] = True
    out = {}
    for k in ks:
        for name, sim, pos in (("image", similarity, positive),
                               ("text", similarity.t(), positive.t())):  # fmt: skip
            top = sim.topk(min(k, sim.shape[1]), dim=1).indices
            out[f"{name}_retrieval_recall@{k}"] = float(pos.gather(1, top).any(1).float().mean())
    return out


def zero_shot_report(
    image_embeddings: torch.Tensor,
    labels: torch.Tensor,
    classifier: Classifier,
    class_names: Sequence[str],
    dataset: str,
) -> dict:
    """{"acc", "replace_acc", "expand_acc", "experiments"}: the headline label experiment's
    accuracies (None when `dataset` defines none), and every experiment's by name."""
    report = {"acc": top1(image_embeddings, classifier(list(class_names)), labels)}
    report["replace_acc"] = report["expand_acc"] = None
    report["experiments"] = {}
    for i, exp in enumerate(label_experiments(dataset, list(class_names))):
        accs = {
            "replace_acc": top1(image_embeddings, classifier(exp["replace"]), labels),
            "expand_acc": top1(image_embeddings, classifier([*class_names, *exp["expand"]]),
                               labels),
        }  # fmt: skip
        report["experiments"][exp["name"]] = accs
        if i == 0:
            report.update(accs)
    return report
