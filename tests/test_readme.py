"""The README's embedding example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_embedding_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- embed-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 RUNNING"
    assert (tmp_path / "data" / "embedded.sqlite3").exists()
