"""`hf-lstm bench`'s command line: options, the tiny smoke configuration, the printed table."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..flops import matmul_parameters
from ..machine import load_average, machine_facts
from .cuda import CUDA_SECTIONS
from .measuring import Report, reference_model
from .sections import SECTIONS

ALL_SECTIONS = {**SECTIONS, **CUDA_SECTIONS}


# ---------------------------------------- Command line ---------------------------------------------------


def _tiny(args: argparse.Namespace) -> None:
    """`--tiny`: a toy model and tiny counts, a smoke run of a few seconds."""
    args.vocab_size, args.hidden_size, args.num_layers = 50, 16, 2
    args.repeats, args.decode_tokens, args.short_prompt, args.long_prompt = 1, 4, 4, 16
    args.memory_short_tokens, args.memory_long_tokens = 8, 16
    args.train_batch, args.bptt, args.peak_size = 2, 8, 64
    args.reference_batch, args.reference_seq_len = 2, 8
    args.ptb_train_steps, args.ptb_eval_tokens = min(args.ptb_train_steps, 5), 500
    args.batch_sizes, args.batch_tokens = "1,2", 3
    args.train_batches, args.decode_batches = "2", "1,2"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line arguments (defaults: the reference model and the counts of docs/PERFORMANCE.md)."""
    p = argparse.ArgumentParser(
        prog="hf-lstm bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_SECTIONS)} (default: {','.join(SECTIONS)} on a CPU, "
        f"{','.join(CUDA_SECTIONS)} with --device cuda)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the cuda_* sections run (cuda: the 2x1024 model by default; docs/PERFORMANCE.md, "
        '"On a GPU")',
    )
    p.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    p.add_argument(
        "--tiny", action="store_true", help="a toy model and tiny counts: a smoke run of a few seconds"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads for the run (0: torch's default, which the targets assume)",
    )
    m = p.add_argument_group("model")
    m.add_argument("--vocab_size", type=int, default=10000)
    m.add_argument("--hidden_size", type=int, default=None, help="512 (1024 with --device cuda)")
    m.add_argument("--embedding_size", type=int, default=None)
    m.add_argument("--num_layers", type=int, default=2)
    m.add_argument("--cell_type", default="lstm", choices=["lstm", "gru", "rnn", "peephole"])
    c = p.add_argument_group("counts")
    c.add_argument(
        "--repeats", type=int, default=3, help="rounds of each interleaved comparison (median kept)"
    )
    c.add_argument("--decode_tokens", type=int, default=200)
    c.add_argument("--short_prompt", type=int, default=16)
    c.add_argument("--long_prompt", type=int, default=4096)
    c.add_argument("--memory_short_tokens", type=int, default=200)
    c.add_argument("--memory_long_tokens", type=int, default=20000)
    c.add_argument("--train_batch", type=int, default=32)
    c.add_argument("--bptt", type=int, default=128)
    c.add_argument("--peak_size", type=int, default=None, help="2048 on a CPU, 8192 on a GPU")
    c.add_argument("--reference_batch", type=int, default=16)
    c.add_argument("--reference_seq_len", type=int, default=256)
    c.add_argument(
        "--ptb_train_steps",
        type=int,
        default=400,
        help="steps of PTB training before the int8 perplexity comparison (0: skip it)",
    )
    c.add_argument(
        "--ptb_model",
        default=None,
        help="a trained hf_lstm folder (with its tokenizer) to measure the int8 perplexity change "
        "on, instead of training one briefly",
    )
    c.add_argument(
        "--ptb_train_seconds",
        type=float,
        default=300.0,
        help="stop PTB training after this many seconds even if the steps are not done",
    )
    c.add_argument("--ptb_eval_tokens", type=int, default=0, help="0: the whole validation split")
    c.add_argument("--batch_sizes", default="1,8,32,128")
    c.add_argument("--batch_tokens", type=int, default=32)
    c.add_argument("--train_batches", default="64,256", help="cuda_train: batch sizes (x --bptt tokens)")
    c.add_argument("--decode_batches", default="1,64", help="cuda_decode: batch sizes")
    return _resolve(p, p.parse_args(argv))


def _resolve(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on the device and `--tiny`, the lists parsed, the sections checked."""
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    args.hidden_size = args.hidden_size or (1024 if cuda else 512)
    args.peak_size = args.peak_size or (8192 if cuda else 2048)
    if args.tiny:
        _tiny(args)
    args.embedding_size = args.embedding_size or args.hidden_size
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    args.train_batches = [int(b) for b in str(args.train_batches).split(",")]
    args.decode_batches = [int(b) for b in str(args.decode_batches).split(",")]
    sections = args.sections or ",".join(CUDA_SECTIONS if cuda else SECTIONS)
    args.sections = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in ALL_SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(ALL_SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print every measurement with its target, and optionally write them as JSON."""
    import warnings

    from transformers.utils import logging as hf_logging

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    model = reference_model(args)
    report = Report(
        command="hf-lstm bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        machine={**machine_facts(), "load_average_start": load_average()},
        model={
            "cell_type": args.cell_type,
            "vocab_size": args.vocab_size,
            "embedding_size": args.embedding_size,
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "tied": True,
            "dtype": "float32",
            "parameters": sum(p.numel() for p in model.parameters()),
            "matmul_parameters": matmul_parameters(model),
        },
    )
    machine = report.machine
    print(f"# {report.command}")
    if args.device == "cuda":
        machine.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    print(
        f"# {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), load average {machine['load_average_start']}"
        + (
            f"; {machine['gpu']}, CUDA {machine['cuda']}, cuDNN {machine['cudnn']}"
            if args.device == "cuda"
            else ""
        )
    )
    print(f"# model: {report.model}")
    print(f"{'figure':<62} {'value':>10} {'unit':<8} {'target':<9} {'met':<7}")
    started = time.perf_counter()
    for name in args.sections:
        ALL_SECTIONS[name](model, args, report)
    machine["load_average_end"] = load_average()
    machine["seconds"] = round(time.perf_counter() - started, 1)
    judged = [m for m in report.measurements if m.met is not None]
    print(
        f"# {sum(m.met for m in judged)} of {len(judged)} targets met in {machine['seconds']} s; "
        f"load average at the end {machine['load_average_end']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
