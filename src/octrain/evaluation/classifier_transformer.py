"""The ``transformer`` kind of persona classifier: a sequence-classification head fine-tuned on an encoder.

:class:`octrain.evaluation.classifier.PersonaClassifier` calls these for ``kind="transformer"``:
:func:`fit_transformer` trains, :func:`transformer_proba` scores, :func:`load_transformer` reads
a saved model back. torch and transformers are imported inside the functions, so that the
classifier module (and the ``tfidf`` kind) loads without them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol


class TransformerSettings(Protocol):
    """What the transformer kind reads from :class:`octrain.evaluation.classifier.ClassifierConfig`."""

    model_name: str
    epochs: float
    learning_rate: float
    batch_size: int
    max_length: int
    seed: int


def fit_transformer(
    settings: TransformerSettings, texts: list[str], labels: list[str], distinct: list[str]
) -> tuple[Any, Any]:
    """Fine-tune ``settings.model_name`` on ``texts`` with their ``labels`` (``distinct``: the sorted labels).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on the device it trained on.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    device = _torch_device()
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_name)
    model = AutoModelForSequenceClassification.from_pretrained(
        settings.model_name,
        num_labels=len(distinct),
        id2label=dict(enumerate(distinct)),
        label2id={label: index for index, label in enumerate(distinct)},
    )
    _ensure_pad_token(tokenizer, model)
    model.float().to(device).train()  # fp32 everywhere: CPUs lack fast half precision, and it is stable

    index = {label: position for position, label in enumerate(distinct)}
    targets = torch.tensor([index[label] for label in labels])
    # The same balancing as the tfidf kind: each class weighs n / (k * count) in the loss.
    counts = Counter(labels)
    weights = torch.tensor([len(labels) / (len(distinct) * counts[label]) for label in distinct])
    steps_per_epoch = math.ceil(len(texts) / settings.batch_size)
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * total_steps), total_steps)
    generator = torch.Generator().manual_seed(settings.seed)

    for step, batch in enumerate(_shuffled_batches(len(texts), settings.batch_size, generator)):
        if step >= total_steps:
            break
        encoded = tokenizer(
            [texts[i] for i in batch],
            padding=True,
            truncation=True,
            max_length=settings.max_length,
            return_tensors="pt",
        ).to(device)
        logits = model(**encoded).logits
        loss = torch.nn.functional.cross_entropy(logits, targets[batch].to(device), weight=weights.to(device))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()

    return model.eval(), tokenizer


def transformer_proba(
    model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_length: int
) -> list[list[float]]:
    """Per text, the probability of each label, in the model's label order."""
    import torch

    rows: list[list[float]] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            rows.extend(torch.softmax(model(**encoded).logits.float(), dim=-1).cpu().tolist())
    return rows


def load_transformer(directory: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` saved in ``directory`` by ``save_pretrained``, the model ready to score."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    return model.float().to(_torch_device()).eval(), tokenizer


def _torch_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Give decoder-style tokenizers (no pad token) one, so batches can be padded."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _shuffled_batches(size: int, batch_size: int, generator: Any) -> Iterator[Any]:
    """Endless index batches: a fresh permutation every epoch, so fractional epochs just stop early."""
    import torch

    while True:
        order = torch.randperm(size, generator=generator)
        yield from order.split(batch_size)
