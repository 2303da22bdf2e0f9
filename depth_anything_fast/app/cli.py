"""`app` subcommand: the web page (heavy imports happen inside the handler)."""

from __future__ import annotations

import argparse
import sys

from depth_anything_fast.inference.cli import add_model_options, model_hints, predictor_options


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `app` subcommand."""
    p = subparsers.add_parser(
        "app",
        help="a web page to try a model: upload an image, compare it with its depth, download "
        "the maps (Gradio; the `app` extra)",
        description="Serves a Gradio page on HOST:PORT (localhost by default) with the model "
        "loaded once; uploads waiting together run as one batch. Downloads: grey depth PNG, "
        "the raw prediction as a 16-bit PNG (as pseudo-label writes it), and for metric models "
        "a .ply point cloud. Ctrl-C stops it.",
    )
    add_model_options(p, batch_size=4)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
                   "opens the page to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-pixels", type=float, default=40e6,
                   help="largest upload accepted, in pixels (default 40e6)")
    p.set_defaults(func=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    from depth_anything_fast.inference.predictor import MISSING_WEIGHTS_MESSAGE

    if not args.weights:
        print(f"error: {MISSING_WEIGHTS_MESSAGE}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web page needs Gradio: pip install 'depth_anything_fast[app]'",
              file=sys.stderr)
        return 2
    from depth_anything_fast.app.page import DepthPage, serve
    from depth_anything_fast.inference.predictor import Predictor, load_model

    try:
        model = load_model(args.weights, **model_hints(args))
        predictor = Predictor(model, **predictor_options(args))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    page = DepthPage(predictor, str(args.weights), max_pixels=int(args.max_pixels))
    try:
        serve(page, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0
