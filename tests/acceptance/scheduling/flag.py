"""A flag both sides read from one file (``PGQ_TEST_FLAG_FILE``: ``postgres`` or anything else),
so a test can turn ``pg_queue_enabled`` for the workers and for beat at the same moment."""

from __future__ import annotations

import os
from pathlib import Path

from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails

from tests.acceptance.routing.providers import _Base


class FileFlagProvider(_Base):
    name = "file"

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        text = Path(os.environ["PGQ_TEST_FLAG_FILE"]).read_text().strip()
        return FlagResolutionDetails(value=text == "postgres")


def file_provider() -> FileFlagProvider:
    return FileFlagProvider()
