#!/usr/bin/env bash
# The image's entry point: read secrets from files, then run `m3edge ARGS...` (default: serve).
# Every M3EDGE_<NAME>_FILE=/path sets M3EDGE_<NAME> to that file's content (trailing newlines dropped), so passwords
# and broker URLs come from Docker/Compose secrets (/run/secrets/...) and never from the compose file or `docker inspect`.
set -euo pipefail

while IFS= read -r variable; do
  target="${variable%_FILE}"
  path="${!variable}"
  if [ -n "${!target:-}" ]; then
    echo "entrypoint: both ${target} and ${variable} are set; unset one of them" >&2
    exit 64
  fi
  if [ ! -r "${path}" ]; then
    echo "entrypoint: ${variable} names ${path}, which is not a readable file (is the secret mounted?)" >&2
    exit 66
  fi
  value="$(cat -- "${path}")"
  export "${target}=${value}"
  unset "${variable}"
done < <(compgen -e | grep -E '^M3EDGE_[A-Z0-9_]+_FILE$' || true)

exec m3edge "$@"
