"""``ackworker check-config``: every setting with its value and where it came from, and each
account with its credentials' source, with every secret masked."""

from __future__ import annotations

from worker.config.settings import SPECS, Settings, masked_value


def describe_settings(settings: Settings) -> str:
    """Lines ``name = value  (source)``, aligned, for ``ackworker check-config``.

    Loads the credentials to show them masked: the key id as its first 4 characters and
    ``***``, the secret and token as ``***``; URL passwords as ``***``.
    """
    creds = settings.credentials.load()
    rows = [
        (
            spec.name,
            _display(masked_value(spec.name, getattr(settings, spec.name))),
            f"({settings.sources.get(spec.name, 'default')})",
        )
        for spec in SPECS
    ]
    rows += [
        ("access_key_id", creds.masked_key_id(), ""),
        ("access_key_secret", "***", ""),
        ("security_token", "unset" if creds.security_token is None else "***", ""),
        ("credentials", settings.credentials.describe(), ""),
    ]
    for name, account in settings.named_accounts.items():
        key_id = account.credentials.load().masked_key_id()
        rows.append(
            (
                f"accounts.{name}",
                f"{account.endpoint}, {account.rate_limit:g}/s, {account.signature}, key {key_id},"
                f" {account.credentials.describe()}",
                "",
            )
        )
    name_width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, source in rows if source)
    lines = [
        f"{name:<{name_width}} = {value:<{value_width}}  {source}"
        if source
        else f"{name:<{name_width}} = {value}"
        for name, value, source in rows
    ]
    return "\n".join(lines)


def _display(value: object) -> str:
    return "unset" if value is None else str(value)
