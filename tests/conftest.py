"""Test-wide settings (no wandb uploads, no hub downloads, no network beyond loopback) and the session
fixtures every package uses: the BIG-Bench Hard copy and a cache of a few small TextWorld games."""

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_real_connect = socket.socket.connect


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # unix domain sockets
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_only_connect(sock, address):
    if not _is_loopback(address):
        raise RuntimeError(f"tests must not use the network: attempted connection to {address!r}")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    socket.socket.connect = _loopback_only_connect
    yield
    socket.socket.connect = _real_connect


REPO = Path(__file__).resolve().parents[1]
# the shared BIG-Bench Hard copy beside the checkout, or wherever BWAREA_BBH_DIR points (a clone elsewhere)
BBH_DIR = Path(os.environ.get("BWAREA_BBH_DIR") or REPO / ".." / "shared" / "data" / "bbh").resolve()
# (preset, train index) of the games generated once per test session; the first two share a preset.
SESSION_GAMES = [("coin-easy", 0), ("coin-easy", 1), ("treasure-easy", 0), ("cooking-easy", 0), ("custom-easy", 0)]


@pytest.fixture(scope="session")
def bbh_dir() -> Path:
    if not (BBH_DIR / "tasks").is_dir():
        pytest.fail(f"the BIG-Bench Hard copy is expected at {BBH_DIR} (tasks/, cot-prompts/); "
                    "set BWAREA_BBH_DIR to its location")
    return BBH_DIR


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory) -> Path:
    """A TextWorld cache holding SESSION_GAMES (generated here, once)."""
    from envs.textworld import GameCache, game_seed

    directory = tmp_path_factory.mktemp("textworld-cache")
    cache = GameCache(directory)
    for preset, index in SESSION_GAMES:
        assert not cache.get(preset, game_seed("train", index)).from_cache
    return directory
