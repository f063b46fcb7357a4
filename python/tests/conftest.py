"""A real federation for the tests: `sagefed up --no-demo` (a real nats-server, the ledger,
a worker and a gateway per platform) on free ports, in a temporary directory, with Legion
also serving `reverse`, an operation written in Python (tests/ops/reverse.py).

The `sagefed` binary is $SAGEFED_BIN, or target/debug/sagefed of the repository (built by
`cargo build` or `cargo test`); its absence is an error, not a skip.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sagefed import FederationClient

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
PLATFORMS = ("Legion", "Thor", "Sprout")
#: Seconds `sagefed up` gets to start everything (it may first install nats-server).
START_TIMEOUT_SECONDS = 120
#: Seconds it gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT_SECONDS = 30


def sagefed_binary() -> Path:
    binary = Path(os.environ.get("SAGEFED_BIN") or REPO / "target" / "debug" / "sagefed")
    if not binary.exists():
        pytest.exit(f"{binary} does not exist: run `cargo build` first (or set SAGEFED_BIN)", returncode=2)
    return binary


def write_configs(directory: Path) -> None:
    """The repository's configs, with the example program's path made absolute and
    Legion serving the Python operation `reverse` with this interpreter (the worker passes
    only PATH and HOME, so the program must be run by a python that has sagefed)."""
    directory.mkdir(parents=True)
    echo = REPO / "examples" / "ops" / "echo_quality.py"
    reverse = TESTS / "ops" / "reverse.py"
    for platform in PLATFORMS:
        name = f"{platform.lower()}.toml"
        text = (REPO / "configs" / name).read_text()
        text = text.replace('"../examples/ops/echo_quality.py"', json.dumps(str(echo)))
        if platform == "Legion":
            text, count = re.subn(r'execute = \[([^\]]*)\]', r'execute = [\1, "reverse"]', text, count=1)
            assert count == 1, "legion.toml has no permissions.execute list"
            # Before the first table array, so that it is a top-level table.
            section = (
                f"[operations.reverse]\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(reverse))}]\n"
                "atp_per_second = 1.0\n\n"
            )
            index = text.index("[[platforms]]")
            text = text[:index] + section + text[index:]
        (directory / name).write_text(text)


@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    """The running federation: its configs directory, NATS URL and `sagefed` binary."""
    root = tmp_path_factory.mktemp("federation")
    # The operations run in the configs' directory, as `nobody` when the worker is root: it
    # must be one that user can enter (pytest's own temporary directories are 0700).
    configs_home = Path(tempfile.mkdtemp(prefix="sagefed-configs-"))
    configs_home.chmod(0o755)
    configs = configs_home / "configs"
    write_configs(configs)
    log = open(root / "up.log", "w")
    env = dict(os.environ, SAGE_TOOLS_DIR=os.environ.get("SAGE_TOOLS_DIR", str(REPO / ".tools")))
    process = subprocess.Popen(
        [
            str(sagefed_binary()), "up", "--no-demo", "--port", "0", "--gateway-port", "0", "--dashboard", "127.0.0.1:0",
            "--data-dir", str(root / "data"), "--configs", str(configs),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_ready(process, configs, root / "up.log")
        found = re.search(r"listening on (nats://\S+)", (root / "up.log").read_text())
        assert found, "sagefed up did not print its NATS URL"
        yield Federation(configs=configs, nats_url=found.group(1), binary=sagefed_binary(), data_dir=root / "data")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(configs_home, ignore_errors=True)


@dataclass
class Federation:
    configs: Path
    nats_url: str
    binary: Path
    data_dir: Path

    def audit(self) -> str:
        """`sagefed audit` (as the treasury, with the credentials `sagefed up` made):
        conservation and one settlement per lock; fails on a violation."""
        federation = self.data_dir / "federation"
        done = subprocess.run(
            [
                str(self.binary), "audit", "--nats", self.nats_url,
                "--creds", str(federation / "creds" / "Treasury.nk"), "--ca", str(federation / "ca" / "ca.pem"),
            ],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def wait_ready(process, configs: Path, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sagefed up exited with {process.returncode}:\n{log.read_text()}")
        if all((configs / f"{p.lower()}.gateway.json").exists() for p in PLATFORMS):
            client = FederationClient("Thor", configs_dir=configs)
            if all(client.status(client_lct(p)).active for p in PLATFORMS):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the federation did not come up in {START_TIMEOUT_SECONDS} s:\n{log.read_text()}")
        time.sleep(0.2)


def client_lct(platform: str, task_type: str = "consciousness") -> str:
    return f"lct:web4:agent:dp@{platform}#{task_type}"


@pytest.fixture
def thor(federation):
    return FederationClient("Thor", configs_dir=federation.configs)


@pytest.fixture
def sprout(federation):
    return FederationClient("Sprout", configs_dir=federation.configs)
