"""Hypothesis profiles for the fuzz suite.

The suite must stay bounded (a minute or so on a loaded 2-core machine) and CI must be
reproducible, so the example count is fixed and CI (CI=true) runs derandomized without
an example database. Locally the same count explores new inputs each run and remembers
failures in `.hypothesis/` (git-ignored). HYPOTHESIS_PROFILE=fuzz-deep runs a longer search.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}

settings.register_profile("fuzz", max_examples=150, **_COMMON)
settings.register_profile("fuzz-ci", max_examples=150, derandomize=True, database=None, print_blob=True,
                          **_COMMON)
settings.register_profile("fuzz-deep", max_examples=5000, **_COMMON)

_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("fuzz-ci" if _CI else "fuzz"))
