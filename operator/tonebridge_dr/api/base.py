"""Base classes and field types that carry their own Kubernetes schema.

A model is written once and yields both the Python validator and the CRD schema:

* `SpecModel` is closed (`extra="forbid"`), camelCase on the wire, snake_case in
  Python, frozen, and documented by attribute docstrings (they become the
  schema's `description`).
* `Rule` is one cross-field rule: a CEL expression for the API server and the
  same predicate in Python, with one human message for both. Rules listed in a
  class's `cel_rules` are checked after the model validates, and `crdgen` puts
  them into `x-kubernetes-validations`.
* Field types (`Duration`, `Cron`, `Lsn`, ...) validate in Python with the same
  regular expressions that their CEL rules use (see `formats`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from tonebridge_dr.api import formats

__all__ = [
    "Cron",
    "DnsLabel",
    "Duration",
    "Lsn",
    "Matches",
    "ObjectName",
    "PositiveDuration",
    "Quantity",
    "Rfc3339",
    "Rule",
    "SpecModel",
    "StatusModel",
    "Time",
    "camel",
    "unique",
]

# Words that stay upper case in camelCase names: target_lsn -> targetLSN.
_INITIALISMS = frozenset({"lsn", "dns"})


def camel(name: str) -> str:
    """snake_case Python attribute -> camelCase wire name (`from_` -> `from`)."""
    words = name.rstrip("_").split("_")
    head, tail = words[0], words[1:]
    return head + "".join(w.upper() if w in _INITIALISMS else w.capitalize() for w in tail)


@dataclass(frozen=True)
class Rule:
    """One validation rule, enforced identically by the API server (CEL) and by Python.

    `check` receives the validated model (or field value) and returns True when
    the rule holds. `message` is shown verbatim by `kubectl apply`.
    """

    cel: str | None
    """The CEL expression; None when the schema enforces the rule structurally (e.g. a
    list-type map rejects duplicate keys by itself, with its own message)."""
    message: str
    check: Callable[[Any], bool] = field(compare=False)

    def to_schema(self) -> dict[str, str]:
        assert self.cel is not None
        return {"rule": self.cel, "message": self.message}


def unique(items: Any, key: str) -> bool:
    """True when no two items of a list share the attribute `key` (None counts as empty)."""
    values = [getattr(item, key) for item in items or ()]
    return len(values) == len(set(values))


def _add_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = cls.__dict__.get("cel_rules", ())
    validations = [rule.to_schema() for rule in rules if rule.cel is not None]
    if validations:
        schema["x-kubernetes-validations"] = validations


class _ApiModel(BaseModel):
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).__dict__.get("cel_rules", ()):
            if not rule.check(self):
                raise ValueError(rule.message)
        return self


class SpecModel(_ApiModel):
    """Base of every user-written object: unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules,
    )


class StatusModel(_ApiModel):
    """Base of status objects: written by the operator, read leniently (unknown fields ignored)."""

    model_config = ConfigDict(
        alias_generator=camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules,
    )


# --- field types ---------------------------------------------------------------


def _matches(regex: str) -> str:
    return f"self.matches(r'{regex}')"


@dataclass(frozen=True)
class Matches:
    """`Annotated[str, Matches(regex, message)]`: a string format checked by Python and by CEL."""

    regex: str
    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        compiled = re.compile(self.regex)
        message = self.message

        def check(value: str) -> str:
            if compiled.search(value) is None:
                raise ValueError(f"{value!r} {message}")
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        rules = json_schema.setdefault("x-kubernetes-validations", [])
        rules.append({"rule": _matches(self.regex), "message": self.message})
        return json_schema


DnsLabel = Annotated[
    str, Field(max_length=63), Matches(formats.DNS_LABEL_RE, formats.DNS_LABEL_MESSAGE)
]
"""A lowercase RFC 1123 label (names of schedules, stages, checks; namespaces)."""

ObjectName = Annotated[
    str, Field(max_length=253), Matches(formats.DNS_SUBDOMAIN_RE, formats.DNS_SUBDOMAIN_MESSAGE)
]
"""The name of a Kubernetes object (Secret, Service, Deployment, ...)."""

Cron = Annotated[str, Field(max_length=128), Matches(formats.CRON_RE, formats.CRON_MESSAGE)]
"""A CronJob schedule: five fields or an @-macro."""

Lsn = Annotated[str, Field(max_length=17), Matches(formats.LSN_RE, formats.LSN_MESSAGE)]
"""A PostgreSQL WAL position, `X/X` in hexadecimal."""


class _PlainType:
    """A custom field type: `_validate` parses, `_serialize` writes JSON, `_json_schema`
    is its OpenAPI schema (with the CEL rules that carry the human messages)."""

    _serialize: Any = None

    def _validate(self, value: Any) -> Any:
        raise NotImplementedError

    def _json_schema(self) -> JsonSchemaValue:
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        serialize = type(self)._serialize
        if serialize is None:
            return core_schema.no_info_plain_validator_function(self._validate)
        return core_schema.no_info_plain_validator_function(
            self._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                serialize, when_used="json"
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self._json_schema()


@dataclass(frozen=True)
class _DurationType(_PlainType):
    positive: bool = False

    def _validate(self, value: Any) -> timedelta:
        if isinstance(value, str):
            parsed = formats.parse_duration(value)
        elif isinstance(value, timedelta):
            parsed = value
        else:
            raise ValueError(f"{value!r} {formats.DURATION_MESSAGE}")
        if parsed < timedelta(0) or parsed.microseconds:
            raise ValueError(f"{value!r}: durations are whole, non-negative seconds")
        if self.positive and parsed == timedelta(0):
            raise ValueError(f"{value!r} {formats.POSITIVE_DURATION_MESSAGE}")
        return parsed

    _serialize = staticmethod(formats.format_duration)

    def _json_schema(self) -> JsonSchemaValue:
        rules = [
            {
                "rule": f"self.size() > 0 && {_matches(formats.DURATION_RE)}",
                "message": formats.DURATION_MESSAGE,
            }
        ]
        if self.positive:
            rules.append(
                {"rule": "self.matches('[1-9]')", "message": formats.POSITIVE_DURATION_MESSAGE}
            )
        return {"type": "string", "maxLength": 32, "x-kubernetes-validations": rules}


Duration = Annotated[timedelta, _DurationType()]
"""A duration such as `30m`, `1h`, `7d`, `1h30m`; a `timedelta` in Python."""

PositiveDuration = Annotated[timedelta, _DurationType(positive=True)]
"""A duration longer than zero."""


def _format_time(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class _Rfc3339Type(_PlainType):
    """Spec timestamps: RFC 3339 with a zone, checked by a CEL rule (message included)."""

    _serialize = staticmethod(_format_time)

    def _validate(self, value: Any) -> datetime:
        if isinstance(value, str):
            return formats.parse_rfc3339(value)
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value
        raise ValueError(f"{value!r} {formats.RFC3339_MESSAGE}")

    def _json_schema(self) -> JsonSchemaValue:
        return {
            "type": "string",
            "maxLength": 40,
            "x-kubernetes-validations": [
                {"rule": _matches(formats.RFC3339_RE), "message": formats.RFC3339_MESSAGE}
            ],
        }


Rfc3339 = Annotated[datetime, _Rfc3339Type()]
"""A point in time in a spec: RFC 3339 with a time zone; an aware `datetime` in Python."""


def _format_status_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _TimeType(_PlainType):
    """Status timestamps (metav1.Time): written as UTC, whole seconds, `Z`."""

    _serialize = staticmethod(_format_status_time)

    def _validate(self, value: Any) -> datetime:
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value
        raise ValueError(f"{value!r} is not a time-zone aware date-time")

    def _json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "format": "date-time"}


Time = Annotated[datetime, _TimeType()]
"""A point in time in a status (UTC, whole seconds on the wire)."""


class _QuantityType(_PlainType):
    """A Kubernetes resource quantity: a string (`500m`, `1Gi`) or a plain integer."""

    _compiled = re.compile(formats.QUANTITY_RE)

    def _validate(self, value: Any) -> int | str:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} {formats.QUANTITY_MESSAGE}")
        if isinstance(value, int) and value >= 0:
            return value
        if isinstance(value, str) and self._compiled.fullmatch(value):
            return value
        raise ValueError(f"{value!r} {formats.QUANTITY_MESSAGE}")

    def _json_schema(self) -> JsonSchemaValue:
        return {
            "x-kubernetes-int-or-string": True,
            "maxLength": 64,
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == int || string(self).matches(r'{formats.QUANTITY_RE}')",
                    "message": formats.QUANTITY_MESSAGE,
                }
            ],
        }


Quantity = Annotated[int | str, _QuantityType()]
"""A resource quantity such as `500m`, `2`, `1Gi`."""


class _PreserveUnknownType:
    """A free-form object the API server stores as is (only `status.kopf` uses it)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return handler(source)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


FreeForm = Annotated[dict[str, Any], _PreserveUnknownType()]
"""An object whose content is owned by someone else (kopf's progress storage)."""
