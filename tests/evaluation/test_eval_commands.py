"""The standalone evaluation commands as a user runs them (``octrain eval ...``), with a judge server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import patience


def run(*args: str, env: dict | None = None, module: str = "octrain") -> subprocess.CompletedProcess[str]:
    """``octrain eval ARGS``; with ``module="octrain.evaluation"``, the old ``python -m octrain.evaluation ARGS``."""
    import os

    verb = ["eval"] if module == "octrain" else []
    return subprocess.run(
        [sys.executable, "-m", module, *verb, *args],
        capture_output=True,
        text=True,
        timeout=patience(120),
        env={**os.environ, **(env or {})},
    )


def test_classifier_command(tmp_path: Path) -> None:
    pirate = ["Arr matey, {} be fine!", "Yo ho, the {} sails on, matey.", "Ahoy, {} be the answer, arr."]
    plain = ["The {} is fine.", "Here is the {} you asked for.", "The answer is {}."]
    words = ["map", "ship", "sea", "tide", "coin", "rope", "deck", "wind"]
    rows = [{"text": t.format(w), "label": "pirate"} for t in pirate for w in words]
    rows += [{"text": t.format(w), "label": "other"} for t in plain for w in words]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[::2]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1::2]))
    result = run(
        "classifier",
        "--train",
        str(tmp_path / "train.jsonl"),
        "--eval",
        str(tmp_path / "eval.jsonl"),
        "--out",
        str(tmp_path / "clf"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["macro_f1"] >= 0.95 and sum(map(sum, report["confusion"])) == len(rows[1::2])
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": "a"}\n{"text": "y"}\n')
    bad = run("classifier", "--train", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "c2"))
    assert bad.returncode == 2 and "bad.jsonl:2" in bad.stderr


@pytest.fixture
def judge_server():
    """A judge that prefers whichever reply contains 'Arr', in either position (no verdict on 'garbled')."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            text = body["messages"][-1]["content"]
            first = text.split("REPLY A:\n", 1)[1].split("\n\nREPLY B:", 1)[0]
            verdict = "A" if "Arr" in first else "B"
            # A question it cannot read: never a verdict in tags, however often it is asked.
            content = "Hard to say." if "garbled" in text else f"<verdict>{verdict}</verdict>"
            reply = {
                "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                "usage": {"completion_tokens": 3},
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    server.shutdown()
    server.server_close()


def test_elo_command_fills_winners_with_the_judge(tmp_path: Path, judge_server) -> None:
    url, requests = judge_server
    rows = [{"prompt": f"q{i}", "base_response": "Plain.", "tuned_response": "Arr, matey."} for i in range(6)]
    rows.append({"prompt": "q6", "base_response": "b", "tuned_response": "t", "winner": "base"})
    (tmp_path / "matches.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(
        "elo",
        str(tmp_path / "matches.jsonl"),
        "--judge-url",
        url,
        "--judge-model",
        "judge",
        env={"OPENAI_API_KEY": "secret-key"},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(requests) == 12  # six undecided matches, each judged in both orders
    assert out["decided"] == 7 and abs(out["tuned_win_rate"] - 6 / 7) < 1e-9
    assert out["elo"]["tuned"]["rating"] > out["elo"]["base"]["rating"]
    assert "secret-key" not in result.stdout + result.stderr

    no_judge = run("elo", str(tmp_path / "matches.jsonl"))
    assert no_judge.returncode == 2 and "6 matches have no winner" in no_judge.stderr


def test_elo_command_judges_empty_winners_and_exports_for_the_studio(tmp_path: Path, judge_server) -> None:
    url, requests = judge_server
    plain, pirate = "Plain.", "Arr, matey."
    rows = [
        *({"prompt": f"q{i}", "base_response": plain, "tuned_response": pirate, "winner": ""} for i in range(3)),
        {"prompt": "q3", "base_response": "Arr.", "tuned_response": pirate, "winner": ""},  # orders disagree
        {"prompt": "garbled q4", "base_response": plain, "tuned_response": pirate, "winner": ""},  # no verdict
        {"prompt": "q5", "base_response": plain, "tuned_response": plain, "winner": "tie"},
        {"prompt": "q6", "base_response": pirate, "tuned_response": plain, "winner": "base"},
        # As the eval stage writes a match whose two orders disagreed: judged already, not again.
        {"prompt": "q7", "base_response": plain, "tuned_response": pirate, "winner": None, "judgement": "disagree"},
    ]
    matches = tmp_path / "studio.jsonl"
    matches.write_text("".join(json.dumps(r) + "\n" for r in rows))

    no_judge = run("elo", str(matches))
    assert no_judge.returncode == 2
    assert no_judge.stderr == (
        f"octrain: error: {matches}: 5 matches have no winner; give --judge-url and --judge-model to judge them\n"
    )

    export = tmp_path / "export.jsonl"
    args = ["elo", str(matches), "--judge-url", url, "--judge-model", "judge", "--judge-key-env", ""]
    result = run(*args, "--export-studio", str(export))
    assert result.returncode == 0, result.stderr
    # Both orders of five matches, and the garbled one's two asked once more each (--judge-parse-retries 1).
    assert len(requests) == 5 * 2 + 2
    assert result.stderr.splitlines()[-1] == (
        f"octrain: exported 4 of 8 matches to {export}; left out: ties 1, disagreements 2, unparseable 1"
    )
    out = json.loads(result.stdout)
    assert {k: out[k] for k in ("matches", "decided", "disagreements", "unparseable", "tuned_win_rate")} == {
        "matches": 8,
        "decided": 5,
        "disagreements": 2,
        "unparseable": 1,
        "tuned_win_rate": (3 + 0.5 + 0) / 5,
    }
    assert out["studio_export"] == {
        "path": str(export),
        "matches": 4,
        "left_out": {"ties": 1, "disagreements": 2, "unparseable": 1},
    }
    assert [json.loads(line) for line in export.read_text().splitlines()] == [
        {"prompt": f"q{i}", "base_response": plain, "tuned_response": pirate, "winner": "tuned"} for i in range(3)
    ] + [{"prompt": "q6", "base_response": pirate, "tuned_response": plain, "winner": "base"}]

    # The export reads back as a matches file whose every winner is already decided.
    again = run("elo", str(export))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["decided"] == 4


def test_model_command_evaluates_any_model_of_a_run(tmp_path: Path) -> None:
    from octrain.core.compose import compose_config
    from octrain.run.pipeline import run as run_pipeline

    config = compose_config("pirate_tiny", ["sampler=fake", "prompts.expansion_rounds=0", f"run_root={tmp_path}"])
    run_pipeline(config, tmp_path / "run")
    result = run(
        "model",
        str(tmp_path / "run"),
        "--model",
        str(tmp_path / "run" / "dpo" / "model.json"),
        "--out",
        str(tmp_path / "dpo-eval"),
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "dpo-eval" / "results.json").read_text())
    assert results["trained_model"].endswith("dpo/adapter") and results["prompts"] == 12
    assert (tmp_path / "dpo-eval" / "report.md").is_file() and (tmp_path / "dpo-eval" / "robustness.png").is_file()


def test_the_old_module_name_says_so_and_runs_the_verb(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"q{i}", "base_response": "b", "tuned_response": "t", "winner": w}
        for i, w in enumerate(["tuned", "tuned", "base", "tie"])
    ]
    matches = tmp_path / "matches.jsonl"
    matches.write_text("".join(json.dumps(row) + "\n" for row in rows))
    verb = run("elo", str(matches), "--rounds", "20")
    old = run("elo", str(matches), "--rounds", "20", module="octrain.evaluation")
    assert verb.returncode == old.returncode == 0, (verb.stderr, old.stderr)
    assert old.stdout == verb.stdout and json.loads(old.stdout)["decided"] == 4
    assert old.stderr.splitlines()[0] == (
        "`python -m octrain.evaluation` is now `octrain eval`; the old name goes in the next release"
    )
    assert "octrain.evaluation" not in verb.stderr
    # Errors read as the verb's: one line, with the verb's prefix.
    matches.write_text(json.dumps({**rows[0], "winner": None}) + "\n")
    failed = run("elo", str(matches), module="octrain.evaluation")
    assert failed.returncode == 2
    assert failed.stderr.splitlines()[1:] == [
        f"octrain: error: {matches}: 1 matches have no winner; give --judge-url and --judge-model to judge them"
    ]
