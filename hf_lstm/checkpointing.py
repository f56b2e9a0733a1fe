"""Training checkpoints that are atomic, exact and free of pickle.

A checkpoint is a folder `OUTPUT_DIR/step_N` (or `epoch_N`) holding

    model.safetensors        the weights (tied tensors stored once)
    optimizer.safetensors    every tensor of the optimizer state; optimizer.json: its scalars and param groups
    rng_state_{rank}.safetensors / .json
                             torch, numpy and Python random states of every process (dropout masks and data
                             order after a resume are the ones the uninterrupted run would have drawn)
    stream_state_{rank}.safetensors
                             the recurrent state carried across batches (stream batching), per process
    trainer_state.json       step, epoch, position in the epoch, scheduler, losses so far, and what was
                             trained
    best_model.safetensors   with --load_best_model_at_end: the best weights so far
    checksums.json           the sha256 of every file above, checked before a resume reads any of them

It is written to `.tmp-step_N` first and renamed into place only when complete: `os.rename` of a folder is
atomic, so a run killed at any moment leaves either the whole checkpoint or none. Nothing here unpickles:
everything loads through safetensors or JSON. `StopSignal` turns SIGTERM and SIGINT into a flag the training
loop reads after each step, so a run asked to stop saves one more checkpoint before it exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .modeling_hf_lstm import weights_readable_as

CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")
STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
BEST_WEIGHTS = "best_model.safetensors"  # with --load_best_model_at_end: the best weights so far


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, corrupted, or from a different
    model)."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, no permission, ...). The half-written temporary
    folder has been removed and the checkpoints saved before it are untouched."""


# -- writing ---------------------------------------------------------------------------------------------


def failure_reason(error: Exception) -> str:
    """The operating system's words for a failed write ("No space left on device"), whoever raised it."""
    return getattr(error, "strerror", None) or str(error).split(": ")[-1] or type(error).__name__


def temporary_path(output_dir: Path, name: str) -> Path:
    """Where checkpoint `name` is written before `publish` renames it into place."""
    return Path(output_dir) / f".tmp-{name}"


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to write, each tensor once: tied weights under the alphabetically first of their names (as
    safetensors' `save_model` chose, so checkpoints written before load the same), every tensor a contiguous
    CPU tensor of its own.

    Not `save_model` itself: on a CUDA device cuDNN packs an RNN's weights into one buffer
    (`flatten_parameters`), so each weight is a view that does not cover its storage, which `save_model`
    refuses ("None is covering the entire storage")."""
    names: dict[tuple, list[str]] = {}
    state = model.state_dict()
    for name, tensor in state.items():
        names.setdefault(_storage_key(tensor), []).append(name)
    return {
        min(group): state[min(group)].detach().to("cpu", copy=True).contiguous() for group in names.values()
    }


def load_model_tensors(model: torch.nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load weights written by `model_tensors` into `model` in place; returns (missing, unexpected) names. A
    tied weight counts as present when any of its names is in the file."""
    tensors = load_file(path)
    state = model.state_dict()
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(_storage_key(tensor), []).append(name)
    missing = [n for group in groups.values() if not any(g in tensors for g in group) for n in group]
    unexpected = [n for n in tensors if n not in state]
    model.load_state_dict({n: t for n, t in tensors.items() if n in state}, strict=False)
    return missing, unexpected


def write_model_and_optimizer(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and optimizer state (identical on every process under data parallelism: the main process
    writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model_tensors(model), str(folder / "model.safetensors"))
    tensors, scalars = _flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(folder / "optimizer.safetensors"))
    _write_json(folder / "optimizer.json", scalars)


def write_process_state(folder: Path, rank: int, stream_state: list[tuple[torch.Tensor, ...]] | None) -> None:
    """This process's random number generators and carried recurrent state."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for k, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{k}"] = state
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    save_file(tensors, str(folder / f"rng_state_{rank}.safetensors"))
    py_version, py_internal, py_gauss = random.getstate()
    _write_json(
        folder / f"rng_state_{rank}.json",
        {
            "python": [py_version, list(py_internal), py_gauss],
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        },
    )
    if stream_state is not None:
        flat = {
            f"layer{k}.{j}": t.detach().contiguous().cpu()
            for k, state in enumerate(stream_state)
            for j, t in enumerate(state)
        }
        save_file(flat, str(folder / f"stream_state_{rank}.safetensors"))


def write_trainer_state(folder: Path, state: dict) -> None:
    """Step, epoch, scheduler, losses and fingerprint: written last, its presence marks a complete
    checkpoint."""
    _write_json(folder / STATE_FILE, state)


def publish(output_dir: Path, name: str, keep_last: int | None = None) -> Path:
    """Move a finished `.tmp-NAME` into place as `NAME` (atomically) and prune old checkpoints."""
    tmp, final = temporary_path(output_dir, name), Path(output_dir) / name
    weights_readable_as(tmp, STATE_FILE)
    _write_json(tmp / CHECKSUMS_FILE, _checksums(tmp))
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): swap, never leave a gap
        old = Path(output_dir) / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(Path(output_dir))
    if keep_last:
        for stale in list_checkpoints(output_dir)[:-keep_last]:
            delete_checkpoint(stale)
    return final


def delete_checkpoint(folder: Path) -> None:
    """Remove a checkpoint so that no moment shows it half-deleted: rename it out of the checkpoint namespace
    first (one atomic step), then delete the renamed folder. A kill mid-delete leaves `.del-NAME`, which no
    resume looks at and `remove_leftovers` clears."""
    doomed = folder.with_name(f".del-{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(output_dir: Path) -> None:
    """Delete half-written `.tmp-*` and half-deleted `.del-*` folders that a killed run left behind, and
    `.old-*` ones once their replacement is in place. A run killed between the two renames of `publish` left
    `.old-NAME` without `NAME`: that complete checkpoint is moved back, not deleted."""
    for pattern in (".tmp-*", ".del-*"):
        for leftover in Path(output_dir).glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in Path(output_dir).glob(".old-*"):
        final = leftover.with_name(leftover.name[len(".old-") :])
        if not final.exists() and (leftover / STATE_FILE).is_file():
            os.rename(leftover, final)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def discard(output_dir: Path, name: str) -> None:
    """Remove the temporary folder of a checkpoint whose writing failed (what was written of it is
    useless)."""
    shutil.rmtree(temporary_path(output_dir, name), ignore_errors=True)


# -- reading ---------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (by training step)."""
    found = []
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        if CHECKPOINT_PATTERN.match(path.name) and (path / STATE_FILE).is_file():
            try:
                step = int(json.loads((path / STATE_FILE).read_text())["completed_steps"])
            except (OSError, ValueError, KeyError, TypeError):
                # not written by us (ours are renamed into place complete): not a checkpoint to resume
                continue
            found.append((step, path.name, path))
    return [path for _, _, path in sorted(found)]


def resolve(resume_from: str, output_dir: Path) -> Path | None:
    """The checkpoint folder for `--resume_from_checkpoint PATH|latest` (None: `latest` with nothing saved
    yet)."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from)
    if not path.is_dir():
        raise CheckpointError(
            f"--resume_from_checkpoint {resume_from}: no such folder. Give a checkpoint folder such as "
            f"{Path(output_dir) / 'step_100'}, or 'latest' to take the newest one in --output_dir."
        )
    if not (path / STATE_FILE).is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"--resume_from_checkpoint {resume_from}: not a complete training checkpoint (no {STATE_FILE} or "
            "model.safetensors). Use a step_N/epoch_N folder written by `hf-lstm train`."
        )
    return path


def verify(folder: Path) -> None:
    """Check every file of a checkpoint against the sha256 written with it: a flipped byte inside a tensor
    (which safetensors' header check cannot see) is a `CheckpointError` naming the file, and the checkpoint is
    left as it is. Checkpoints written before checksums existed (hf_lstm 0.1) have no manifest and pass."""
    manifest = Path(folder) / CHECKSUMS_FILE
    if not manifest.is_file():
        return
    try:
        expected = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{manifest} is unreadable or not JSON ({error}); resume from another checkpoint"
        )
    actual = _checksums(Path(folder))
    for name, digest in sorted(expected.items()):
        if actual.get(name) != digest:
            problem = "is missing" if name not in actual else "does not match the checksum written with it"
            raise CheckpointError(
                f"{Path(folder) / name} {problem}: the checkpoint was damaged after it was saved. It is kept "
                "as it is; resume from another checkpoint (or restore this one from a copy)"
            )


def _checksums(folder: Path) -> dict[str, str]:
    """The sha256 of every file in `folder` but the manifest itself."""
    digests = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != CHECKSUMS_FILE:
            with open(path, "rb") as f:
                digests[path.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def read_trainer_state(folder: Path) -> dict:
    """The checkpoint's `trainer_state.json`; a `CheckpointError` naming the file if it is not readable
    JSON."""
    path = Path(folder) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{path} is unreadable or not JSON ({error}); resume from another checkpoint"
        ) from None
    if not isinstance(state, dict) or "completed_steps" not in state:
        raise CheckpointError(f"{path} is not a training state written by `hf-lstm train`")
    return state


def load_model_and_optimizer(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load weights and optimizer state in place; a `CheckpointError` if a file is damaged or does not fit."""
    try:
        missing, unexpected = load_model_tensors(model, str(folder / "model.safetensors"))
    except Exception as error:  # shape mismatches, truncated files
        raise CheckpointError(
            f"{folder}/model.safetensors does not fit this model or is damaged: {error}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{folder} is from a different model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    try:
        tensors = load_file(str(folder / "optimizer.safetensors"))
        scalars = json.loads((folder / "optimizer.json").read_text())
        optimizer.load_state_dict(_unflatten_optimizer_state(tensors, scalars))
    except Exception as error:  # truncated or edited files, a different optimizer
        raise CheckpointError(
            f"the optimizer state in {folder} is damaged or from another optimizer: {error}"
        ) from None


def load_process_state(folder: Path, rank: int) -> list[tuple[torch.Tensor, ...]] | None:
    """Restore this process's random generators; return its carried recurrent state (or None)."""
    try:
        return _load_process_state(folder, rank)
    except CheckpointError:
        raise
    except Exception as error:  # missing rank files (a different number of processes), damaged files
        raise CheckpointError(
            f"the random-generator or stream state of process {rank} in {folder} is missing or damaged "
            f"({error}); resume with the number of processes that wrote it, or from another checkpoint"
        ) from None


def _load_process_state(folder: Path, rank: int) -> list[tuple[torch.Tensor, ...]] | None:
    tensors = load_file(str(folder / f"rng_state_{rank}.safetensors"))
    meta = json.loads((folder / f"rng_state_{rank}.json").read_text())
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda_"))]
        )
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    stream_file = folder / f"stream_state_{rank}.safetensors"
    if not stream_file.is_file():
        return None
    flat = load_file(str(stream_file))
    layers = sorted({int(k.split(".")[0][5:]) for k in flat})
    return [
        tuple(flat[f"layer{k}.{j}"] for j in range(sum(1 for key in flat if key.startswith(f"layer{k}."))))
        for k in layers
    ]


# -- helpers ---------------------------------------------------------------------------------------------


def _flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, per_param = {}, {}
    for index, param_state in state_dict["state"].items():
        plain = {}
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain[key] = value
        per_param[str(index)] = plain
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups, "state": per_param}


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state = {int(index): dict(plain) for index, plain in scalars["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in scalars["param_groups"]]
    return {"state": state, "param_groups": groups}


def _write_json(path: Path, value) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- a training run's checkpoint ---------------------------------------------------------------------------


def save_training_checkpoint(
    accelerator,
    output_dir: Path,
    name: str,
    *,
    model,
    optimizer,
    scheduler,
    state: dict,
    stream_state,
    best_weights: dict | None,
    settings: dict,
    keep_last: int,
) -> None:
    """Write checkpoint `name` atomically. Weights that are no longer finite are never saved (the last good
    checkpoint stays the newest); a failed write (disk full, ...) removes its temporary folder and raises
    `CheckpointWriteError`, leaving the checkpoints saved before untouched."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        kept = [p.name for p in list_checkpoints(output_dir)]
        raise FloatingPointError(
            f"the weights became non-finite by step {state['completed_steps']} ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); checkpoint {name} was not written, the last good one is "
            f"kept ({kept[-1] if kept else 'none saved yet'}): lower --learning_rate or --max_grad_norm"
        )
    tmp = temporary_path(output_dir, name)
    accelerator.wait_for_everyone()
    try:
        if accelerator.is_main_process:
            write_model_and_optimizer(tmp, model, optimizer)
            if best_weights is not None:
                save_file(best_weights, str(tmp / BEST_WEIGHTS))
        accelerator.wait_for_everyone()
        write_process_state(tmp, accelerator.process_index, stream_state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            saved = dict(
                state, scheduler=scheduler.state_dict(), model_fingerprint=fingerprint(model), args=settings
            )
            write_trainer_state(tmp, saved)
            publish(output_dir, name, keep_last=keep_last)
    except (OSError, SafetensorError) as error:  # safetensors reports ENOSPC as its own error type
        discard(output_dir, name)
        kept = [p.name for p in list_checkpoints(output_dir)]
        raise CheckpointWriteError(
            f"could not write checkpoint {name} in {output_dir} ({failure_reason(error)}); "
            "its partial copy was removed and the earlier checkpoints are kept "
            f"({', '.join(kept) if kept else 'none saved yet'}): free "
            "space (or fix the folder) and resume with --resume_from_checkpoint latest"
        ) from None
    accelerator.wait_for_everyone()


def resume(folder: Path, model, optimizer, scheduler, rank: int):
    """Restore a training run from checkpoint `folder`: verify its checksums, check it was saved from this
    model, load weights, optimizer, scheduler and this process's random state; return (trainer state, the
    carried recurrent state of this process or None)."""
    verify(folder)
    state = read_trainer_state(folder)
    expected = fingerprint(model)
    if "model_fingerprint" not in state:
        raise CheckpointError(
            f"{folder} is not a checkpoint written by `hf-lstm train` (its trainer_state.json names no "
            "model); resume from a step_N or epoch_N folder of a run"
        )
    if state.get("model_fingerprint") != expected:
        raise CheckpointError(
            f"{folder} was saved from a different model ({state.get('model_fingerprint')}), not this one "
            f"({expected}); resume with the same --model_type/--config_overrides, or start a new --output_dir"
        )
    load_model_and_optimizer(folder, model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    carried = load_process_state(folder, rank)
    return state, carried


def load_best_weights(folder: Path) -> dict | None:
    """The best weights a checkpoint carries (`--load_best_model_at_end`), or None."""
    path = Path(folder) / BEST_WEIGHTS
    return load_file(str(path)) if path.is_file() else None


def fingerprint(model) -> str:
    """What a checkpoint records of the model it was saved from: type, shape fields and parameter count."""
    config = model.config
    fields = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "cell_type",
        "embedding_size",
        "n_embd",
        "n_layer",
        "intermediate_size",
    )
    described = ",".join(f"{k}={getattr(config, k)}" for k in fields if hasattr(config, k))
    return f"{type(model).__name__}({described}, params={sum(p.numel() for p in model.parameters())})"


class StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the loop checks after each step, so it can save and exit."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
