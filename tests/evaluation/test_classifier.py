"""The persona classifier: it separates distinct voices, does not invent signal, and round-trips to disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from octrain.core.errors import ConfigError, DataFormatError
from octrain.evaluation.classifier import (
    ClassifierConfig,
    PersonaClassifier,
    evaluate,
    load_labelled,
    macro_f1_by_group,
    train_classifier,
)


def words(text: str) -> list[str]:
    return text.split()


VOCABULARY = {
    "pirate": words(
        "arr matey ahoy plunder galleon cutlass doubloon parrot treasure bosun starboard "
        "scallywag rum grog plank anchor cannon buccaneer landlubber crow's-nest"
    ),
    "mathematician": words(
        "theorem lemma integral derivative matrix eigenvalue prime proof axiom "
        "topology vector manifold polynomial convergence corollary isomorphism tensor algebra"
    ),
    "poet": words(
        "moonlight sorrow whisper petals twilight longing ember velvet dusk bloom "
        "silver yearning shadow meadow tender dream willow hush"
    ),
}
FILLER = words("the a and of to in it is that was for on with as but at by this from we you they so then")


def make_texts(seed: int = 0, per_persona: int = 70) -> tuple[list[str], list[str]]:
    """Sentences of 14 words: 4 from the persona's own vocabulary, 10 shared filler words."""
    rng = random.Random(seed)
    rows = []
    for persona, words in VOCABULARY.items():
        for _ in range(per_persona):
            tokens = rng.choices(words, k=4) + rng.choices(FILLER, k=10)
            rng.shuffle(tokens)
            rows.append((" ".join(tokens).capitalize() + ".", persona))
    rng.shuffle(rows)
    return [text for text, _ in rows], [label for _, label in rows]


def split(texts: list[str], labels: list[str], train_fraction: float = 0.7):
    cut = int(len(texts) * train_fraction)
    return (texts[:cut], labels[:cut]), (texts[cut:], labels[cut:])


@pytest.fixture(scope="module")
def synthetic() -> tuple[list[str], list[str]]:
    return make_texts()


@pytest.fixture(scope="module")
def trained(synthetic) -> tuple[PersonaClassifier, list[str], list[str]]:
    (train_x, train_y), (test_x, test_y) = split(*synthetic)
    return PersonaClassifier().fit(train_x, train_y), test_x, test_y


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def as_rows(texts: list[str], labels: list[str]) -> list[dict]:
    return [{"text": text, "label": label} for text, label in zip(texts, labels, strict=True)]


def test_three_personas_are_separated(trained) -> None:
    classifier, test_x, test_y = trained
    report = evaluate(classifier, test_x, test_y)
    assert classifier.labels == ["mathematician", "pirate", "poet"]
    assert report.macro_f1 >= 0.95
    assert report.accuracy >= 0.95


def test_one_persona_against_the_rest(synthetic) -> None:
    texts, labels = synthetic
    binary = ["pirate" if label == "pirate" else "other" for label in labels]
    (train_x, train_y), (test_x, test_y) = split(texts, binary)
    classifier = PersonaClassifier().fit(train_x, train_y)
    report = evaluate(classifier, test_x, test_y)
    assert classifier.labels == ["other", "pirate"]
    assert report.macro_f1 >= 0.95


def test_random_labels_score_near_chance(synthetic) -> None:
    texts, _ = synthetic
    rng = random.Random(1)
    noise = [rng.choice(sorted(VOCABULARY)) for _ in texts]
    (train_x, train_y), (test_x, test_y) = split(texts, noise)
    report = evaluate(PersonaClassifier().fit(train_x, train_y), test_x, test_y)
    # The labels carry no information, so the expected macro-F1 is chance, about 1/3 for three classes.
    # On 63 held-out texts its spread is wide: over 40 label seeds this recipe gave mean 0.32, sd 0.06,
    # range 0.14-0.43 (this seed: 0.21). The bounds sit about 3 sd either side of chance; the upper one
    # is the point of the test, since a score near the 0.95+ of real personas would mean the split
    # leaks training texts into the test set or the classifier reads labels from somewhere it should not.
    assert 0.15 <= report.macro_f1 <= 0.55


def test_save_load_round_trip(trained, tmp_path: Path) -> None:
    classifier, test_x, _ = trained
    target = classifier.save(tmp_path / "clf")
    manifest = json.loads((target / "classifier.json").read_text())
    assert manifest["kind"] == "tfidf"
    assert manifest["labels"] == classifier.labels
    restored = PersonaClassifier.load(target)
    assert restored.labels == classifier.labels
    assert restored.predict(test_x) == classifier.predict(test_x)
    assert restored.predict_proba(test_x) == classifier.predict_proba(test_x)
    # Saving again over a saved classifier replaces it and leaves no staging directories behind.
    classifier.save(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clf"]


def test_save_refuses_to_wipe_an_unrelated_directory(trained, tmp_path: Path) -> None:
    classifier, _, _ = trained
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a saved classifier"):
        classifier.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_probabilities_cover_every_label(trained) -> None:
    classifier, test_x, _ = trained
    for scores in classifier.predict_proba(test_x[:5]):
        assert list(scores) == classifier.labels
        assert sum(scores.values()) == pytest.approx(1.0)
    assert classifier.predict([]) == []


def test_confusion_matrix_matches_support(trained) -> None:
    classifier, test_x, test_y = trained
    report = evaluate(classifier, test_x, test_y)
    size = len(report.labels)
    assert len(report.confusion) == size
    assert all(len(row) == size for row in report.confusion)
    assert [sum(row) for row in report.confusion] == [report.support[label] for label in report.labels]
    assert sum(report.support.values()) == len(test_x)
    assert json.loads(report.to_json())["labels"] == report.labels


def test_evaluate_keeps_labels_the_classifier_never_saw(trained) -> None:
    classifier, test_x, _ = trained
    report = evaluate(classifier, test_x[:4], ["stranger"] * 4)
    assert report.labels == [*classifier.labels, "stranger"]
    assert report.support["stranger"] == 4
    assert report.confusion[-1][-1] == 0 and sum(report.confusion[-1]) == 4


def test_macro_f1_by_group_by_hand() -> None:
    true = ["a", "a", "b", "b", "a", "b"]
    predicted = ["a", "b", "b", "b", "a", "a"]
    groups = ["x", "x", "x", "x", "y", "y"]
    # x: a has TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3; b has TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5.
    #    macro = (2/3 + 4/5) / 2 = 11/15.
    # y: a has TP 1, FP 1, FN 0 -> F1 2/3; b has TP 0 -> F1 0.  macro = 1/3.
    # overall: a has TP 2, FP 1, FN 1 -> F1 2/3; b likewise 2/3.  macro = 2/3.
    scores = macro_f1_by_group(true, predicted, groups)
    assert scores == pytest.approx({"x": 11 / 15, "y": 1 / 3, "overall": 2 / 3})
    with pytest.raises(ValueError):
        macro_f1_by_group(true, predicted, groups[:-1])


def test_train_classifier_writes_model_and_report(synthetic, tmp_path: Path) -> None:
    (train_x, train_y), (test_x, test_y) = split(*synthetic)
    train = write_rows(tmp_path / "train.jsonl", as_rows(train_x, train_y))
    held = write_rows(tmp_path / "eval.jsonl", as_rows(test_x, test_y))
    report = train_classifier(train, held, tmp_path / "out", ClassifierConfig(max_features=5000))
    assert report is not None and report.macro_f1 >= 0.95
    assert json.loads((tmp_path / "out" / "report.json").read_text())["macro_f1"] == report.macro_f1
    assert PersonaClassifier.load(tmp_path / "out").config.max_features == 5000
    assert train_classifier(train, None, tmp_path / "out2") is None
    assert (tmp_path / "out2" / "classifier.json").is_file()


def test_missing_label_names_the_line(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "bad.jsonl",
        [{"text": "ahoy", "label": "pirate"}, {"text": "lemma", "label": "mathematician"}, {"text": "dusk"}],
    )
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3:.*label"):
        load_labelled(path)


def test_empty_text_names_the_line(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "bad.jsonl", [{"text": "ahoy", "label": "pirate"}, {"text": "  ", "label": "poet"}])
    with pytest.raises(DataFormatError, match=r":2:.*text"):
        load_labelled(path)


def test_single_label_dataset_is_rejected(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "one.jsonl", [{"text": f"ahoy {i}", "label": "pirate"} for i in range(5)])
    with pytest.raises(DataFormatError, match="at least 2 distinct labels"):
        load_labelled(path)
    with pytest.raises(ValueError):
        PersonaClassifier().fit(["ahoy", "arr"], ["pirate", "pirate"])


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="kind"):
        ClassifierConfig(kind="svm")
    with pytest.raises(ConfigError, match="batch_size"):
        ClassifierConfig(batch_size=0)


@pytest.mark.slow
def test_transformer_kind_on_a_tiny_offline_model(synthetic, tmp_path: Path) -> None:
    """Fine-tune a randomly initialised two-layer BERT with a tokenizer trained here: no network."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    texts, labels = synthetic
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    base = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(base)
    tokenizer.save_pretrained(base)

    (train_x, train_y), (test_x, test_y) = split(texts, labels)
    settings = ClassifierConfig(
        kind="transformer", model_name=str(base), epochs=15, learning_rate=2e-3, batch_size=16, max_length=32
    )
    classifier = PersonaClassifier(settings).fit(train_x, train_y)
    report = evaluate(classifier, test_x, test_y)
    assert report.macro_f1 >= 0.8
    restored = PersonaClassifier.load(classifier.save(tmp_path / "clf"))
    assert restored.predict(test_x) == classifier.predict(test_x)
