"""Test-wide settings: no wandb uploads, no hub downloads, no network beyond loopback."""

import ipaddress
import os
import socket

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
