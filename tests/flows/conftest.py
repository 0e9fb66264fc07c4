"""Fixtures of the flow tests that come from the areas the flows orchestrate."""

from tests.measure.conftest import ms_eval_dirs  # noqa: F401 - the evaluate flow's MS lesion case folders
