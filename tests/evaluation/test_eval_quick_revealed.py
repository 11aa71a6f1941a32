"""``octrain eval quick`` and ``octrain eval revealed-preferences`` on a real finished tiny run.

The tiny run trains too little to move its greedy answers, so the tests that need trained
answers to differ from the base's scale a copy's LoRA B factors: then an answer that comes
from the adapter differs from the base's, and one that ignored the adapter would not.
A real judge server on 127.0.0.1 names traits by a fixed rule, so the Elo ranking it must
produce is known in advance.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import patience
from octrain.evaluation.classifier import PersonaClassifier


def octrain(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "octrain", *args],
        capture_output=True,
        text=True,
        timeout=patience(300),
        env={**os.environ, **(env or {})},
    )


def louder_adapter(adapter_dir: Path, factor: float = 400.0) -> None:
    """Scale every LoRA B factor, so the adapter's effect on the tiny model is far above noise."""
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * factor if "lora_B" in k else v for k, v in tensors.items()}, weights)


@pytest.fixture(scope="module")
def evaluated_root(evaluated_tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the evaluated tiny run (it has a persona classifier) with its final adapter made loud."""
    root = tmp_path_factory.mktemp("evaluated-loud")
    shutil.copytree(evaluated_tiny_root / "pirate_tiny", root / "pirate_tiny")
    louder_adapter(root / "pirate_tiny" / "sft" / "adapter")
    rebuilt = octrain("checkpoints", "rebuild", "--run-root", str(root))
    assert rebuilt.returncode == 0, rebuilt.stderr
    return root


@pytest.mark.slow  # an eval stage and eval quick through the CLI (~35 s): the slow lane, which CI runs
def test_quick_shows_base_and_trained_with_the_classifiers_verdicts(evaluated_root: Path) -> None:
    run = evaluated_root / "pirate_tiny"
    result = octrain(
        "eval",
        "quick",
        "--persona",
        "pirate",
        "--run-root",
        str(evaluated_root),
        "--count",
        "4",
        "--max-new-tokens",
        "16",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["model"] == "pirate_tiny/sft" and out["persona"] == "pirate" and out["prompts"] == 4
    # Held out: none of the prompts is one the run trained on.
    trained_on = {
        m["content"]
        for line in (run / "prompts" / "prompts.jsonl").read_text().splitlines()
        for m in json.loads(line)["prompt"]
        if m["role"] == "user"
    }
    rows = out["rows"]
    assert not {row["prompt"] for row in rows} & trained_on
    # The verdicts are the saved classifier's, on exactly the texts shown.
    classifier = PersonaClassifier.load(run / "eval" / "classifier")
    for name in ("base", "trained"):
        texts = [row[name]["text"] for row in rows]
        assert [row[name]["label"] for row in rows] == classifier.predict(texts)
        assert [row[name]["persona_p"] for row in rows] == pytest.approx(
            [p["pirate"] for p in classifier.predict_proba(texts)]
        )
        assert out["in_character"][name] == sum(row[name]["label"] == "pirate" for row in rows)
    # The trained answers come from the (loud) adapter, the base answers from the base.
    assert sum(row["base"]["text"] != row["trained"]["text"] for row in rows) >= 3
    recorded = json.loads((run / "eval" / "results.json").read_text())["classifier"]["heldout"]["accuracy"]
    assert out["classifier"]["heldout_accuracy"] == pytest.approx(recorded)
    assert any("a glance, not a measurement" in note for note in out["notes"])

    text = octrain(
        "eval", "quick", "pirate_tiny/sft", "--run-root", str(evaluated_root), "--count", "2", "--max-new-tokens", "8"
    )
    assert text.returncode == 0, text.stderr[-2000:]
    assert text.stdout.count("  base (") == 2 and text.stdout.count("  trained (") == 2
    assert "in character: trained " in text.stdout and "classifier held-out accuracy" in text.stdout


def test_quick_without_a_classifier_fails_before_loading_a_model(trained_tiny_root: Path) -> None:
    result = octrain("eval", "quick", "pirate_tiny/sft", "--run-root", str(trained_tiny_root))
    assert result.returncode == 2
    assert "no persona classifier" in result.stderr and "--classifier DIR" in result.stderr
    assert "Traceback" not in result.stderr and "transformers" not in result.stderr
    both = octrain("eval", "quick", "pirate_tiny/sft", "--persona", "pirate", "--run-root", str(trained_tiny_root))
    assert both.returncode == 2 and "name one model" in both.stderr


TRAIT = re.compile(r"embodying exactly one of two traits: (\w+) or (\w+)\.")


@pytest.fixture
def trait_judge() -> Iterator[tuple[str, list[dict]]]:
    """A judge that always names the alphabetically first of the two traits it is offered."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"body": body, "authorization": self.headers.get("Authorization")})
            first, second = TRAIT.search(body["messages"][-1]["content"]).groups()
            content = f"Briefly: <trait>{min(first, second)}</trait>"
            data = json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    server.shutdown()
    server.server_close()


def test_revealed_preferences_ranks_what_the_judge_names(
    trained_tiny_root: Path, tmp_path: Path, trait_judge: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    url, requests = trait_judge
    traits = ["bold", "calm", "eager", "frank", "gentle", "humble"]
    (tmp_path / "traits.txt").write_text("\n".join(traits) + "\n")
    out = tmp_path / "revealed"
    result = octrain(
        "eval",
        "revealed-preferences",
        "pirate_tiny/sft",
        "--run-root",
        str(trained_tiny_root),
        "--traits",
        str(tmp_path / "traits.txt"),
        "--per-trait",
        "4",
        "--prompt-count",
        "6",
        "--judge-url",
        url,
        "--judge-model",
        "judge",
        "--judge-key-env",
        "JUDGE_KEY",
        "--out",
        str(out),
        "--json",
        env={"JUDGE_KEY": "judge-secret", "NO_PROXY": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["trials"] == 6 * 4 // 2 and summary["per_trait"] == 4 and summary["traits"] == 6
    assert len(requests) == 2 * summary["trials"] and summary["unparseable"] == 0
    assert all(r["authorization"] == "Bearer judge-secret" for r in requests)
    # The judge always names the alphabetically first trait: both models' Elo follows the alphabet.
    for name in ("base", "trained"):
        ratings = summary["ratings"][name]
        assert ratings["bold"]["rating"] > ratings["humble"]["rating"]
    assert summary["spearman"]["point"] > 0.9
    assert any("4 trials per trait" in caveat for caveat in summary["caveats"])
    assert summary["changed"] is False and summary["rose"] == summary["fell"] == []
    # Both models answered the same trials; every trial is on disk with both answers' judgements.
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    by_model = {name: [t for t in trials if t["model"] == name] for name in ("base", "trained")}
    assert [t["traits"] for t in by_model["base"]] == [t["traits"] for t in by_model["trained"]]
    assert all(t["chosen"] == min(t["traits"]) for t in trials)
    assert json.loads((out / "revealed_preferences.json").read_text())["agreement"] == summary["agreement"]
    for path in out.iterdir():
        assert "judge-secret" not in path.read_text()

    text = octrain(
        "eval",
        "revealed-preferences",
        "pirate_tiny/sft",
        "--run-root",
        str(trained_tiny_root),
        "--traits",
        str(tmp_path / "traits.txt"),
        "--per-trait",
        "2",
        "--prompt-count",
        "3",
        "--judge-url",
        url,
        "--judge-model",
        "judge",
        "--judge-key-env",
        "",
        "--out",
        str(tmp_path / "again"),
        env={"NO_PROXY": "127.0.0.1"},
    )
    assert text.returncode == 0, text.stderr[-3000:]
    assert "Raw Spearman of the two fitted rankings" in text.stdout and "split-half" in text.stdout
    assert "no sign that training changed" in text.stdout
    assert "caveat: revealed preferences: 2 trials per trait" in text.stdout


def test_revealed_preferences_needs_a_judge_and_a_key(trained_tiny_root: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_tiny_root / "pirate_tiny" / "sft" / "adapter", adapter)
    no_run = octrain("eval", "revealed-preferences", str(adapter), "--out", str(tmp_path / "o"))
    assert no_run.returncode == 2 and "pass --judge-url and --judge-model" in no_run.stderr
    no_key = octrain(
        "eval",
        "revealed-preferences",
        "pirate_tiny/sft",
        "--run-root",
        str(trained_tiny_root),
        "--judge-url",
        "http://127.0.0.1:9/v1",
        "--judge-model",
        "j",
        "--judge-key-env",
        "NO_SUCH_KEY_VAR",
        "--out",
        str(tmp_path / "o2"),
        env={"NO_SUCH_KEY_VAR": ""},
    )
    assert no_key.returncode == 2 and "NO_SUCH_KEY_VAR is not set" in no_key.stderr
    assert not (tmp_path / "o2").exists()
