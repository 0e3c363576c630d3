"""The README's MovieLens walkthrough, run as written: infer -> prepare -> train -> evaluate -> export -> serve
-> a /rank request (on the real rows, and on rows the tests write in the same format)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->", text, re.S)
    assert block, "README.md lost its walkthrough block"
    commands, current = [], ""
    for line in block.group(1).splitlines():
        current += (" " if current else "") + line.strip().rstrip("\\").strip()
        if line.endswith("\\") or current.count("'") % 2:  # a continued line, or inside a quoted argument
            continue
        commands.append(current)
        current = ""
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["real", "written"])
def rows_dir(request, tmp_path_factory) -> Path:
    if request.param == "real":
        return request.getfixturevalue("shared_data")
    sys.path.insert(0, str(Path(__file__).parent))
    from sample_rows import write_movielens

    root = tmp_path_factory.mktemp("ml_rows")
    write_movielens(root / "movielens_sample.txt")
    return root


def test_the_readme_walkthrough_runs_as_written(rows_dir, tmp_path):
    import httpx

    commands = _commands()
    assert [c.split()[:2] for c in commands] == [["ctrzoo", "schema"], ["ctrzoo", "prepare"], ["ctrzoo", "train"],
                                                 ["ctrzoo", "evaluate"], ["ctrzoo", "export"], ["ctrzoo", "serve"],
                                                 ["curl", "-s"]]
    port = _free_port()
    env = {**os.environ, "CTRZOO_THREADS": "1"}
    server = None
    try:
        for command in commands:
            command = command.replace("../shared/data/", f"{rows_dir}/").replace("8000", str(port))
            args = shlex.split(command.rstrip("&").strip())
            if args[0] == "ctrzoo" and args[1] == "serve":
                server = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, env=env)
                for _ in range(300):
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                continue
            if args[0] == "curl":  # the request curl sends, sent by httpx (curl may not be installed)
                body = json.loads(args[args.index("-d") + 1])
                answer = httpx.post(f"http://127.0.0.1:{port}/rank", json=body, timeout=10)
                assert answer.status_code == 200, answer.text
                result = answer.json()
                assert len(result["scores"]) == 2 and sorted(result["ranking"]) == [0, 1]
                assert all(0 < p < 1 for p in result["scores"])
                assert "genres" not in result["features"]["absent"]
                continue
            done = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if args[1] == "evaluate":
                assert "auc" in done.stdout.lower()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    schema = (tmp_path / "movielens.yaml").read_text()
    assert "multi_value" in schema and "genres" in schema
    assert server is not None
