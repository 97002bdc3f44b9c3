#!/bin/sh
# Write a recipe's debian.lock: every package of the closure of PKG...
# (Debian 12 bookworm, amd64, no recommends), each with its version, the
# sha256 and size of its .deb and its path on deb.debian.org.
#
#   recipes/debian-lock.sh nodejs git ... > recipes/NAME/debian.lock
#
# apt resolves the closure against a private, empty dpkg status (nothing
# is "already installed") from indices it fetches into a private directory
# and verifies with Debian's archive keyring; nothing on this machine's apt
# state changes. `brig image build` downloads exactly these files and
# refuses any whose bytes differ (docs/AGENTS.md#image-recipes).
set -eu
[ $# -gt 0 ] || { echo "usage: $0 PKG... > debian.lock" >&2; exit 2; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "$0: $keyring is missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
mirror=http://deb.debian.org
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/lists/partial" "$w/cache/archives/partial" "$w/parts" "$w/conf.d" "$w/prefs.d"
: > "$w/status"
cat > "$w/parts/debian.sources" <<EOF
Types: deb
URIs: $mirror/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: $keyring

Types: deb
URIs: $mirror/debian-security
Suites: bookworm-security
Components: main
Signed-By: $keyring
EOF
# $w is mktemp's (no spaces): the options split on spaces.
opts="-q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$w/parts
 -o Dir::Etc::Parts=$w/conf.d -o Dir::Etc::Preferences=/dev/null
 -o Dir::Etc::PreferencesParts=$w/prefs.d -o Dir::State::Lists=$w/lists
 -o Dir::State::status=$w/status -o Dir::Cache=$w/cache
 -o APT::Architecture=amd64 -o APT::Architectures=amd64
 -o APT::Install-Recommends=false -o APT::Install-Suggests=false
 -o Debug::NoLocking=true"
pkgs="$*"
# shellcheck disable=SC2086
set -- $opts
echo "debian-lock: fetching the bookworm indices from $mirror" >&2
apt-get "$@" update >&2
# shellcheck disable=SC2086
inst=$(apt-get "$@" -s install $pkgs | awk '$1 == "Inst" { v = $3; gsub(/[()]/, "", v); print $2 "=" v }' | sort)
[ -n "$inst" ] || { echo "debian-lock: apt resolved nothing" >&2; exit 1; }
echo "# brig debian.lock v1: Debian 12 bookworm amd64, no recommends."
echo "# recipes/debian-lock.sh $pkgs"
echo "# name version sha256 size path (under https://deb.debian.org/)"
# One record per package (the version apt chose; the same file whichever
# suite lists it). The security archive's files are under pool/updates/.
# shellcheck disable=SC2086
apt-cache "$@" show $inst | awk '
    /^Package: / { p = $2 } /^Version: / { v = $2 } /^Filename: / { f = $2 }
    /^Size: / { s = $2 } /^SHA256: / { h = $2 }
    /^$/ { if (p != "" && !seen[p]++) emit() ; p = "" }
    END { if (p != "" && !seen[p]++) emit() }
    function emit() {
        base = (f ~ /^pool\/updates\//) ? "debian-security" : "debian"
        printf "%s %s sha256:%s %s %s/%s\n", p, v, h, s, base, f
    }' | sort
