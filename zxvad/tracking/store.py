"""Where MLflow keeps runs: the tracking URI, whether a server answers, experiments and the
folder their artifacts go to."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from zxvad.redaction import redact

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """MLflow cannot be reached or used; one line naming the tracking URI."""


def resolve_uri(explicit: str | None = None) -> str:
    """``explicit``, else MLFLOW_TRACKING_URI, else the default sqlite store; made absolute."""
    return absolute_uri(explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def absolute_uri(uri: str) -> str:
    """Relative sqlite and file URIs made absolute, so Ray workers in other folders agree."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl().rstrip("/")
                                     + "/health")
    if parts.username is not None:  # user:password@ is not part of the host: send it as basic auth
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            if reply.status >= 500:
                raise TrackingError(f"MLflow server {redact(uri)} answered {reply.status}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow server {redact(uri)} is unreachable ({reason}); start it or set "
                            "tracking.on_unreachable=local to log to sqlite:///mlflow.db") from None


def default_artifact_root(uri: str, artifact_location: str = "") -> str | None:
    """``artifact_location`` (``tracking.artifact_location``; a folder is made absolute) if given;
    else beside the database for a ``sqlite:`` store (MLflow's default is ./mlruns of the current
    folder, wherever the command ran); else None (the store's own default)."""
    if artifact_location:
        return artifact_location if "://" in artifact_location else Path(artifact_location).resolve().as_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()


def experiment_id(uri: str, name: str, artifact_location: str = "") -> str:
    """The id of experiment ``name``, created with :func:`default_artifact_root` if new.

    An existing experiment keeps the artifact location it was made with (MLflow cannot move it):
    a different ``artifact_location`` is reported, not applied.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=default_artifact_root(uri, artifact_location))
    wanted = default_artifact_root(uri, artifact_location) if artifact_location else None
    if wanted and wanted.rstrip("/") != found.artifact_location.rstrip("/"):
        print(f"warning: MLflow experiment '{name}' keeps its artifact location {redact(found.artifact_location)}; "
              "tracking.artifact_location applies to new experiments", flush=True)
    return found.experiment_id
