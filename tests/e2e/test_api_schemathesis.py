"""Schemathesis (property-based API testing from the served OpenAPI document) against
a real broker: every route, valid and invalid inputs. Checks (all of
schemathesis's but one, see EXCLUDED_CHECKS): no 500, every answer (status, content
type, headers, body) is one the document declares, input the document refuses is
refused (4xx with the JSON error shape), undeclared methods get 405 with ``Allow``,
every route but the document needs the key; the stateful phase chains calls along
the links it infers (create a group, read it, delete it).

Bounded: a few examples per route and phase (SCHEMATHESIS_EXAMPLES), one worker,
so the run takes well under a minute on a shared machine.
"""

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import trio

from broker import serve
from tests.support.helpers import API_KEY, api_request, make_config

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "6"))
# every check but positive_data_acceptance: input of the right shape may still be
# refused for what a schema cannot say (a sender not in the group: 403; a job whose
# history no longer reaches back: 410 HISTORY_GAP)
EXCLUDED_CHECKS = "positive_data_acceptance"


@pytest.mark.timeout(240)
@pytest.mark.slow
async def test_schemathesis_finds_nothing(tmp_path, nursery):
    if SCHEMATHESIS is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    broker = await nursery.start(serve, make_config(tmp_path))
    base = f"http://127.0.0.1:{broker.port}"
    # a little state for the reads to find: a job with events, a group, a conversation
    await api_request(broker.port, "POST", "/api/publish", {"jobId": "job-1", "type": "job_status",
                                                            "data": {"status": "RUNNING"}})
    await api_request(broker.port, "POST", "/api/groups", {"groupId": "crew", "members": ["alice"]})
    result = await trio.run_process(
        [SCHEMATHESIS, "run", f"{base}/api/openapi.json", "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
         "--max-examples", str(EXAMPLES),
         "--workers", "1", "--seed", "1", "--phases", "examples,coverage,fuzzing,stateful", "--no-color",
         "--generation-database", "none",
         # the key goes in the header below; generated keys (X-API-Key: random) would only test 401s
         "--generation-with-security-parameters", "false", "--request-timeout", "10",
         "-H", f"Authorization: Bearer {API_KEY}",
         "--report-dir", str(tmp_path / "report")],
        capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
    )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, output[-20000:]
    _, document = await api_request(broker.port, "GET", "/api/openapi.json", key=None)
    operations = sum(len(item) for item in document["paths"].values())
    tested = re.search(r"Tested: (\d+)", output)
    # every route was reached (schemathesis may leave out the document's own route)
    assert tested is not None and int(tested.group(1)) >= operations - 1, output[-3000:]
    if os.environ.get("SCHEMATHESIS_SHOW"):
        print(output)
