"""A minimal in-memory Hugging Face Hub on 127.0.0.1 for push/download round trips in tests (no network).

It speaks the subset of the Hub HTTP API that `huggingface_hub` uses to create a repo, commit regular (non-LFS)
files, list them and download them. Start it with `serve()`; point the client at it with
`HF_ENDPOINT=http://127.0.0.1:<port>` and any `HF_TOKEN`, set before `huggingface_hub` is imported.
It tests the client-side integration only: it accepts every file as a regular git blob, never LFS/Xet.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

REPOS: dict[str, dict] = {}  # repo id -> {"files": {path: bytes}, "sha": str}
_LOCK = threading.Lock()


def _sha(files: dict) -> str:
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(path.encode() + hashlib.sha1(files[path]).digest())
    return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status, payload=None, body=None, headers=None):
        data = body if body is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = (
                f"{request.get('organization') or 'tester'}/{request['name']}"
                if "/" not in request["name"]
                else request["name"]
            )
            with _LOCK:
                if repo in REPOS:
                    return self._send(
                        409, {"error": "You already created this model repo", "url": f"/{repo}"}
                    )
                REPOS[repo] = {"files": {}, "sha": _sha({})}
            return self._send(200, {"url": f"http://127.0.0.1/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            return self._send(200, {})
        match = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
        if match:
            repo, action, _ = match.groups()
            if repo not in REPOS:
                return self._send(404, {"error": "Repository not found"})
            if action == "preupload":
                files = json.loads(body).get("files", [])
                return self._send(
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                        ]
                    },
                )
            with _LOCK:
                stored = REPOS[repo]["files"]
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if item["key"] == "file":
                        stored[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] in ("deletedFile", "deletedFolder"):
                        prefix = item["value"]["path"]
                        for name in [
                            n for n in stored if n == prefix or n.startswith(prefix.rstrip("/") + "/")
                        ]:
                            del stored[name]
                REPOS[repo]["sha"] = _sha(stored)
                sha = REPOS[repo]["sha"]
            return self._send(
                200, {"commitUrl": f"http://127.0.0.1/{repo}/commit/{sha}", "commitOid": sha, "success": True}
            )
        return self._send(404, {"error": f"not implemented: POST {path}"})

    def do_GET(self):
        path = unquote(urlparse(self.path).path)
        if path == "/api/whoami-v2":
            return self._send(
                200,
                {"name": "tester", "type": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}},
            )
        match = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(/.*)?", path)
        if match:
            repo, _, sub = match.groups()
            if repo not in REPOS:
                return self._send(404, {"error": "Repository not found"})
            files = REPOS[repo]["files"]
            prefix = (sub or "").strip("/")
            entries = [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                       for p, d in sorted(files.items()) if not prefix or p.startswith(prefix + "/")]  # fmt: skip
            return self._send(200, entries)
        match = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
        if match:
            repo = match.group(1)
            if repo not in REPOS:
                return self._send(
                    404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"}
                )
            files = REPOS[repo]["files"]
            return self._send(200, {"id": repo, "modelId": repo, "sha": REPOS[repo]["sha"], "private": False,
                                    "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]})  # fmt: skip
        return self._resolve(path)

    def do_HEAD(self):
        return self._resolve(unquote(urlparse(self.path).path))

    def _resolve(self, path):
        match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if not match or match.group(1) not in REPOS:
            return self._send(
                404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"}
            )
        repo, _, name = match.groups()
        files = REPOS[repo]["files"]
        if name not in files:
            return self._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
        data = files[name]
        headers = {"X-Repo-Commit": REPOS[repo]["sha"], "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return self._send(200, body=data, headers=headers)


def serve() -> tuple[ThreadingHTTPServer, int]:
    """Start the fake Hub in a daemon thread on an ephemeral port; returns (server, port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]
