#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the real tools the tests
# drive (Prometheus, promtool, amtool, the Pushgateway, wrk, strace, openssl
# htpasswd and redis-server from Debian;
# kubernetes-validate, yamllint, check-jsonschema and Jinja2 from PyPI into .venv-tools),
# then runs the format check, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for tool in prometheus promtool amtool prometheus-alertmanager prometheus-pushgateway wrk strace openssl htpasswd redis-server; do
  command -v "$tool" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "==> installing Prometheus tools from Debian" >&2
  # No daemon may start on install: the tests start their own on free ports.
  [ -x /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    prometheus prometheus-alertmanager prometheus-pushgateway wrk strace openssl apache2-utils redis-server >/dev/null
fi

venv=.venv-tools
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/yamllint" ] || [ ! -x "$venv/bin/check-jsonschema" ] \
  || ! "$venv/bin/python" -c 'import jinja2' 2>/dev/null; then
  echo "==> installing Python tools into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
    kubernetes-validate==1.37.0 yamllint==1.38.0 check-jsonschema==0.39.0 Jinja2==3.1.6
fi
export PATH="$PWD/$venv/bin:$PATH"
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required (kubectl kustomize) and is not on PATH" >&2; exit 1; }

echo "==> cargo fmt" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "==> the server builds without the simulator (a client of it)" >&2
cargo check --locked --no-default-features
echo "==> tests" >&2
cargo nextest run --locked --no-fail-fast "$@"
