"""The README's Python example runs as written, in a fresh process, and its folder works with `pipeline()`."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if "save_pretrained" in block)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"model.safetensors", "tokenizer.json", "modeling_hf_lstm.py"} <= set(os.listdir(tmp_path / "out"))
    assert done.stdout.strip().splitlines()[-1].startswith("the cat")
