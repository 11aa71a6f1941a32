"""Tinker checkpoints in octrain: download as a PEFT adapter, remote listing and deletion, sampling a remote model.

The service is the fake of tests/tinker_fake.py (faked at the SDK boundary, returning the SDK's
own types), extended here with the calls a download makes: ``create_training_client_from_state``
then ``save_weights_external`` on the training client, and on the REST client
``get_external_weights_urls``, ``delete_checkpoint_from_tinker_path``, ``list_user_checkpoints``
and ``get_weights_info_by_tinker_path``. The signed URLs point at a real HTTP server on
127.0.0.1 serving the files of a real PEFT adapter (the tiny run's ``sft/adapter``), so the
download itself, the streaming, the truncation checks and the atomic rename, runs for real.
"""

from __future__ import annotations

import datetime
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tinker")

import tinker
from tinker import types

from octrain.cli import checkpoints as checkpoints_cli
from octrain.trainers import tinker_common
from octrain.use.registry import Registry
from tinker_fake import FakeRestClient, FakeService, FakeTrainingClient, completed

TINY = "builtin:tiny-qwen3"
GOOD_KEY = "tml-" + "x" * 40
RUN = "pirate_tinker"
NAME = f"{RUN}/sft"
SERVICE_BASE = "Qwen/Qwen3-8B"  # the name the service writes into the exported adapter config


class FileServer:
    """A real HTTP server on 127.0.0.1 serving a directory; some files can be cut short on purpose."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.truncated: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                source = server.root / name
                if not source.is_file():
                    self.send_error(404)
                    return
                body = source.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # A truncated file: the full length announced, half the bytes sent, the connection closed.
                self.wfile.write(body[: len(body) // 2] if name in server.truncated else body)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ExportingTrainingClient:
    """A training client opened on a stored state, doing what a download needs: ``save_weights_external``."""

    def __init__(self, service: CheckpointService, state_path: str) -> None:
        self.service = service
        self.state_path = state_path

    def save_weights_external(self, name: str, ttl_seconds: int | None = None, **_: Any) -> Any:
        run = self.state_path.removeprefix("tinker://").split("/")[0]
        path = f"tinker://{run}/external_weights/{name}"
        self.service.calls.append(("save_weights_external", {"name": name, "ttl_seconds": ttl_seconds}))
        self.service.exports[path] = dict(self.service.export_files)
        return completed(types.SaveWeightsExternalResponse(path=path))


class CheckpointRestClient(FakeRestClient):
    service: CheckpointService

    def get_external_weights_urls(self, tinker_path: str) -> Any:
        self.service.calls.append(("get_external_weights_urls", {"path": tinker_path}))
        files = self.service.exports[tinker_path]
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        urls = {name: self.service.server.url(served) for name, served in files.items()}
        return completed(types.ExternalWeightsUrlsResponse(urls=urls, expires=expires))

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> Any:
        self.service.calls.append(("delete_checkpoint", {"path": tinker_path}))
        self.service.exports.pop(tinker_path, None)
        self.service.storage.pop(tinker_path, None)
        return completed(None)

    def list_user_checkpoints(self, limit: int = 100, offset: int = 0) -> Any:
        paths = sorted([*self.service.storage, *self.service.exports])
        kinds = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
        everything = [
            types.Checkpoint(
                checkpoint_id="/".join(path.split("/")[-2:]),
                checkpoint_type=kinds[path.split("/")[-2]],
                time=datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC),
                tinker_path=path,
                size_bytes=2048,
            )
            for path in paths
        ]
        page = everything[offset : offset + limit]
        cursor = types.Cursor(offset=offset, limit=limit, total_count=len(everything))
        return completed(types.CheckpointsListResponse(checkpoints=page, cursor=cursor))

    def get_weights_info_by_tinker_path(self, tinker_path: str) -> Any:
        state = self.service.storage[tinker_path]
        return completed(types.WeightsInfoResponse(base_model=state["base"], is_lora=True, lora_rank=state["rank"]))


class CheckpointService(FakeService):
    """The fake service plus what downloads, remote listings and deletions call."""

    def __init__(self, server: FileServer, export_files: dict[str, str]) -> None:
        super().__init__([TINY])
        self.server = server
        self.export_files = export_files  # file name in the export -> file the server serves
        self.exports: dict[str, dict[str, str]] = {}

    def create_rest_client(self) -> CheckpointRestClient:
        return CheckpointRestClient(self)

    def create_training_client_from_state(self, path: str, **_: Any) -> Any:
        self.calls.append(("create_training_client_from_state", {"path": path}))
        if path not in self.storage:
            raise tinker.NotFoundError("no such checkpoint", response=_response(404), body=None)
        return completed(ExportingTrainingClient(self, path))


def _response(status: int) -> Any:
    import httpx

    return httpx.Response(status, request=httpx.Request("GET", "https://fake.tinker/api/v1"))


@pytest.fixture
def served(tmp_path: Path, trained_tiny_root: Path) -> Iterator[FileServer]:
    """The tiny run's sft adapter on a real HTTP server, its config naming the service's base."""
    root = tmp_path / "served"
    shutil.copytree(trained_tiny_root / "pirate_tiny" / "sft" / "adapter", root)
    config = json.loads((root / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = SERVICE_BASE
    (root / "adapter_config.json").write_text(json.dumps(config))
    (root / "garbage.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not a header" + bytes(200))
    server = FileServer(root)
    yield server
    server.close()


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, served: FileServer) -> Iterator[CheckpointService]:
    files = {"adapter_config.json": "adapter_config.json", "adapter_model.safetensors": "adapter_model.safetensors"}
    fake = CheckpointService(served, files)
    monkeypatch.setenv("TINKER_API_KEY", GOOD_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the test server is never behind a proxy
    monkeypatch.setattr(tinker_common, "SERVICE_FACTORY", lambda options: fake)
    tinker_common.forget_sessions()
    yield fake
    tinker_common.forget_sessions()


@pytest.fixture
def root(tmp_path: Path, trained_tiny_root: Path, service: CheckpointService) -> Path:
    """A run root with one Tinker-trained run, registered: its sft stage's model.json names sampler weights.

    The weights are trained by the fake (a real LoRA on the tiny model), saved as a state and as
    sampler weights, the two paths a Tinker stage records.
    """
    from octrain.trainers.tinker_loop import Progress

    run_root = tmp_path / "runs"
    source, run = trained_tiny_root / "pirate_tiny", run_root / RUN
    (run / "sft").mkdir(parents=True)
    shutil.copy(source / "config.yaml", run / "config.yaml")
    for copy in source.glob("constitution.*"):
        shutil.copy(copy, run / copy.name)
    shutil.copy(source / "sft" / "done.json", run / "sft" / "done.json")
    trainer = FakeTrainingClient(service, TINY, 4, 0, {"train_mlp": True, "train_attn": True, "train_unembed": False})
    state = trainer.save_state("sft-final").result().path
    sampler = trainer.save_weights_for_sampler("sft-final").result().path
    (run / "sft" / "model.json").write_text(json.dumps({"base": TINY, "adapter": None, "remote": sampler}))
    Progress(step=3, state_path=state, final_state_path=state, sampler_path=sampler).save(run / "sft")
    assert Registry.at(run_root).rebuild(run_root) == 1
    service.calls.clear()
    return run_root


def cli(*argv: str) -> int:
    return checkpoints_cli.main(list(argv))


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line: one line, the last on stderr (a download's progress lines may come before it)."""
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("octrain: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def logits(adapter: Path, tiny_model_path: str) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 9, 42, 7, 3]])).logits


def test_a_remote_checkpoint_downloads_as_the_same_peft_adapter(
    root: Path, service: CheckpointService, trained_tiny_root: Path, tiny_model_path: str, capsys: Any
) -> None:
    import torch

    original = trained_tiny_root / "pirate_tiny" / "sft" / "adapter"
    assert cli("download", NAME, "--run-root", str(root)) == 0
    out = capsys.readouterr().out
    target = root / RUN / "sft" / "downloaded_adapter"
    assert f"downloaded {NAME} to {target}" in out

    # The training state was exported, downloaded, and the temporary export deleted.
    state = "tinker://run-1/weights/sft-final"  # the fake names its first training run run-1
    names = [name for name, _ in service.calls]
    assert names == [
        "create_training_client_from_state",
        "save_weights_external",
        "get_external_weights_urls",
        "delete_checkpoint",
    ]
    assert service.calls[0][1] == {"path": state} and service.exports == {}

    config = json.loads((target / "adapter_config.json").read_text())
    given = json.loads((original / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY  # the checkpoint's base, not the service's name
    assert (config["r"], config["lora_alpha"]) == (given["r"], given["lora_alpha"])
    record = json.loads((target / "octrain_download.json").read_text())
    assert record["original_base"] == SERVICE_BASE and record["source"] == state
    assert (record["rank"], record["alpha"]) == (given["r"], given["lora_alpha"])
    assert f"rank {given['r']}" in out and f"alpha {given['lora_alpha']}" in out
    assert (target / "adapter_model.safetensors").read_bytes() == (original / "adapter_model.safetensors").read_bytes()
    assert torch.equal(logits(target, tiny_model_path), logits(original, tiny_model_path))
    assert leftovers(root / RUN / "sft") == []

    # The transformers sampler loads the folder as it is, its base from base_model_name_or_path.
    from octrain.cli import main as octrain

    argv = ["sample", "Ahoy?", str(target), "--sampler", "hf", "--max-new-tokens", "3", "--seed", "1"]
    assert octrain([*argv, "--run-root", str(root)]) == 0
    assert f"=== TRAINED: {target}" in capsys.readouterr().out

    # The entry stays the remote one; info and list show the local copy.
    assert cli("info", NAME, "--run-root", str(root)) == 0
    assert f"local copy:  {target} (LoRA rank {given['r']}" in capsys.readouterr().out
    assert cli("list", "--run-root", str(root)) == 0
    assert f"{NAME} (remote, downloaded)" in capsys.readouterr().out
    assert cli("info", NAME, "--json", "--run-root", str(root)) == 0
    assert json.loads(capsys.readouterr().out)["local_copy"]["path"] == str(target)

    # The stage trained again (another final state): the old download is no copy of it any more.
    from octrain.trainers.tinker_loop import Progress

    progress = Progress.load(root / RUN / "sft")
    progress.final_state_path = "tinker://run-7/weights/sft-final"
    progress.save(root / RUN / "sft")
    assert cli("list", "--run-root", str(root)) == 0
    listed = capsys.readouterr().out
    assert f"{NAME} (remote)" in listed and "downloaded)" not in listed


def test_force_replaces_a_finished_download_and_nothing_else_does(
    root: Path, service: CheckpointService, capsys: Any
) -> None:
    target = root / "elsewhere" / "pirate"
    assert cli("download", NAME, "--out", str(target), "--run-root", str(root)) == 0
    (target / "mine.txt").write_text("kept until --force")
    capsys.readouterr()
    service.calls.clear()

    assert cli("download", NAME, "--out", str(target), "--run-root", str(root)) == 2
    assert "exists: pass --force" in one_line_error(capsys)
    assert service.calls == [] and (target / "mine.txt").is_file()  # refused before any request

    service.export_files = {"adapter_config.json": "adapter_config.json"}  # a broken export: no weights
    assert cli("download", NAME, "--out", str(target), "--force", "--run-root", str(root)) == 2
    assert "no adapter_model.safetensors" in one_line_error(capsys)
    assert (target / "mine.txt").is_file()  # a failed --force keeps the old folder
    assert leftovers(target.parent) == []

    service.export_files = {n: n for n in ("adapter_config.json", "adapter_model.safetensors")}
    assert cli("download", NAME, "--out", str(target), "--force", "--run-root", str(root)) == 0
    assert not (target / "mine.txt").exists() and (target / "adapter_model.safetensors").is_file()
    assert leftovers(target.parent) == []


@pytest.mark.parametrize(
    ("files", "truncate", "message"),
    [
        ({"adapter_config.json": "adapter_config.json", "adapter_model.safetensors": "adapter_model.safetensors"},
         "adapter_model.safetensors", "truncated"),
        ({"adapter_config.json": "adapter_config.json", "adapter_model.safetensors": "garbage.safetensors"},
         None, "not a readable safetensors file"),
        ({"adapter_config.json": "adapter_config.json", "../escaped.json": "adapter_config.json",
          "adapter_model.safetensors": "adapter_model.safetensors"}, None, "unsafe file name '../escaped.json'"),
        ({"/etc/evil": "adapter_config.json"}, None, "unsafe file name"),
        ({"adapter_model.safetensors": "adapter_model.safetensors"}, None, "no adapter_config.json"),
    ],
    ids=["truncated", "corrupt", "dot-dot", "absolute", "not-peft"],
)  # fmt: skip
def test_a_broken_download_fails_in_one_line_and_leaves_no_folder(
    root: Path,
    service: CheckpointService,
    capsys: Any,
    files: dict[str, str],
    truncate: str | None,
    message: str,
) -> None:
    service.export_files = files
    if truncate:
        service.server.truncated.add(truncate)
    stage = root / RUN / "sft"
    assert cli("download", NAME, "--run-root", str(root)) == 2
    assert message in one_line_error(capsys)
    assert not (stage / "downloaded_adapter").exists() and leftovers(stage) == []
    assert not (stage / "escaped.json").exists()
    assert service.exports == {}  # the temporary export is deleted on failure too


def test_listing_shows_registered_remote_checkpoints_and_asks_the_service_with_remote(
    root: Path, service: CheckpointService, capsys: Any
) -> None:
    assert cli("list", "--run-root", str(root)) == 0
    listed = capsys.readouterr().out
    assert f"{NAME} (remote)" in listed and "on Tinker" not in listed
    assert [n for n, _ in service.calls] == []  # the default list never asks the service

    other = FakeTrainingClient(service, TINY, 4, 0, {"train_mlp": True, "train_attn": True, "train_unembed": False})
    stray = other.save_weights_for_sampler("by-hand").result().path
    assert cli("list", "--remote", "--run-root", str(root)) == 0
    out = capsys.readouterr().out
    assert f"{NAME} (remote)" in out and "recorded by no registered checkpoint (1)" in out
    assert stray in out and "sampler" in out
    assert (
        "tinker://run-1/" not in out.split("recorded by no registered checkpoint")[1]
    )  # the run's own are not repeated

    assert cli("list", "--remote", "--json", "--run-root", str(root)) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listing["registered"]] == [NAME] and listing["registered"][0]["remote"] is True
    assert [c["tinker_path"] for c in listing["unregistered"]] == [stray]


def test_commands_that_reach_the_service_need_the_key(
    root: Path, service: CheckpointService, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv("TINKER_API_KEY")
    for argv in (("list", "--remote"), ("download", NAME), ("delete", NAME, "--files", "--yes")):
        assert cli(*argv, "--run-root", str(root)) == 2
        assert "TINKER_API_KEY is not set" in one_line_error(capsys)
    assert service.calls == [] and not (root / RUN / "sft" / "downloaded_adapter").exists()
    assert Registry.at(root).get(NAME).remote  # nothing was deleted
    assert cli("list", "--run-root", str(root)) == 0  # the registry alone needs no key


def test_deleting_a_remote_checkpoint(root: Path, service: CheckpointService, capsys: Any) -> None:
    stage = root / RUN / "sft"
    assert cli("delete", NAME, "--run-root", str(root)) == 0
    assert "removed" in capsys.readouterr().out and stage.is_dir() and service.calls == []
    assert Registry.at(root).rebuild(root) == 1  # the run still holds it: rebuild registers it again

    remote = sorted(service.storage)
    assert cli("delete", NAME, "--files", "--yes", "--run-root", str(root)) == 0
    assert "2 checkpoint(s) on Tinker" in capsys.readouterr().out
    assert sorted(p["path"] for n, p in service.calls if n == "delete_checkpoint") == remote
    assert service.storage == {} and not stage.exists()
    assert Registry.at(root).entries() == []


def test_a_tinker_path_downloads_into_the_folder_named(root: Path, service: CheckpointService, capsys: Any) -> None:
    state = next(path for path in service.storage if "/weights/" in path)
    assert cli("download", state, "--run-root", str(root)) == 2
    assert "--out DIR" in one_line_error(capsys)
    sampler = next(path for path in service.storage if "/sampler_weights/" in path)
    assert cli("download", sampler, "--out", str(root / "s"), "--run-root", str(root)) == 2
    assert "not sampler weights" in one_line_error(capsys)
    assert service.calls == []  # both refused before any request
    assert cli("download", state, "--out", str(root / "a"), "--run-root", str(root)) == 0
    assert json.loads((root / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == TINY


def test_sample_on_a_remote_checkpoint_goes_to_tinker(root: Path, service: CheckpointService, capsys: Any) -> None:
    from octrain.cli import main as octrain

    # The tiny run samples with transformers: a remote model there is an error, never the base instead.
    assert octrain(["sample", "Ahoy?", NAME, "--run-root", str(root), "--max-new-tokens", "3"]) == 2
    assert "remote checkpoint" in one_line_error(capsys) and service.sample_requests == []

    argv = ["sample", "Ahoy?", NAME, "--sampler", "tinker", "--run-root", str(root), "--max-new-tokens", "3"]
    assert octrain([*argv, "--seed", "1"]) == 0
    assert "=== TRAINED: pirate_tinker/sft" in capsys.readouterr().out
    remote = Registry.at(root).get(NAME).adapter
    assert ("create_sampling_client", {"model_path": remote, "base_model": None}) in service.calls
    assert len(service.sample_requests) == 1
