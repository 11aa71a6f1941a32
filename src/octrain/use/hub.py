"""Push a trained character to the Hugging Face Hub, with a model card written from its run.

The upload folder is built locally first: the export (:mod:`octrain.use.export`: the adapter in
PEFT format, or merged weights with ``merged``), then ``README.md`` and its plots
(:mod:`octrain.use.model_card`). ``dry_run`` stops there and leaves the folder for the user to
read; otherwise ``huggingface_hub`` creates the repo (``exist_ok``: pushing again updates it)
and uploads the folder in one commit.

The Hub is whatever ``HF_ENDPOINT`` names (huggingface_hub reads it; huggingface.co by
default). The token comes from the environment (``HF_TOKEN``) or the login huggingface_hub
keeps (``hf auth login``); it is handed to the client only, never written to a file or
printed, and a dry run does not need one.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

from octrain.core.errors import ConfigError, OctrainError
from octrain.use.export import ExportResult, check_target, export_adapter, export_merged
from octrain.use.model_card import write_model_card
from octrain.use.model_choice import ChosenModel

# The Hub's rule for a repo id: a namespace and a name of letters, digits, '-', '_' and '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class PushError(OctrainError, RuntimeError):
    """The Hub refused the push, or could not be reached; the message says which."""


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push did: the folder it would upload (a dry run) and where it went (a push)."""

    folder: Path | None  # the dry run's folder; None after a push, whose scratch folder is gone
    repo_id: str
    url: str | None  # None for a dry run
    export: ExportResult
    files: tuple[str, ...]


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ConfigError(f"--repo {repo_id!r}: expected user/name (letters, digits, '-', '_', '.')")
    return repo_id


def hub_token() -> str:
    """The token to push with: HF_TOKEN, else huggingface_hub's saved login; ConfigError when there is none."""
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN first, then the file `hf auth login` writes
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN (a write token) or run `hf auth login`")
    return token


def build_upload_folder(
    chosen: ChosenModel,
    folder: str | Path,
    *,
    repo_id: str,
    merged: bool = False,
    license: str | None = None,
    base_model: str | None = None,
    dtype: str | None = None,
    force: bool = False,
) -> tuple[ExportResult, tuple[str, ...]]:
    """Write everything a push uploads into ``folder``: the export, ``README.md`` and ``plots/``.

    Returns the export and the folder's files (relative paths, sorted).
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    if merged:
        result = export_merged(chosen, folder, dtype=dtype, force=force)
    else:
        if dtype is not None:
            raise ConfigError("--dtype applies to --merged only: an adapter keeps the dtype it was trained in")
        result = export_adapter(chosen, folder, base_model=base_model, force=force)
    # The card goes in after the export's atomic rename: a folder without a card is still a complete
    # model, and a dry run's folder is only ever read by a person.
    write_model_card(chosen, folder, repo_id=repo_id, merged=merged, license=license, base_model=base_model)
    files = tuple(sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()))
    return result, files


def push(
    chosen: ChosenModel,
    repo_id: str,
    *,
    private: bool = False,
    merged: bool = False,
    license: str | None = None,
    base_model: str | None = None,
    dtype: str | None = None,
    dry_run: str | Path | None = None,
    force: bool = False,
) -> PushResult:
    """Push ``chosen`` to ``repo_id``, or with ``dry_run`` only write the folder that would be uploaded.

    Raises:
        ConfigError: a bad repo id, no token, or a model not from a run (the card needs the run).
        PushError: the Hub answered with an error, or could not be reached.
    """
    check_repo_id(repo_id)
    if dry_run is not None:
        folder = Path(dry_run)
        check_target(folder, force=force)
        result, files = build_upload_folder(
            chosen,
            folder,
            repo_id=repo_id,
            merged=merged,
            license=license,
            base_model=base_model,
            dtype=dtype,
            force=force,
        )
        return PushResult(folder, repo_id, None, result, files)

    token = hub_token()  # before the export, which can take minutes for a large model
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="octrain-push-") as scratch:
        folder = Path(scratch) / "upload"
        result, files = build_upload_folder(
            chosen, folder, repo_id=repo_id, merged=merged, license=license, base_model=base_model, dtype=dtype
        )
        api = HfApi(token=token)
        try:
            # None, not False: a repo not asked to be private gets its namespace's default visibility.
            url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                commit_message=f"octrain: {chosen.label} ({'merged weights' if merged else 'LoRA adapter'})",
            )
        except HfHubHTTPError as exc:
            # The server's message (not the request's headers, which carry the token).
            raise PushError(f"the Hub refused the push to {repo_id}: {_first_line(str(exc))}") from None
        except OSError as exc:  # connection refused, DNS, TLS: httpx's errors are OSErrors only in part
            raise PushError(f"cannot reach the Hub at {api.endpoint}: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("httpx"):
                raise PushError(f"cannot reach the Hub at {api.endpoint}: {exc}") from None
            raise
        return PushResult(None, repo_id, str(url), result, files)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
