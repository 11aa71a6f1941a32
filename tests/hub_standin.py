"""A stand-in for the Hugging Face Hub on 127.0.0.1: the few routes ``huggingface_hub`` downloads through.

Repositories are folders (``root/ORG/REPO/...``) served at one fixed commit: the model info route
(``/api/models/ORG/REPO/revision/REV``: the commit and the file list), the tree route
(``/api/models/ORG/REPO/tree/REV``) and the file route
(``/ORG/REPO/resolve/REV/PATH``, HEAD and GET, with the commit and an ETag). Point ``HF_ENDPOINT`` at
``base_url`` before ``huggingface_hub`` is imported (a subprocess's environment). It counts the files
it served, so a test can tell a download from a cache hit. It holds no tests itself.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.served: list[str] = []  # the file paths GET returned, in order
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._route(body=False)

            def do_GET(self) -> None:
                self._route(body=True)

            def _route(self, body: bool) -> None:
                parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                    return self._info(parts[2] + "/" + parts[3], parts[5])
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                    return self._tree(parts[2] + "/" + parts[3], parts[5], "/".join(parts[6:]))
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._file(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), body)
                return self._error(404, "EntryNotFound", "no such route")

            def _info(self, repo: str, revision: str) -> None:
                folder = owner.root / repo
                if not folder.is_dir():
                    return self._error(404, "RepoNotFound", f"{repo} not found")
                if revision not in ("main", COMMIT):
                    return self._error(404, "RevisionNotFound", f"{revision} not found")
                files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
                self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, True)

            def _tree(self, repo: str, revision: str, under: str) -> None:
                folder = owner.root / repo
                if not folder.is_dir():
                    return self._error(404, "RepoNotFound", f"{repo} not found")
                if revision not in ("main", COMMIT):
                    return self._error(404, "RevisionNotFound", f"{revision} not found")
                start = folder / under if under else folder
                entries = []
                for path in sorted(start.rglob("*")):
                    name = path.relative_to(folder).as_posix()
                    if path.is_dir():
                        entries.append({"type": "directory", "path": name, "oid": COMMIT})
                    else:
                        data = path.read_bytes()
                        oid = hashlib.sha1(data).hexdigest()
                        entries.append({"type": "file", "path": name, "size": len(data), "oid": oid})
                self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, True)

            def _file(self, repo: str, revision: str, name: str, body: bool) -> None:
                path = owner.root / repo / name
                if not path.is_file() or revision not in ("main", COMMIT):
                    return self._error(404, "EntryNotFound", f"{name} not found")
                data = path.read_bytes()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                if body:
                    owner.served.append(f"{repo}/{name}")
                self._send(200, data, headers, body)

            def _error(self, status: int, code: str, message: str) -> None:
                data = json.dumps({"error": message}).encode()
                self._send(status, data, {"X-Error-Code": code, "Content-Type": "application/json"}, True)

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
