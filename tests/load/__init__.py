"""The load-test harness: ``python -m tests.load SCENARIO [options]`` (see __main__)."""
