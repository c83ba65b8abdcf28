// Small POSIX sh programs the compat driver runs inside sessions (as the session's user). They need only sh,
// coreutils (realpath, id, rm, mkdir, tr), findutils (find -printf) and grep; the Berth images have them.
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
exec sleep infinity
)SH";

/**
 * Kills every process of one exec (the fallback when the session's main process is not the reaper above): the driver
 * gives each exec a unique BERTH_EXEC_TOKEN in its environment, and the environment is inherited by every child,
 * grandchild and daemonised descendant. $1 = the token. Repeats until a scan finds nothing, so that processes forked
 * during a scan are caught by the next one.
 */
inline constexpr const char* kKillByToken = R"SH(tok=$1
if printf 'x\000' | grep -qzx x 2>/dev/null; then
  scan() { grep -lzsx -e "BERTH_EXEC_TOKEN=$tok" /proc/[0-9]*/environ 2>/dev/null; }
else
  scan() {
    for f in /proc/[0-9]*/environ; do
      case "$(tr '\000' '\n' <"$f" 2>/dev/null)" in *"BERTH_EXEC_TOKEN=$tok"*) echo "$f" ;; esac
    done
  }
fi
i=0
while [ "$i" -lt 50 ]; do
  found=
  for f in $(scan); do
    p=${f#/proc/}
    p=${p%/environ}
    kill -KILL "$p" 2>/dev/null && found=1
  done
  [ -z "$found" ] && exit 0
  i=$((i + 1))
done
exit 0
)SH";

/**
 * File operations confined to the workspace. Arguments: $1 = operation, $2 = workspace mount path, $3 = the
 * normalised relative path ("" = the workspace itself). Every path is resolved with `realpath -m`, which follows
 * each symlink inside the container, and refused unless it stays below the (resolved) workspace.
 *   get    -> prints the resolved path of a regular file
 *   put    -> creates missing parent directories (as the session user), prints "uid\ngid\nresolved path"
 *   list   -> prints "<type>/<size>/<octal mode>/<name>\0" per entry (find -printf)
 *   remove -> removes the path (a final symlink is removed itself, not followed)
 * Exit codes: 10 not found, 11 escapes the workspace, 12 wrong type, 13 other failure.
 */
inline constexpr const char* kFiles = R"SH(set -u
op=$1 ws=$2 rel=$3
die() { c=$1; shift; printf '%s\n' "$*" >&2; exit "$c"; }
canon() {
  r=$(realpath -m -- "$1" && printf /) || die 13 "cannot resolve $1"
  r=${r%??}
}
canon "$ws"
w=$r
[ -d "$w" ] || die 13 "the workspace $ws does not exist"
inside() { case "$1" in "$w" | "$w"/*) return 0 ;; esac; return 1; }
t=$ws
[ -n "$rel" ] && t="$ws/$rel"
case "$op" in
get)
  canon "$t"
  inside "$r" || die 11 "'$rel' resolves outside the workspace"
  [ -e "$r" ] || die 10 "'$rel' does not exist"
  [ -f "$r" ] || die 12 "'$rel' is not a regular file"
  printf '%s' "$r"
  ;;
put)
  canon "$t"
  { inside "$r" && [ "$r" != "$w" ]; } || die 11 "'$rel' resolves outside the workspace"
  [ -d "$r" ] && die 12 "'$rel' is a directory"
  { [ -e "$r" ] && [ ! -f "$r" ]; } && die 12 "'$rel' exists and is not a regular file"
  d=${r%/*}
  [ -n "$d" ] || d=/
  [ -d "$d" ] || mkdir -p -- "$d" || die 12 "cannot create the parent directory of '$rel'"
  printf '%s\n%s\n%s' "$(id -u)" "$(id -g)" "$r"
  ;;
list)
  canon "$t"
  inside "$r" || die 11 "'$rel' resolves outside the workspace"
  [ -e "$r" ] || die 10 "'$rel' does not exist"
  [ -d "$r" ] || die 12 "'$rel' is not a directory"
  cd -- "$r" || die 13 "cannot enter '$rel'"
  exec find . -mindepth 1 -maxdepth 1 -printf '%y/%s/%m/%f\000'
  ;;
remove)
  [ -n "$rel" ] || die 11 "refusing to remove the workspace itself"
  p=$ws
  case "$rel" in */*) p="$ws/${rel%/*}" ;; esac
  canon "$p"
  inside "$r" || die 11 "'$rel' resolves outside the workspace"
  x="$r/${rel##*/}"
  { [ -e "$x" ] || [ -L "$x" ]; } || die 10 "'$rel' does not exist"
  rm -rf -- "$x" || die 13 "cannot remove '$rel'"
  ;;
*)
  die 13 "unknown operation $op"
  ;;
esac
)SH";

}  // namespace berth::engine::compat::scripts
