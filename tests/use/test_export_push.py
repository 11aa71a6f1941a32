"""Exports, the model card and the Hub push, on a real finished tiny run.

The merged export is reloaded in a Python process that cannot import octrain, and must give the
logits of base + adapter through PEFT. The push goes through huggingface_hub to a real HTTP server
on 127.0.0.1 that answers the Hub endpoints huggingface_hub 2.4 calls (repo create, YAML check,
preupload, the LFS batch API and its uploads, commit), so the files and the card that arrive are
the ones a real Hub would receive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import patience
from octrain.cli import export as export_cli
from octrain.cli import push as push_cli
from octrain.core.compose import compose_config
from octrain.core.errors import ConfigError
from octrain.use.export import export_adapter, export_merged
from octrain.use.model_card import base_license, render_model_card, split_card
from octrain.use.model_choice import base_of, choose_model
from octrain.use.parity import ParityError

REPO_SRC = Path(__file__).resolve().parents[2] / "src"
TOKEN = "hf_octrainTestToken0123456789abcdef"


@pytest.fixture(scope="module")
def evaluated_run(evaluated_tiny_root: Path) -> Path:
    """The trained run with its real eval stage run too (eval/report.md and its plot); read-only."""
    return evaluated_tiny_root / "pirate_tiny"


# The probe runs in a fresh interpreter (-I: no PYTHONPATH, no user site) with octrain's source directory
# (which the editable install puts on sys.path) removed, and checks that octrain cannot be imported.
PROBE = r"""
import importlib.util, json, sys
from pathlib import Path
src = Path(sys.argv[1]).resolve()
sys.path = [p for p in sys.path if not p or Path(p).resolve() != src]
assert importlib.util.find_spec("octrain") is None, "octrain is importable"
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer
merged_dir, adapter_dir, out = sys.argv[2:5]
tokenizer = AutoTokenizer.from_pretrained(merged_dir)
messages = [{"role": "user", "content": "Ahoy, who are you?"}, {"role": "assistant", "content": "A pirate."},
            {"role": "user", "content": "Tell me more."}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
with torch.no_grad():
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    peft_model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()
    batch = torch.tensor([ids])
    torch.save({"ids": ids, "merged": merged(batch).logits, "peft": peft_model(batch).logits,
                "merged_dtype": str(merged.dtype),
                "adapter_ids": AutoTokenizer.from_pretrained(adapter_dir).apply_chat_template(
                    messages, add_generation_prompt=True, return_dict=True)["input_ids"]}, out)
print("octrain-free", "octrain" in sys.modules)
"""


def test_merged_export_loads_without_octrain_and_matches_base_plus_adapter(
    trained_tiny_root: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    merged = export_merged(chosen, tmp_path / "merged")
    adapter = export_adapter(chosen, tmp_path / "adapter")
    assert merged.dtype == "float32"  # the tiny base is stored in float32, and the default is the base's dtype
    # Both were checked against the trained model before they were moved into place (test_parity.py has the check).
    for result in (merged, adapter):
        assert result.parity is not None and result.parity.ok and result.parity.mismatched == 0, result.parity
        assert result.parity.checked > result.parity.positions // 2
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(merged.files)
    config_text = (tmp_path / "merged" / "config.json").read_text()
    config = json.loads(config_text)
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["dtype"] == "float32"
    assert "_name_or_path" not in config and "octrain" not in config_text and "builtin:" not in config_text
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # builtin:tiny-qwen3 is resolved to the directory it stands for, which transformers can load.
    assert Path(adapter_config["base_model_name_or_path"]).is_dir()
    assert not (tmp_path / "merged").with_name(".merged.tmp").exists()

    out = tmp_path / "logits.pt"
    probe = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(REPO_SRC), str(merged.directory), str(adapter.directory), str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=patience(180),
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "octrain-free False" in probe.stdout
    result = torch.load(out)

    # The reference: the base and the trained adapter through PEFT, here, in float32.
    base_dir = adapter_config["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(torch.tensor([result["ids"]])).logits  # before PEFT wraps the base's layers in place
    reference = PeftModel.from_pretrained(base, chosen.ref.adapter).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([result["ids"]])).logits
    # Tolerance: the merged model computes x(W + sBA), PEFT xW + s(xA)B; both in float32, so they differ only
    # by the rounding of a different order of operations, ~1e-6 relative on logits of order 1-10. 1e-4 is
    # far above that and far below what a missing or mis-scaled adapter changes (checked just below).
    torch.testing.assert_close(result["merged"], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result["peft"], expected, atol=1e-4, rtol=1e-4)
    print("largest change the adapter makes to a logit:", float((plain - expected).abs().max()))
    assert (plain - expected).abs().max() > 1e-3, "the adapter changes nothing: the comparison would prove nothing"
    # The exported tokenizers apply the chat template the model was trained with.
    trained_tokenizer = AutoTokenizer.from_pretrained(chosen.ref.adapter)
    messages = [
        {"role": "user", "content": "Ahoy, who are you?"},
        {"role": "assistant", "content": "A pirate."},
        {"role": "user", "content": "Tell me more."},
    ]
    trained_ids = trained_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert result["ids"] == result["adapter_ids"] == trained_ids["input_ids"]


def test_export_dtype_base_model_and_refusals(trained_tiny_root: Path, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    half = export_merged(chosen, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((half.directory / "config.json").read_text())["dtype"] == "bfloat16"
    assert half.parity is not None and half.parity.ok and half.parity.checked > half.parity.positions // 2
    with safe_open(str(half.directory / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}  # noqa: SIM118
    # The Hub id is only written into the config: the check loads the base the run trained on (offline here).
    hub = export_adapter(chosen, tmp_path / "hub-adapter", base_model="Qwen/Qwen3-0.6B")
    assert hub.parity is not None and hub.parity.ok
    assert json.loads((hub.directory / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "Qwen/Qwen3-0.6B"
    )
    with pytest.raises(ConfigError, match="not empty"):
        export_adapter(chosen, tmp_path / "hub-adapter")
    assert export_adapter(chosen, tmp_path / "hub-adapter", force=True, check=False).base_model != "Qwen/Qwen3-0.6B"
    with pytest.raises(ConfigError, match="base model with no adapter"):
        export_merged(base_of(chosen), tmp_path / "x")


def test_a_failed_export_leaves_nothing_that_looks_complete(
    trained_tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import octrain.use.export

    class Broken:
        def save_pretrained(self, directory: Path) -> None:
            (Path(directory) / "tokenizer.json").write_text("{")  # half a file, then the crash
            raise OSError("disk full")

    monkeypatch.setattr(octrain.use.export, "load_tokenizer", lambda adapter, base: Broken())
    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    with pytest.raises(OSError, match="disk full"):
        export_merged(chosen, tmp_path / "merged", check=False)
    assert list(tmp_path.iterdir()) == []  # neither the target nor its staging directory


def test_an_export_that_answers_differently_is_refused_and_leaves_nothing(
    trained_tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import octrain.use.export

    clean_config = octrain.use.export._clean_config

    def drop_a_stop_token(directory: Path) -> None:
        # An export bug: generation_config.json keeps <|im_end|> and loses <|endoftext|>.
        clean_config(directory)
        path = Path(directory) / "generation_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": 2}))

    monkeypatch.setattr(octrain.use.export, "_clean_config", drop_a_stop_token)
    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("the previous export")
    with pytest.raises(
        ParityError,
        match=r"the merged export \(float32\) does not answer as the trained model does: "
        r"generation config: stops at \[2 '<\|im_end\|>'\]",
    ):
        export_merged(chosen, tmp_path / "merged", force=True)
    # The directory that was there is left as it was, and no staging directory remains.
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
    assert [p.name for p in (tmp_path / "merged").iterdir()] == ["keep.txt"]


def test_cli_help_and_one_line_errors(trained_tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for main in (export_cli.main, push_cli.main):
        assert main(["--help"]) == 0
        assert "examples:" in capsys.readouterr().out
    assert "--gguf DIR" in (Path(export_cli.__file__).read_text())
    root = ["--run-root", str(trained_tiny_root)]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for argv, message in (
        ([*root, "pirate_tiny/sfx", "--merged", str(tmp_path / "m")], "did you mean pirate_tiny/sft"),
        ([*root, "pirate_tiny/sft", "--adapter", str(tmp_path / "full")], "not empty"),
        ([*root, "pirate_tiny/sft", "--adapter", str(tmp_path / "a"), "--dtype", "float16"], "--merged only"),
        ([*root, "pirate_tiny/sft", "--adapter", str(tmp_path / "a"), "--gguf-type", "q8_0"], "--gguf only"),
    ):
        assert export_cli.main(argv[2:] + argv[:2]) == 2
        err = capsys.readouterr().err
        assert err.startswith("octrain: error:") and message in err and err.count("\n") == 1, err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert push_cli.main(["pirate_tiny/sft", "--repo", "no-slash", *root, "--dry-run", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "user/name" in err and err.count("\n") == 1


def test_the_model_card_comes_from_the_run(evaluated_run: Path, trained_tiny_root: Path, tmp_path: Path) -> None:
    chosen = choose_model(str(evaluated_run), run_root="/nowhere")
    text, plots = render_model_card(chosen, repo_id="me/pirate-tiny", merged=False, license="apache-2.0")
    front, body = split_card(text)
    assert front["library_name"] == "peft" and front["license"] == "apache-2.0"
    assert {"octrain", "character-training", "pirate"} <= set(front["tags"])
    assert "base_model" not in front  # builtin:tiny-qwen3 is no Hub id; the Hub would reject it
    for trait in chosen.constitution().traits:
        assert trait.text in body
    config = chosen.run_config()
    pairs = json.loads((evaluated_run / "pairs" / "report.json").read_text())
    introspect = json.loads((evaluated_run / "introspect" / "report.json").read_text())
    assert f"| preference pairs (kept / prompts) | {pairs['kept']} / {pairs['prompts']} |" in body
    assert f"| SFT records | {introspect['records']} |" in body
    assert f"| DPO beta | {config.dpo.beta} |" in body
    assert f"| DPO LoRA rank / alpha | {config.dpo.lora.rank} / {config.dpo.lora.alpha} |" in body
    for stage in ("dpo", "sft", "eval"):
        assert json.loads((evaluated_run / stage / "done.json").read_text())["fingerprint"] in body
    adapter_rank = json.loads((evaluated_run / "sft" / "adapter" / "adapter_config.json").read_text())["r"]
    assert f"--max-lora-rank {adapter_rank}" in body and 'from_pretrained("me/pirate-tiny")' in body
    # The eval report's tables are in, and every plot link points at a copy that will be uploaded.
    report = (evaluated_run / "eval" / "report.md").read_text()
    robustness_rows = [line for line in report.splitlines() if line.startswith("| base |")]
    assert robustness_rows and all(row in body for row in robustness_rows)
    assert "../" not in body and set(plots) == {"eval-robustness.png", "dpo-training.png", "sft-training.png"}
    for name in plots:
        assert f"](plots/{name})" in body

    merged_front, _ = split_card(
        render_model_card(chosen, repo_id="me/pirate-merged", merged=True, base_model="Qwen/Qwen3-0.6B")[0]
    )
    assert merged_front["library_name"] == "transformers" and merged_front["base_model"] == "Qwen/Qwen3-0.6B"
    # Without an eval stage the card says so rather than inventing numbers.
    plain = render_model_card(choose_model("pirate_tiny/sft", run_root=trained_tiny_root), repo_id="me/p", merged=False)
    assert "no evaluation yet" in plain[0] and plain[1] == {}
    # The base's license, when its card is on this machine.
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "README.md").write_text("---\nlicense: mit\n---\n# a base\n")
    assert base_license(str(tmp_path / "base")) == "mit" and base_license("builtin:tiny-qwen3") is None


def test_a_card_of_a_run_whose_stage_one_was_on_policy_distillation_says_so(trained_tiny_root: Path) -> None:
    from octrain.use.model_card import RunFacts

    chosen = choose_model("pirate_tiny/sft", run_root=trained_tiny_root)
    facts = RunFacts.read(chosen)
    assert "| DPO beta |" in render_model_card(chosen, repo_id="me/p", merged=False, facts=facts)[0]
    facts.config = compose_config(
        "pirate_tiny",
        ["distill.method=sdft", "distill.sdft.learning_rate=0.005", "distill.sdft.teacher_weights=teacher"],
    )
    text = render_model_card(chosen, repo_id="me/p", merged=False, facts=facts)[0]
    front, body = split_card(text)
    assert "on-policy-distillation" in front["tags"] and "dpo" not in front["tags"]
    assert "| SDFT learning rate | 0.005 |" in body and "| SDFT teacher | the run's teacher model |" in body
    assert "| SDFT answer length (tokens) | 48 |" in body  # pirate_tiny's pairs.sampling.max_new_tokens
    assert "DPO beta" not in body and "on-policy distillation" in body
    assert "| final adapter: on-policy distillation (SDFT) / SFT weight |" in body


class FakeHub:
    """The Hub endpoints huggingface_hub 2.4 uses for create_repo + upload_folder, recording what it gets."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lfs: dict[str, bytes] = {}
        self.repos: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                hub.requests.append(
                    {"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"), "body": raw}
                )
                status, body = hub.answer(self.command, self.path.split("?")[0], raw)
                self._reply(status, body)

            do_GET = do_POST = do_PUT = _handle

        return Handler

    def answer(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(raw)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if payload["name"] == "refused":
                return 403, {"error": "You don't have the rights to create a model under this namespace"}
            self.repos[repo_id] = payload
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(raw)["content"]
            try:
                split_card(content)
            except Exception:
                return 400, {"errors": [{"message": "bad metadata"}]}
            return 200, {}
        if method == "POST" and "/preupload/" in path:
            files = json.loads(raw)["files"]
            # Like the Hub's default .gitattributes: binary weights and images go through LFS.
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".png")) else "regular"}
                for f in files
            ]
            return 200, {"files": [{**mode, "shouldIgnore": False, "oid": None} for mode in modes]}
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(raw)["objects"]
            actions = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "actions": {
                        "upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"},
                        "verify": {"href": f"{self.url}/lfs-verify"},
                    },
                }
                for o in objects
            ]
            return 200, {"transfer": "basic", "objects": actions}
        if method == "PUT" and path.startswith("/lfs-upload/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(raw).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}
            self.lfs[oid] = raw
            return 200, {}
        if method == "POST" and path == "/lfs-verify":
            return (200, {}) if json.loads(raw)["oid"] in self.lfs else (404, {"error": "not uploaded"})
        if method == "POST" and "/commit/" in path:
            for line in raw.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    self.files[item["value"]["path"]] = self.lfs[item["value"]["oid"]]
            repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
            return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{'a' * 40}", "commitOid": "a" * 40, "success": True}
        return 404, {"error": f"no such endpoint: {method} {path}"}


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()


def _push(*args: str, hub: FakeHub, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in {"HF_HUB_OFFLINE", "PYTHONPATH"}}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(home),  # no saved login of this machine gets in
        HF_HUB_DISABLE_XET="1",  # the LFS protocol, which the fake Hub speaks (Xet needs a CAS server)
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1",
    )
    return subprocess.run(
        [sys.executable, "-m", "octrain.cli.push", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=patience(180),
        env=env,
    )


@pytest.mark.slow  # a real push to a stand-in Hub (~25 s); the dry run stays in the default suite
def test_push_through_huggingface_hub_to_a_local_hub(evaluated_run: Path, fake_hub: FakeHub, tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    dry = tmp_path / "dry"
    result = _push(
        str(evaluated_run), "--repo", "me/pirate-tiny", "--dry-run", str(dry), hub=fake_hub, home=home, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert fake_hub.requests == []  # a dry run sends nothing
    expected = {str(p.relative_to(dry)): p.read_bytes() for p in dry.rglob("*") if p.is_file()}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "plots/eval-robustness.png"} <= set(
        expected
    )

    result = _push(str(evaluated_run), "--repo", "me/pirate-tiny", "--private", hub=fake_hub, home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{fake_hub.url}/me/pirate-tiny" in result.stdout
    assert fake_hub.repos["me/pirate-tiny"]["visibility"] == "private"
    assert fake_hub.files == expected  # every file, byte for byte, the dry run's folder
    assert fake_hub.lfs, "the weights and plots went through the LFS upload"
    front, body = split_card(fake_hub.files["README.md"].decode())
    assert front["library_name"] == "peft" and "pirate" in front["tags"] and "me/pirate-tiny" in body
    # The token went in the Authorization header of the Hub API calls, and nowhere else.
    api_calls = [r for r in fake_hub.requests if r["path"].startswith("/api/")]
    assert api_calls and all(r["auth"] == f"Bearer {TOKEN}" for r in api_calls)
    assert all(TOKEN.encode() not in r["body"] for r in fake_hub.requests)
    assert TOKEN not in result.stdout + result.stderr
    written = [p for root in (tmp_path, evaluated_run) for p in root.rglob("*") if p.is_file()]
    assert written and not [p for p in written if TOKEN.encode() in p.read_bytes()]

    # A refusal from the Hub is one line, not a traceback.
    result = _push(str(evaluated_run), "--repo", "me/refused", hub=fake_hub, home=home, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("octrain: error: the Hub refused the push to me/refused")
    assert result.stderr.count("\n") == 1 and TOKEN not in result.stderr


def test_push_without_a_token_is_one_line(evaluated_run: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "octrain.cli.push", str(evaluated_run), "--repo", "me/p"],
        capture_output=True,
        text=True,
        timeout=patience(120),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.startswith("octrain: error: no Hugging Face token")
    assert result.stderr.count("\n") == 1
