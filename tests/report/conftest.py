"""Fixtures of the report tests: headless Chromium (:mod:`tests.report.browser`)."""

from __future__ import annotations

from tests.report.browser import chromium, render_dom  # noqa: F401  (fixtures)
