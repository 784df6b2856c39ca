"""`appliance` command line: parses the arguments and hands them to the runtime (ask, index, tui,
wyoming) or the daemon (serve)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from appliance.config import CONFIG_ENV, LIMITS, load_config
from appliance.errors import ApplianceError, ConfigError, is_fatal


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")
    p.add_argument("--kb", type=Path, help="knowledge-base directory (default: config paths.kb)")
    p.add_argument("--index", type=Path, help="index directory (default: config paths.index)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="Offline question answering over a local knowledge base.")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer one question (builds the index first if it is missing)")
    ask.add_argument("question")
    _common(ask)
    ask.add_argument("--top-k", type=int, help="passages handed to the reader (default: config retriever.top_k)")
    ask.add_argument("--json", action="store_true", help="print the whole answer object as JSON")
    index = sub.add_parser("index", help="(re)build the index from the knowledge base")
    _common(index)
    serve = sub.add_parser("serve", help="run the daemon: the local JSON-lines API on a Unix socket")
    _common(serve)
    serve.add_argument("--socket", type=Path, help="socket path (default: config api.socket)")
    serve.add_argument("--input", type=Path, nargs="+", metavar="WAV",
                       help="run the voice pipeline on these WAV files instead of the microphone, then exit")
    serve.add_argument("--output", type=Path, metavar="DIR",
                       help="with --input: write answer-NNN.wav and turns.jsonl here (default: run/voice-out)")
    serve.add_argument("--listen", choices=["wake", "push-to-talk", "always"],
                       help="how a question starts (default: config speech.listen; --input uses 'always' unless set)")
    serve.add_argument("--no-voice", action="store_true", help="text API only: do not open the microphone")
    wyoming = sub.add_parser("wyoming", help="Wyoming protocol server for Home Assistant (asr, tts, handle)")
    _common(wyoming)
    wyoming.add_argument("--uri", default="tcp://127.0.0.1:10700",
                         help="tcp://HOST:PORT or unix://PATH (default: tcp://127.0.0.1:10700)")
    tui = sub.add_parser("tui", help="terminal UI (uses the daemon when it runs, else loads the models)")
    _common(tui)
    tui.add_argument("--socket", type=Path, help="daemon socket (default: config api.socket)")
    return parser


def cmd_ask(args: argparse.Namespace) -> int:
    from appliance import runtime
    from appliance.pipeline import normalize_question

    config = load_config(args.config)
    normalize_question(args.question, config.ask.max_question_chars)  # reject bad input before loading models
    low, high = LIMITS["retriever.top_k"]
    if args.top_k is not None and not low <= args.top_k <= high:
        raise ApplianceError(f"--top-k must be between {low} and {high}")
    started = time.perf_counter()
    pipeline = runtime.load_pipeline(config, args.kb, args.index)
    load_ms = (time.perf_counter() - started) * 1000
    answer = pipeline.ask(args.question, args.top_k)
    if args.json:
        data = answer.to_json()
        data["timings_ms"]["load"] = round(load_ms, 1)
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    if answer.unknown_codes:
        print(f"I don't know: the documents never mention {' or '.join(answer.unknown_codes)}.")
    elif answer.abstained:
        print("I don't know.")
        if answer.source:
            print(f"Closest section: {answer.source.citation}")
    else:
        print(f"Answer:     {answer.text}")
        print(f"Source:     {answer.source.citation}")
        print(f"Evidence:   {answer.evidence}")
    print(f"Confidence: {answer.confidence:.2f}")
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in answer.timings_ms.items())
    print(f"Timings:    {timings} (models and index loaded in {load_ms:.0f} ms)")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from appliance import runtime

    summary = runtime.build_index(load_config(args.config), args.kb, args.index, progress=sys.stderr.isatty())
    print(f"Indexed {summary.documents} documents into {summary.passages} passages in {summary.seconds:.1f} s "
          f"→ {summary.path}")
    print(f"Skipped {len(summary.skipped)} file(s)" + (":" if summary.skipped else "."))
    for warning in summary.skipped:
        print(f"  - {warning}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from appliance.daemon import ServeOptions, serve

    logging.getLogger().setLevel(logging.INFO)
    return serve(load_config(args.config), ServeOptions(args.kb, args.index, args.socket, args.listen, not args.no_voice,
                                                        args.input, args.output))


def cmd_wyoming(args: argparse.Namespace) -> int:
    import asyncio

    from appliance import runtime
    from appliance.wyoming_server import run_wyoming

    logging.getLogger().setLevel(logging.INFO)
    if not args.uri.startswith(("tcp://", "unix://")):
        raise ConfigError(f"--uri must be tcp://HOST:PORT or unix://PATH, got {args.uri!r}")
    config = load_config(args.config)
    runtime.preload_speech(config)  # before the QA models (daemon peak RSS)
    service = runtime.wyoming_service(config, runtime.load_pipeline(config, args.kb, args.index))
    try:
        asyncio.run(run_wyoming(args.uri, service))
    except OSError as exc:
        raise ApplianceError(f"cannot listen on {args.uri}: {exc}") from None
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from appliance.tui import ApplianceTUI

    ApplianceTUI(load_config(args.config), args.kb, args.index, args.socket).run()
    return 0


COMMANDS = {"ask": cmd_ask, "index": cmd_index, "serve": cmd_serve, "tui": cmd_tui, "wyoming": cmd_wyoming}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # a bug or a native library's panic: one clear line, not a traceback
        if is_fatal(exc):
            raise
        logging.getLogger("appliance").debug("internal error", exc_info=True)
        print(f"error: internal error ({type(exc).__name__}: {str(exc)[:300]})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
