"""Hypothesis profiles for the whole suite.

dev       fast, random: the default for local runs
ci        derandomized, enough examples to gate a release; what `tox` runs
thorough  thousands of random examples with an example database (`tox -e thorough`)

Choose with HYPOTHESIS_PROFILE=<name> or pytest's --hypothesis-profile=<name>.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=_slow_ok)
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_slow_ok,
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=_slow_ok
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
