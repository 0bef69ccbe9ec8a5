from __future__ import annotations

from supervisor.redact import Redactor


def test_known_values_named() -> None:
    r = Redactor.from_environment(
        {
            "OPENAI_API_KEY": "abc123secretvalue",
            "HOME": "/root",
            "DB_PASSWORD": "pw-hunter22",
            "GH_TOKEN_FILE": "xyzzy-token-val",
        }
    )
    out = r.text("key=abc123secretvalue home=/root pw=pw-hunter22 t=xyzzy-token-val")
    assert out == (
        "key=[REDACTED:OPENAI_API_KEY] home=/root pw=[REDACTED:DB_PASSWORD] "
        "t=[REDACTED:GH_TOKEN_FILE]"
    )


def test_token_shapes() -> None:
    r = Redactor()
    samples = [
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-123456789012-abcdefghij",
        "hf_abcdefghijklmnopqrstuvwxyzABCD",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ]
    for token in samples:
        assert r.text(f"before {token} after") == "before [REDACTED] after", token
    assert (
        r.text("Authorization: Bearer abcdefghijklmnop1234") == "Authorization: Bearer [REDACTED]"
    )
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----"
    assert r.text(f"x {key} y") == "x [REDACTED] y"


def test_ordinary_text_untouched() -> None:
    r = Redactor.from_environment({"SHORT_KEY": "1", "MY_TOKEN": "true"})
    text = "true 1 sk-short skeleton task-force eyJ"
    assert r.text(text) == text


def test_nested_values() -> None:
    r = Redactor({"X_SECRET": "s3cr3t-value"})
    assert r.value({"a": ["s3cr3t-value", 1, {"b": "x s3cr3t-value"}]}) == {
        "a": ["[REDACTED:X_SECRET]", 1, {"b": "x [REDACTED:X_SECRET]"}]
    }
