"""Upload a trained folder to the Hugging Face Hub with huggingface_hub.

The machine this project is developed on cannot reach the Hub, so the tests push to a local stand-in with
the same two calls (`create_repo`, `upload_folder`); the real `HfApi` is the default here.
"""

from __future__ import annotations

from pathlib import Path

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "README.md")


def push_folder(
    folder: Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    api=None,
    commit_message: str = "Upload hf_lstm model",
) -> str:
    """Create `repo_id` (if needed) and upload `folder` to it; return the repository's URL.

    The folder must be a complete model repository (weights, config, tokenizer, card); checkpoints and
    logs of the run are not uploaded.
    """
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a complete model folder (missing {', '.join(missing)}); train to the end "
            "before --push_to_hub"
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=["step_*", "epoch_*", ".tmp-*", ".old-*", "runs/*", "*.jsonl"],
    )
    return str(url)
