"""Serve a checkpoint over HTTP: ``python serve.py ckpt_path=<run dir>/checkpoints/best.ckpt``, then open
http://127.0.0.1:8000/ to try it, or call it as OpenAI's API (``/v1/completions``, ``/v1/chat/completions``,
``/v1/models``; ``/v1/fill_mask`` for a masked LM, ``/v1/score`` for a reward model; ``/health``).

Requests are generated together in one continuous batch (``gpt.serve.engine``); a request that arrives while the
batch runs joins it at its next step. It binds 127.0.0.1 unless ``host=`` says otherwise; with ``api_key=`` (or
GPT_API_KEY in the environment) every endpoint asks for it. SIGTERM or Ctrl-C lets the running requests finish, then
the server exits with status 0.
"""

import os
import signal
import socket
import sys

import hydra
from omegaconf import DictConfig

from gpt import UserError
from gpt.cli.checks import SERVE
from gpt.cli.command_line import check_command_line, check_config
from gpt.cli.errors import report_user_errors
from gpt.signals import STOP_SIGNALS, stopped_by_signals, stops_deferred


def serve(cfg: DictConfig) -> None:
    if cfg.default_max_tokens > cfg.max_tokens:
        raise UserError(f"default_max_tokens={cfg.default_max_tokens} is more than max_tokens={cfg.max_tokens}; "
                        "lower it or raise max_tokens")
    listening = bound_socket(cfg.host, cfg.port)  # before the model loads: a port in use is refused at once
    with stopped_by_signals():
        with stops_deferred():  # the imports of torch and Lightning finish before a stop (gpt.signals)
            import torch
            import uvicorn

            from gpt.models.generate import GenerationSettings
            from gpt.serve.app import Limits, build_app
            from gpt.serve.engine import Engine
            from gpt.serve.served import load_served

        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) - 1))
        served = load_served(cfg.ckpt_path, device, cfg.name)
    engine = None
    if served.kind in ("text", "answers"):
        settings = GenerationSettings.for_tokenizer(served.tokenizer, use_cache=cfg.use_cache)
        engine = Engine(served.model, settings, cfg.max_batch_size, cfg.batch_wait_ms / 1000).start()
    limits = Limits(cfg.max_tokens, cfg.default_max_tokens, cfg.max_n, cfg.max_requests, cfg.max_body_bytes,
                    cfg.api_key)
    server = uvicorn.Server(uvicorn.Config(build_app(served, limits, engine), log_level="warning"))
    host, port = listening.getsockname()[:2]
    print(f"serving {served.name} ({served.kind}) at http://{host}:{port}/", file=sys.stderr, flush=True)
    stops = []
    for signum in STOP_SIGNALS:  # uvicorn finishes the running requests, then hands the signal on: to this
        signal.signal(signum, lambda signum, frame: stops.append(signal.Signals(signum).name))
    try:
        server.run(sockets=[listening])
    finally:
        if engine:
            engine.close()
    print(f"stopped by {stops[0] if stops else 'the server'} once its requests had ended", file=sys.stderr)


def bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle's algorithm off only on sockets that name it, and with Nagle on, a
    # streamed token waits for the client's delayed ACK (40 ms on Linux)
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as e:
        listening.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; choose another port= (or host=)") from None
    return listening


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        check_config(cfg, "python serve.py", SERVE)
        serve(cfg)


if __name__ == "__main__":
    check_command_line("serve", SERVE, doc=__doc__)
    main()
