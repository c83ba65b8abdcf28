// Small POSIX sh programs the compat driver runs inside sessions (as the session's user). They need only sh,
// coreutils (env, realpath, rm, mkdir, mv, cat, wc, chmod, tr), findutils (find -printf) and grep; the Berth images
// have them. The container's environment is the tenant's (`env` at create, e.g. PATH=/workspace/.bin:...): the reaper
// and the exec wrapper, which run under it, call programs by absolute path only; the helpers (kKillByToken, kFiles)
// run under `/usr/bin/env -i PATH=/usr/bin:/bin LC_ALL=C` (compat_driver.cpp, run_exec), never under it.
#pragma once

namespace berth::engine::compat::scripts {

/**
 * The main process of every session: keeps the container alive and kills exec process trees on request without
 * starting a process (so it works even when the session's pids limit is exhausted, e.g. by a fork bomb). It
 * reads exec tokens, one per line, from the container's stdin (OpenStdin, written through POST .../attach) and
 * SIGKILLs every process whose environment holds BERTH_EXEC_TOKEN=<token>. Only shell builtins are used while
 * killing (dash's `read` drops the NULs of /proc/<pid>/environ, so the whole environment reads as lines).
 * If stdin ever closes, it falls back to `sleep infinity`.
 */
inline constexpr const char* kReaper = R"SH(reap() {
  tok=$1
  case $tok in '' | *[!0-9a-f]*) return ;; esac
  i=0
  while [ "$i" -lt 50 ]; do
    found=
    for d in /proc/[0-9]*; do
      p=${d#/proc/}
      [ "$p" = "$$" ] && continue
      m=
      while IFS= read -r l || [ -n "$l" ]; do
        case $l in *"BERTH_EXEC_TOKEN=$tok"*) m=1 ;; esac
        l=
      done <"$d/environ"
      [ -n "$m" ] && kill -KILL "$p" && found=1
    done 2>/dev/null
    [ -z "$found" ] && return
    i=$((i + 1))
  done
}
while IFS= read -r line; do reap "$line"; done
exec /bin/sleep infinity
)SH";

/**
 * Runs every exec (the user's and the driver's own helpers). argv: $1 = the exec's token, $2 = an extra working
 * directory (octal-escaped, "" = none), then the program's argv, each word octal-escaped (see escape_word in
 * compat_driver.cpp: `\0ooo` for a backslash and every byte outside printable ASCII) and decoded here with
 * `printf %b`, so that any byte but NUL survives the engine's JSON API. Before exec'ing the program it opens a
 * marker file named after the token on fd 9 and unlinks it: every process the program starts inherits that fd
 * (even through `env -i`, setsid, nohup or a double fork), which is how kKillByToken finds them.
 */
inline constexpr const char* kExecWrap = R"SH(t=$1 c=$2
shift 2
dec() { r=$(printf '%b' "$1" && printf /) || exit 126; r=${r%/}; }
n=$#
while [ "$n" -gt 0 ]; do
  case $1 in *\\*) dec "$1" ;; *) r=$1 ;; esac
  shift
  set -- "$@" "$r"
  n=$((n - 1))
done
m=
for d in /dev/shm /tmp; do
  if true 2>/dev/null >>"$d/.berth-exec-$t"; then
    m="$d/.berth-exec-$t"
    exec 9>>"$m"
    /bin/rm -f -- "$m"
    break
  fi
done
if [ -n "$c" ]; then
  dec "$c"
  cd -- "$r" || exit 126
fi
exec "$@"
)SH";

/**
 * Kills every process of one exec (after the reaper, or instead of it when the session's main process is not the
 * reaper): each exec carries a unique BERTH_EXEC_TOKEN in its environment, and holds (on fd 9, inherited by every
 * descendant, see kExecWrap) the unlinked marker file .berth-exec-<token>. A process is killed when either is
 * found, so `env -i` (drops the environment) and programs that close their fds are each caught by the other.
 * $1 = the token. Repeats until a scan finds nothing, so that processes forked during a scan are caught by the
 * next one.
 */
inline constexpr const char* kKillByToken = R"SH(tok=$1
case $tok in '' | *[!0-9a-f]*) exit 2 ;; esac
if printf 'x\000' | grep -qzx x 2>/dev/null; then
  scan_env() { grep -lzsx -e "BERTH_EXEC_TOKEN=$tok" /proc/[0-9]*/environ 2>/dev/null; }
else
  scan_env() {
    for f in /proc/[0-9]*/environ; do
      case "$(tr '\000' '\n' <"$f" 2>/dev/null)" in *"BERTH_EXEC_TOKEN=$tok"*) echo "$f" ;; esac
    done
  }
fi
if find /proc/self/fd -maxdepth 0 >/dev/null 2>&1; then
  scan_fd() { find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -lname "*/.berth-exec-$tok*" 2>/dev/null; }
else
  scan_fd() {
    for f in /proc/[0-9]*/fd/*; do
      case "$(readlink "$f" 2>/dev/null)" in *"/.berth-exec-$tok"*) echo "$f" ;; esac
    done
  }
fi
i=0
while [ "$i" -lt 50 ]; do
  found=
  for f in $(scan_env) $(scan_fd); do
    p=${f#/proc/}
    p=${p%%/*}
    [ "$p" = "$$" ] && continue
    kill -KILL "$p" 2>/dev/null && found=1
  done
  [ -z "$found" ] && exit 0
  i=$((i + 1))
done
exit 0
)SH";

/**
 * File operations confined to the workspace, run as the session user with a fixed environment. Arguments:
 * $1 = operation, $2 = workspace mount path, $3 = the normalised relative path ("" = the workspace itself), both
 * octal-escaped (`\0ooo`, decoded with `printf %b`: any byte but NUL). Every path is resolved with `realpath -m`,
 * which follows each symlink inside the container, and refused unless it stays below the (resolved) workspace.
 * Messages name paths by their escaped form only (plain ASCII), never by raw bytes.
 *   get    -> streams the regular file to stdout
 *   put    -> $4 = octal mode, $5 = byte count, $6 = a unique token. Creates missing parent directories, writes
 *             stdin to a temporary file in the target directory, checks its byte count, then renames it into
 *             place: a failed or short upload leaves nothing behind.
 *   list   -> prints "<type>/<size>/<octal mode>/<name>\0" per entry (find -printf; the name's raw bytes)
 *   remove -> removes the path (a final symlink is removed itself, not followed)
 * Exit codes: 10 not found, 11 escapes the workspace, 12 wrong type, 13 other failure, 14 short upload, 15 the
 * sandbox's filesystem refused the operation (permission denied, or the path changed under the call).
 */
inline constexpr const char* kFiles = R"SH(set -u
IFS=' 	
'
op=$1 shown=$3
die() { c=$1; shift; printf '%s\n' "$*" >&2; exit "$c"; }
dec() { r=$(printf '%b' "$1" && printf /) || die 13 "cannot decode a path"; r=${r%/}; }
canon() {
  r=$(realpath -m -- "$1" && printf /) || die 13 "cannot resolve '$shown'"
  r=${r%??}
}
dec "$2"
ws=$r
dec "$3"
rel=$r
canon "$ws"
w=$r
[ -d "$w" ] || die 13 "the workspace $2 does not exist"
inside() { case "$1" in "$w" | "$w"/*) return 0 ;; esac; return 1; }
t=$ws
[ -n "$rel" ] && t="$ws/$rel"
case "$op" in
get)
  canon "$t"
  inside "$r" || die 11 "'$shown' resolves outside the workspace"
  [ -e "$r" ] || die 10 "'$shown' does not exist"
  [ -f "$r" ] || die 12 "'$shown' is not a regular file"
  cat -- "$r" || die 15 "cannot read '$shown'"
  ;;
put)
  canon "$t"
  { inside "$r" && [ "$r" != "$w" ]; } || die 11 "'$shown' resolves outside the workspace"
  [ -d "$r" ] && die 12 "'$shown' is a directory"
  { [ -e "$r" ] && [ ! -f "$r" ]; } && die 12 "'$shown' exists and is not a regular file"
  d=${r%/*}
  [ -n "$d" ] || d=/
  [ -d "$d" ] || mkdir -p -- "$d" || die 12 "cannot create the parent directory of '$shown'"
  tmp="$d/.berth-put-$6"
  trap 'rm -f -- "$tmp"' EXIT
  set -C
  cat >"$tmp" || die 15 "cannot write '$shown'"
  set +C
  n=$(wc -c <"$tmp") || die 13 "cannot measure '$shown'"
  [ "$n" -eq "$5" ] || die 14 "short upload: $n of $5 bytes arrived"
  chmod "$4" "$tmp" || die 15 "cannot set the mode of '$shown'"
  [ -d "$r" ] && die 12 "'$shown' is a directory"
  mv -f -- "$tmp" "$r" || die 15 "cannot rename into '$shown'"
  trap - EXIT
  ;;
list)
  canon "$t"
  inside "$r" || die 11 "'$shown' resolves outside the workspace"
  [ -e "$r" ] || die 10 "'$shown' does not exist"
  [ -d "$r" ] || die 12 "'$shown' is not a directory"
  cd -- "$r" || die 15 "cannot enter '$shown'"
  find . -mindepth 1 -maxdepth 1 -printf '%y/%s/%m/%f\000' || die 15 "cannot list '$shown'"
  ;;
remove)
  [ -n "$rel" ] || die 11 "refusing to remove the workspace itself"
  p=$ws
  case "$rel" in */*) p="$ws/${rel%/*}" ;; esac
  canon "$p"
  inside "$r" || die 11 "'$shown' resolves outside the workspace"
  x="$r/${rel##*/}"
  { [ -e "$x" ] || [ -L "$x" ]; } || die 10 "'$shown' does not exist"
  rm -rf -- "$x" || die 15 "cannot remove '$shown'"
  ;;
*)
  die 13 "unknown operation $op"
  ;;
esac
)SH";

}  // namespace berth::engine::compat::scripts
