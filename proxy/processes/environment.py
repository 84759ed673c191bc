"""Settings handed to another process: as the ``STILLROOM_*`` variables it reads."""

from __future__ import annotations

import json

from core.settings import Settings


def settings_environment(settings: Settings) -> dict[str, str]:
    """``STILLROOM_*`` variables that rebuild ``settings`` in another process."""
    env = {}
    for name, value in settings.model_dump(mode="json", exclude_defaults=True).items():
        if value is None:
            continue
        env[f"STILLROOM_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    for secret in ("teacher_api_key", "anthropic_api_key", "admin_token"):
        value = getattr(settings, secret)
        if value is not None:
            env[f"STILLROOM_{secret.upper()}"] = value.get_secret_value()
    if settings.api_keys:
        env["STILLROOM_API_KEYS"] = ",".join(k.get_secret_value() for k in settings.api_keys)
    return env
