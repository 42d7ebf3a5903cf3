"""The JS package itself: its size budget and its TypeScript declarations (npm tools in
tests/browser/js, installed by `make browser-deps`)."""

import gzip
import json
import subprocess

from broker.web.static import STATIC_ROOT
from tests.support.browser import JS

CLIENT = STATIC_ROOT / "client"
BUDGET = 5 * 1024  # bytes of broker-client.mjs, minified and gzipped
FALLBACK_BUDGET = 2 * 1024  # bytes of sse-socket.mjs (loaded on fallback only), minified and gzipped


def minified_gzipped_size(node_tools, path) -> int:
    minified = subprocess.run(
        [str(node_tools / "terser"), str(path), "--module", "--compress", "--mangle"],
        check=True, capture_output=True, timeout=120,
    ).stdout
    return len(gzip.compress(minified, compresslevel=9))


def test_the_client_fits_its_size_budget(node_tools):
    size = minified_gzipped_size(node_tools, CLIENT / "broker-client.mjs")
    print(f"broker-client.mjs: {size} bytes minified + gzipped (budget {BUDGET})")
    assert size <= BUDGET
    # the SSE transport is imported only by a client that falls back to it
    fallback = minified_gzipped_size(node_tools, CLIENT / "sse-socket.mjs")
    print(f"sse-socket.mjs: {fallback} bytes minified + gzipped (budget {FALLBACK_BUDGET})")
    assert fallback <= FALLBACK_BUDGET


def test_declarations_compile_strict_through_the_exports_map(node_tools):
    """tsc --strict --noEmit on the .d.ts files and a usage file that imports the package
    by name, so the package.json exports map is what resolves them."""
    link = JS / "node_modules" / "trio-broker-client"
    if not link.is_symlink():
        link.symlink_to(CLIENT.resolve(), target_is_directory=True)
    result = subprocess.run([str(node_tools / "tsc"), "-p", str(JS / "tsconfig.json")],
                            capture_output=True, text=True, timeout=300, cwd=JS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_json_exports_every_entry_point():
    package = json.loads((CLIENT / "package.json").read_text())
    assert package["type"] == "module" and not package.get("dependencies")
    for entry in package["exports"].values():
        targets = [entry] if isinstance(entry, str) else list(entry.values())
        for target in targets:
            assert (CLIENT / target).is_file(), target
