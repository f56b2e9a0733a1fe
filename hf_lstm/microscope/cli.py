"""`hf-lstm microscope MODEL_DIR_OR_HUB_ID [--port N] [--share]`: serve the microscope on this machine."""

from __future__ import annotations

import argparse
import os


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="hf-lstm microscope",
        description="Watch a trained model's gates token by token in the browser (a Gradio app).",
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL_DIR_OR_HUB_ID",
        help="a folder written by `hf-lstm train --output_dir`, or a Hub id",
    )
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (needs the internet)"
    )
    p.add_argument(
        "--trust_remote_code", action="store_true", help="load models with the code their folder carries"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Start the app and serve until interrupted.

    Args:
        argv (`list[str]`, *optional*): the arguments after `microscope`.

    Returns:
        `int`: the exit status (1 when gradio is not installed).
    """
    args = parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .app import build_app
    except ImportError as error:
        print(f"hf-lstm microscope needs gradio ({error}): pip install 'hf_lstm[microscope]'")
        return 1
    from ..builders import check_model_folder

    app = build_app(args.model, trust_remote_code=args.trust_remote_code, check_folder=check_model_folder)
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0
