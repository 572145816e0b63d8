"""deploy/README.md's worked 3-node example works when followed literally (issue 4, point 8).

The shell blocks between the README's ``BEGIN/END 3-node example`` markers run as
they are, in bash, in an empty directory; only the line that sets the port numbers is
replaced with free ports, so the test cannot collide with a server on 4222.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from membership.embedded import free_port

pytestmark = pytest.mark.cluster

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
PORTS_LINE = re.compile(
    r"^C1=4222 C2=4223 C3=4224  R1=6250 R2=6251 R3=6252  M1=8222 M2=8223 M3=8224$", re.M
)

CURL_SHIM = """#!{python}
# Stand-in for `curl -fs URL` where curl is not installed: exit 22 on an HTTP error.
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[-1], timeout=5) as resp:
        sys.stdout.buffer.write(resp.read())
except urllib.error.HTTPError:
    sys.exit(22)
except OSError:
    sys.exit(7)
"""


def example_script() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- BEGIN 3-node example -->", 1)[1].split(
        "<!-- END 3-node example -->", 1
    )[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 4, "the worked example lost its shell blocks"
    script = "\n".join(blocks)
    ports = [free_port() for _ in range(9)]
    names = ["C1", "C2", "C3", "R1", "R2", "R3", "M1", "M2", "M3"]
    assignment = " ".join(f"{n}={p}" for n, p in zip(names, ports, strict=True))
    script, count = PORTS_LINE.subn(assignment, script)
    assert count == 1, "the example's port line changed; update PORTS_LINE"
    return script


def test_the_worked_example_runs_as_written(tmp_path: Path) -> None:
    script = example_script()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIBUS_")}
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if subprocess.run(["sh", "-c", "command -v curl"], capture_output=True).returncode != 0:
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "curl").write_text(CURL_SHIM.format(python=sys.executable))
        (shim / "curl").chmod(0o755)
        path.insert(0, str(shim))
    env["PATH"] = os.pathsep.join(path)
    work = tmp_path / "example"
    work.mkdir()
    try:
        p = subprocess.run(
            ["bash", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        logs = "\n".join(f.read_text() for f in sorted(work.glob("n*.log")))
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{logs}"
        assert "verified: yes" in p.stdout
        assert p.stdout.count("parity: SQLite and KV are equal") == 2  # before and after the loss
        assert "export: identical" in p.stdout
        assert stat.S_IMODE((work / "route.secret").stat().st_mode) == 0o600
        assert stat.S_IMODE((work / "certs" / "n1-key.pem").stat().st_mode) == 0o600
        secret = (work / "route.secret").read_text().strip()
        assert secret not in p.stdout + p.stderr + logs
    finally:
        for pid_file in work.glob("n*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
