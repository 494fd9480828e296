#!/usr/bin/env bash
# Installs nats-server (JetStream) from Debian packages when it is missing. The NATS tests
# (tests/tests/nats.rs) start their own server on a free port with `-js -sd <tmpdir>`, so nothing
# is started here; without the binary they fail unless MDM_SKIP_NATS=1.
set -euo pipefail

if command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends nats-server
# Debian enables a system service with the package; the tests use their own servers.
if command -v systemctl >/dev/null && systemctl is-active --quiet nats-server 2>/dev/null; then
  systemctl disable --now nats-server || true
fi
/usr/sbin/nats-server --version
