"""`hf-lstm bench`: decoding, prefill and training speed and memory, each measurement printed with its target
and whether it is met.

Every judged measurement is a ratio of timings taken side by side in one run, on one machine, in one process:
the things being compared run in alternation (A, B, A, B, ...) and each keeps the median of its repeats, so a
neighbour who steals the CPU for a while slows both sides instead of one. Absolute numbers (tokens/s,
GFLOP/s) are printed for context; the targets are ratios.

    hf-lstm bench                        # the reference model: lstm, vocab 10000, 512/512, 2 layers, tied
    hf-lstm bench --json bench.json      # also write every measurement as JSON
    hf-lstm bench --sections decode,train --repeats 5
    hf-lstm bench --tiny                 # a seconds-long smoke run at a toy size (what the tests use)

Sections (each printed label starts with the number of its target in docs/PERFORMANCE.md; the modules:
`measuring` (records, timing, the models compared), `sections` (one function per section), `cli`):

    decode     greedy generate() at batch 1: at least 0.70x the speed of the bare matrix-vector products
               (each matrix in the layout this machine reads fastest, measured in the same run), against the
               model reading its parameters (no decode-time copies) and a naive nn.LSTM loop, and at most
               1.25x the time of the model's own step loop
    context    decode speed after a long prompt at least 0.90x that after a short one; resident memory
               within 5% between a long and a short generation
    prefill    a long prompt through the fused kernel at least 2x faster than the decode step, token by token
    train      training MFU of at least 50% of a measured fp32 matrix-product peak; a parameter-matched GPT-2
               trained on the same batches
    reference  the step-by-step reference path at most 3x the fused kernel's training time
    quant      int8 dynamic quantisation: decode speed-up over the float32 step (also at 1 thread) and Penn
               Treebank perplexity change (reported)
    batch      decode tokens/s at several batch sizes (reported)

With `--device cuda` (module `cuda`; docs/PERFORMANCE.md, "On a GPU", where the targets G1-G4 its labels
start with are listed), the 2x1024 model on the GPU:

    cuda_train   training tok/s and MFU under bf16 autocast against parameter-matched GPT-2 and Llama
    cuda_decode  generate() with and without the CUDA-graph step, against the code before it, the bare model
                 call and the replayed step alone (the launch floor); prefill apart; bf16; GPT-2 and Llama
"""

from .cli import main, parse_args
from .measuring import (
    Measurement,
    NaiveLSTM,
    Report,
    LAYOUTS,
    bare_floor,
    best_of_layouts,
    generate_per_token,
    gpt2_matched,
    transformer_matched,
    layout_seconds,
    plain_read_seconds,
    reference_model,
    step_loop,
)
from .sections import SECTIONS
from ..timing import StepClock, interleaved, timed

__all__ = [
    "StepClock",
    "interleaved",
    "timed",
    "main",
    "parse_args",
    "SECTIONS",
    "Measurement",
    "Report",
    "NaiveLSTM",
    "LAYOUTS",
    "bare_floor",
    "best_of_layouts",
    "layout_seconds",
    "plain_read_seconds",
    "generate_per_token",
    "gpt2_matched",
    "transformer_matched",
    "reference_model",
    "step_loop",
]
