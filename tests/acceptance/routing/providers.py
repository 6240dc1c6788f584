"""OpenFeature providers that misbehave, for ``PG_QUEUE['FLAG_PROVIDER']`` (factories)."""

from __future__ import annotations

from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider import AbstractProvider, Metadata


class _Base(AbstractProvider):
    name = "test"

    def get_metadata(self) -> Metadata:
        return Metadata(name=self.name)

    def _other(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("only boolean flags here")

    resolve_string_details = _other
    resolve_integer_details = _other
    resolve_float_details = _other
    resolve_object_details = _other


class RaisingProvider(_Base):
    """A flag service that is down: every evaluation raises."""

    name = "raising"

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        raise RuntimeError("flag service unreachable")


class NonBoolProvider(_Base):
    """A misconfigured flag: answers a string where a boolean is expected."""

    name = "non-bool"

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Any]:
        return FlagResolutionDetails(value="yes")


class AlwaysOnProvider(_Base):
    """A healthy provider that says True (proves FLAG_PROVIDER is really used)."""

    name = "always-on"

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return FlagResolutionDetails(value=True)


def raising_provider() -> RaisingProvider:
    return RaisingProvider()


def non_bool_provider() -> NonBoolProvider:
    return NonBoolProvider()


def always_on_provider() -> AlwaysOnProvider:
    return AlwaysOnProvider()
