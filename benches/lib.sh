# Shared by the bench scripts (sourced, after CARGO_TARGET_DIR is set and from the repository's
# root).

# A free TCP port on the loopback interface.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets BASELINE to a kmflow binary built from git ref $1, cached under
# ~/.cache/kmflow/baseline (built in a temporary worktree with the same target directory, so
# RocksDB is not compiled again). Cargo gives the worktree's crates the same artifacts as this
# checkout's, newer than its sources: they are touched afterwards so the next build here
# rebuilds them (else "this checkout" would silently be the baseline).
baseline_binary() {
  local dir="${HOME}/.cache/kmflow/baseline" sha wt
  sha=$(git rev-parse --short "$1")
  BASELINE="${dir}/kmflow-${sha}"
  mkdir -p "$dir"
  if [ ! -x "$BASELINE" ]; then
    echo "$(basename "$0"): building the baseline ${sha}" >&2
    wt=$(mktemp -d)
    git worktree add -q --detach "$wt" "$1"
    (cd "$wt" && cargo build --release --bin kmflow -q)
    cp "${CARGO_TARGET_DIR}/release/kmflow" "$BASELINE"
    git worktree remove --force "$wt"
    find src dataflows/src benches tests -name '*.rs' -exec touch {} +
  fi
}
