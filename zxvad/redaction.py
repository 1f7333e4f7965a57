"""Secrets kept out of everything that outlives a process: MLflow params, config files in runs
and checkpoints, and the lines the driver prints.

A secret is a URL's user:password, the value of a known secret environment variable, or the
value of a config key whose name looks secret. Imports nothing heavy: the driver's console and
its first checks use it before torch, Ray or MLflow load.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from zxvad.config import Config

_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|key", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
               "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN")


def redact(value: Any) -> Any:
    """Replace the user:password of any URL and any known secret value (from the environment)
    inside strings by '***'."""
    if not isinstance(value, str):
        return value
    value = _URL_USERINFO.sub(r"\g<scheme>***@", value)
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4 and secret in value:
            value = value.replace(secret, "***")
    return value


def redacted_config(cfg: Config) -> Config:
    """A copy of ``cfg`` fit to persist (checkpoints, MLflow): URL userinfo and known secrets
    replaced, secret-named keys emptied. The run itself keeps the original in memory."""

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(k, v) for k, v in value.items()}
        if _SECRET_KEY.search(key) and isinstance(value, str):
            return "***" if value else value
        return redact(value)

    sections = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        sections[f.name] = dataclasses.replace(section, **{
            g.name: clean(g.name, getattr(section, g.name)) for g in dataclasses.fields(section)})
    return dataclasses.replace(cfg, **sections)


def safe_params(cfg: Config) -> dict[str, Any]:
    """All config values as MLflow params, with anything secret-looking removed."""
    params = {}
    for key, value in cfg.flat().items():
        if _SECRET_KEY.search(key):
            continue
        if isinstance(value, dict):
            for sub, item in value.items():
                if not _SECRET_KEY.search(sub):
                    params[f"{key}.{sub}"] = redact(str(item))
        else:
            params[key] = redact(value)
    return params
