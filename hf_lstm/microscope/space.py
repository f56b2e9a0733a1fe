"""`hf-lstm train --write_space_app`: the files a Hugging Face Space needs to run the microscope on a model.

Written into the model folder: `app.py`, `requirements.txt` and `microscope/` (the page and what it reads,
copied from this package: they import only numpy, torch, transformers and gradio). The Space loads the model
named by the environment variable `HF_LSTM_MODEL` (a Hub id, set as a Space variable), or the folder `app.py`
sits in when it is unset, with the model code the folder carries (`trust_remote_code=True`).
docs/MICROSCOPE.md says how to create the Space.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CARRIED = ("__init__.py", "reading.py", "render.py", "app.py")
"""The files of this package a Space runs."""
REQUIREMENTS = ("torch", "transformers>=5.0,<6", "gradio>=6.0,<7", "numpy")

APP = '''"""The LSTM microscope on a Hugging Face Space (written by `hf-lstm train --write_space_app`).

Set the Space variable HF_LSTM_MODEL to the model's Hub id; without it the app reads the model in this folder.
"""

import os
from pathlib import Path

from microscope.app import build_app

MODEL = os.environ.get("HF_LSTM_MODEL") or str(Path(__file__).resolve().parent)

app = build_app(MODEL, trust_remote_code=True)

if __name__ == "__main__":
    app.queue().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
'''


def write_space_app(folder: Path) -> list[Path]:
    """Write `app.py`, `requirements.txt` and `microscope/` into `folder`; returns the paths written."""
    folder = Path(folder)
    package = folder / "microscope"
    package.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    written = []
    for name in CARRIED:
        shutil.copyfile(here / name, package / name)
        written.append(package / name)
    (folder / "app.py").write_text(APP)
    (folder / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    return [*written, folder / "app.py", folder / "requirements.txt"]
