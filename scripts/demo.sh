#!/usr/bin/env bash
# The main job: a local Apache Kafka, a 3-replica minigit server, and the seed's
# scenario played by three users in three working directories.
#   A (arenasesteban) has no repository, B (BryanSalgado) is at an older
#   version, C (TheWillyrex) is at the head. Each pushes, then each pulls.
# Every user is a registered user whose key signs its requests; the repository is
# private (as every repository is at first) and its owner, the teacher, shares
# write access with the three.
# Everything lives in ./demo-run (or $MINIGIT_DEMO_DIR), the users' keys and the
# service key they pin too (MINIGIT_CONFIG_DIR), and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

demo=${MINIGIT_DEMO_DIR:-$PWD/demo-run}
rm -rf "$demo" && mkdir -p "$demo"
read -r port controller_port < <(python - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
port=${MINIGIT_DEMO_PORT:-$port}
export MINIGIT_BOOTSTRAP="127.0.0.1:$port"
# The users' keys, and the service's key they pin on first contact: the demo's own
# (a new service on a port used before would not be the one pinned in ~/.config/minigit).
export MINIGIT_CONFIG_DIR="$demo/config"

server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    minigit-server kafka stop --data-dir "$demo/kafka" >/dev/null 2>&1 || true
}
trap cleanup EXIT

say() { printf '\n\033[1;36m# %s\033[0m\n' "$*"; }
as() {  # as USER DIR minigit ARGS...: run a command the way that user would type it
    local user=$1 dir=$2
    shift 2
    local shown=() arg
    for arg in "$@"; do [[ $arg == *[[:space:]\']* ]] && shown+=("\"$arg\"") || shown+=("$arg"); done
    printf '\033[1m%s@%s$ %s\033[0m\n' "$user" "$(basename "$dir")" "${shown[*]}"
    (cd "$dir" && MINIGIT_USER=$user "$@") && return 0
    local code=$?
    printf '\033[2m(exit code %d)\033[0m\n' "$code"
}

say "Start a local Apache Kafka (KRaft, one node) on $MINIGIT_BOOTSTRAP"
minigit-server kafka start --port "$port" --controller-port "$controller_port" --data-dir "$demo/kafka"

say "Start the replicated server: 3 replica processes (log: $demo/server.out)"
minigit-server start --replicas 3 --data-dir "$demo/server" >"$demo/server.out" 2>&1 &
server_pid=$!
for attempt in $(seq 60); do  # until the server has created its topics and answers
    minigit-server ping --repo LaboratorioDistribuidos --timeout 30 2>/dev/null && break
    [ "$attempt" -lt 60 ] || { cat "$demo/server.out"; exit 1; }
    sleep 1
done

repo=LaboratorioDistribuidos
origin=$demo/profesor a=$demo/esteban b=$demo/bryan c=$demo/willy
mkdir -p "$origin/src" "$a"
printf '# Laboratorio 2: Kafka\n' >"$origin/README.md"
printf 'print("server")\n' >"$origin/src/server.py"
printf 'print("client")\n' >"$origin/src/main.py"

say "Each user registers the key that signs its requests (any first command would do it too)"
as profesor "$origin" minigit auth register
as arenasesteban "$demo" minigit auth register
as BryanSalgado "$demo" minigit auth register
as TheWillyrex "$demo" minigit auth register

say "The teacher creates the repository (version 1): private, the teacher owns it"
as profesor "$origin" minigit init "$repo" -m "Laboratorio 2"
as BryanSalgado "$demo" minigit clone "$repo" bryan

say "The teacher shares write access with A, B and C; now B clones it"
as profesor "$origin" minigit share "$repo" arenasesteban --write
as profesor "$origin" minigit share "$repo" BryanSalgado --write
as profesor "$origin" minigit share "$repo" TheWillyrex --write
as BryanSalgado "$demo" minigit clone "$repo" bryan

say "The teacher pushes version 2; C clones it. Now B is behind, A has nothing."
printf 'print("server, version 2")\n' >"$origin/src/server.py"
as profesor "$origin" minigit push -m "server v2"
as TheWillyrex "$demo" minigit clone "$repo" willy

say "B and C edit different files"
printf 'print("client, edited by B")\n' >"$b/src/main.py"
printf 'C was here\n' >"$c/NOTES.md"
as BryanSalgado "$b" minigit status

say "Each pushes: A has no repository, B is behind (fetch first), C is at the head"
as arenasesteban "$a" minigit push -m "A's push"
as BryanSalgado "$b" minigit push -m "B's push"
as TheWillyrex "$c" minigit push -m "C's push"

say "Each pulls: A clones version 3, B updates from 1 to 3 keeping its edit, C is up to date"
as arenasesteban "$a" minigit pull "$repo"
as BryanSalgado "$b" minigit pull
as TheWillyrex "$c" minigit pull

say "B can push now"
as BryanSalgado "$b" minigit push -m "B's push, after pulling"
as TheWillyrex "$c" minigit pull
as TheWillyrex "$c" minigit log -n 3 --verify

say "B and C change the same line of src/main.py; C pushes first, B is rejected"
printf 'print("client, by C")\n' >"$c/src/main.py"
as TheWillyrex "$c" minigit push -m "C's client"
printf 'print("client, by B")\n' >"$b/src/main.py"
as BryanSalgado "$b" minigit push -m "B's client"

say "B pulls: the same line changed on both sides, so it is marked in the file (exit 3) and push waits"
as BryanSalgado "$b" minigit pull
printf '\033[1mBryanSalgado@bryan$ cat src/main.py\033[0m\n' && cat "$b/src/main.py"
as BryanSalgado "$b" minigit status
as BryanSalgado "$b" minigit push -m "too soon"

say "B resolves the conflict, looks at the change, and pushes; C sees it"
printf 'print("client, by B and C")\n' >"$b/src/main.py"
as BryanSalgado "$b" minigit diff
as BryanSalgado "$b" minigit push -m "client: B and C together"
as TheWillyrex "$c" minigit pull
as TheWillyrex "$c" minigit log --oneline -n 4
as TheWillyrex "$c" minigit show 6 --stat
as TheWillyrex "$c" minigit repos

say "What the replicas logged (which replica served each request)"
grep -E ' -> ' "$demo/server.out" || true

say "An auditor that shares nothing with the replicas: Apache Spark folds the whole log again, with the replicas' rules, and compares"
as operator "$demo" minigit-server audit --engine spark --master 'local[2]' --data-dir "$demo/server"
