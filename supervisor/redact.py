"""Secret redaction, applied before any event is stored, logged or shown.

Three sources of secrets: values given explicitly (configured keys, host passwords), the
values of environment variables whose names look secret (``...KEY``, ``...TOKEN``,
``...SECRET``, ``...PASSWORD``...), and strings shaped like common tokens (``sk-...``,
``ghp_...``, ``AKIA...``, ``xoxb-...``, JWTs, ``Bearer ...``). Known values become
``[REDACTED:NAME]`` so a reader can tell which secret was there; shaped tokens become
``[REDACTED]``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_NAME = re.compile(
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|PRIVATE|AUTH|COOKIE|SESSION)"
    r"(_\w*)?$",
    re.IGNORECASE,
)
TOKEN_SHAPES = re.compile(
    r"""(
        \bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}          # OpenAI / Anthropic keys
      | \bgh[pousr]_[A-Za-z0-9]{20,}                    # GitHub tokens
      | \bgithub_pat_[A-Za-z0-9_]{20,}
      | \bAKIA[0-9A-Z]{16}\b                            # AWS access key ids
      | \bxox[abprs]-[A-Za-z0-9-]{10,}                  # Slack tokens
      | \bhf_[A-Za-z0-9]{20,}                           # Hugging Face tokens
      | \bAIza[0-9A-Za-z_-]{30,}                        # Google API keys
      | \beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}  # JWTs
      | (?<=Bearer\s)[A-Za-z0-9._~+/=-]{16,}            # bearer tokens in headers
      | -----BEGIN[ A-Z]*PRIVATE\ KEY-----[\s\S]*?-----END[ A-Z]*PRIVATE\ KEY-----
    )""",
    re.VERBOSE,
)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would redact ordinary text


class Redactor:
    """Replaces secrets in text and in JSON-like values."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._values: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        for name, value in (secrets or {}).items():
            self.add(name, value)

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
    ) -> Redactor:
        env = os.environ if environ is None else environ
        redactor = cls({k: v for k, v in env.items() if SECRET_NAME.search(k)})
        for name, value in (extra or {}).items():
            redactor.add(name, value)
        return redactor

    def add(self, name: str, value: str) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            self._values[value] = name
            self._pattern = None

    def add_all(self, items: Iterable[tuple[str, str]]) -> None:
        for name, value in items:
            self.add(name, value)

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._values:
            # Longest first, so a secret containing another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
        return self._pattern

    def text(self, text: str) -> str:
        if not text:
            return text
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(lambda m: f"[REDACTED:{self._values[m.group(0)]}]", text)
        return TOKEN_SHAPES.sub("[REDACTED]", text)

    def value(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (dicts, lists, strings)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
