#!/usr/bin/env bash
# The MLflow tracking server for zxvad runs: PostgreSQL for runs and metrics, S3 for artifacts
# (proxied: clients upload through the server, so only the server needs S3 access).
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/zxvad/mlflow \
#   cluster/mlflow-server.sh
#
# Settings (environment):
#   MLFLOW_BACKEND_STORE_URI      required; postgresql://USER@HOST:PORT/DB. Keep the password
#                                 out of the URI: put it in ~/.pgpass (mode 600) or PGPASSWORD.
#   MLFLOW_ARTIFACTS_DESTINATION  required; s3://bucket/prefix. S3 credentials come from the
#                                 instance role (or the usual AWS_* environment of this shell).
#   MLFLOW_HOST                   interface to bind; default 127.0.0.1 (this machine only). Set it
#                                 to the private VPC address so Ray workers can log, and keep the
#                                 port closed to the internet in the security group.
#   MLFLOW_PORT                   default 5000.
#   MLFLOW_ALLOWED_HOSTS          extra Host headers to accept (default: localhost + private IPs).
#   MLFLOW_WORKERS                default 4.
#
# Needs: pip install mlflow psycopg2-binary boto3. Run it under systemd or tmux on the head node
# (or any small instance in the VPC); point runs at it with MLFLOW_TRACKING_URI=http://HOST:PORT.
set -euo pipefail

die() { echo "mlflow-server.sh: $*" >&2; exit 2; }

case "${1:-}" in
  -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unexpected argument '$1' (all settings are environment variables; see --help)" ;;
esac

backend="${MLFLOW_BACKEND_STORE_URI:-}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"

[[ -n "$backend" ]] || die "MLFLOW_BACKEND_STORE_URI is not set (expected postgresql://USER@HOST:PORT/DB)"
[[ "$backend" == postgresql* ]] || die "MLFLOW_BACKEND_STORE_URI='${backend%%://*}://...': expected a postgresql:// URI"
# A password in the URI would show up in `ps` and in logs.
[[ "${backend#*://}" != *:*@* ]] || die "MLFLOW_BACKEND_STORE_URI holds a password; move it to ~/.pgpass or PGPASSWORD"
[[ -n "$artifacts" ]] || die "MLFLOW_ARTIFACTS_DESTINATION is not set (expected s3://bucket/prefix)"
[[ "$artifacts" == s3://* ]] || die "MLFLOW_ARTIFACTS_DESTINATION='$artifacts': expected s3://bucket/prefix"
[[ "$port" =~ ^[0-9]+$ ]] || die "MLFLOW_PORT='$port': expected a port number"

args=(--backend-store-uri "$backend" --artifacts-destination "$artifacts"
      --host "$host" --port "$port" --workers "${MLFLOW_WORKERS:-4}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

echo "mlflow-server.sh: serving on http://$host:$port (artifacts: $artifacts)" >&2
exec mlflow server "${args[@]}"
