#!/usr/bin/env bash
# Installs the real SIP peers the end-to-end tests run (docs/design.md section 6), on Debian/Ubuntu:
# sipp (sip-tester), kamailio and kamcmd (kamailio), svmap/svwar/svcrack (sipvicious), promtool
# (prometheus), systemd-analyze (systemd), which checks the unit in deploy/, stunnel4 (the TLS
# side of SIPp phones: Debian's SIPp is built without TLS) and ip (iproute2: the IPv6 test's
# network namespace) and dnsmasq (dnsmasq-base: the DNS server behind the allowlist's names,
# without the packaged service). The real Asterisk the e2e tests start comes from ../shared/asterisk, whose
# start script installs the libraries it needs. Does nothing when every command is
# already on PATH. Needs root or sudo; never reads stdin.
set -euo pipefail

# Debian puts kamailio and kamcmd in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

declare -A package_of=(
    [sipp]=sip-tester
    [kamailio]=kamailio
    [kamcmd]=kamailio
    [svmap]=sipvicious
    [promtool]=prometheus
    [systemd-analyze]=systemd
    [stunnel4]=stunnel4
    [ip]=iproute2
    [dnsmasq]=dnsmasq-base
)
commands=(sipp kamailio kamcmd svmap promtool systemd-analyze stunnel4 ip dnsmasq)

missing=()
for command in "${commands[@]}"; do
    if ! command -v "$command" >/dev/null 2>&1; then
        missing+=("${package_of[$command]}")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: ${commands[*]} are installed"
    exit 0
fi
# Unique package names, in a stable order.
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-test-deps: installing ${packages[*]}"

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "install-test-deps: need root or sudo to install ${packages[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get; install ${packages[*]} by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${packages[@]}" </dev/null

for command in "${commands[@]}"; do
    command -v "$command" >/dev/null 2>&1 || { echo "install-test-deps: $command still missing" >&2; exit 1; }
done
echo "install-test-deps: done"
