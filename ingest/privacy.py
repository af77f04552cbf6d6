"""Masking of person codes wherever they could leave the process in text
that is not the API itself (logs, error messages)."""


def mask(code: str) -> str:
    """Keep the first 2 and last 2 characters: enough to tell two log lines
    apart on site, not enough to identify anyone."""
    if len(code) <= 4:
        return "*" * len(code)
    return code[:2] + "*" * (len(code) - 4) + code[-2:]
