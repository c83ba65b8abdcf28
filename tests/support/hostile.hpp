// Shell code shared by the driver conformance kit ([hostile]) and the security suite ([files]): a sandbox's user
// plants programs where a careless helper would find them, and a check lists what a helper must never leave behind.
#pragma once

#include <string>

namespace berth::test::hostile {

/**
 * Plants an executable for every program berthd's helpers might call in /workspace/.bin and in every directory of
 * the hostile PATH the session user can write; each leaves /workspace/.pwned-<name> when it runs (`realpath` then
 * prints a path to /etc/shadow). Links etc-link -> /etc and shadow-link -> /etc/shadow.
 */
inline constexpr const char* kPlant = R"SH(PATH=/usr/bin:/bin
set -e
mkdir -p /workspace/.bin /tmp/.bin
for p in realpath cat mv chmod wc printf ls find stat rm mkdir mktemp dd head tail sh dash bash env grep tr sleep \
         kill true test [ readlink basename dirname id cp ln touch python3 tar sed awk xargs sort uniq cut; do
  printf '#!/bin/sh\n/bin/echo ran >/workspace/.pwned-%s\n' "$p" >"/workspace/.bin/$p"
  case $p in
    realpath) printf '/bin/echo /workspace/../etc/shadow\n' >>"/workspace/.bin/$p" ;;
    cat) printf '/bin/echo PWNED\n' >>"/workspace/.bin/$p" ;;
  esac
  chmod 755 "/workspace/.bin/$p"
  for d in /tmp/.bin /usr/local/bin /usr/bin /bin; do cp "/workspace/.bin/$p" "$d/$p" 2>/dev/null || true; done
done
printf '#!/bin/sh\n/bin/echo ran >/workspace/.pwned-rc\n' >/workspace/.bin/rc
chmod 755 /workspace/.bin/rc
ln -sfn /etc /workspace/etc-link
ln -sfn /etc/shadow /workspace/shadow-link
)SH";

/**
 * Prints markers of planted programs that ran, root-owned files in the workspace or /tmp, `berth-*` in /etc, then
 * `evidence-checked` (so that a check that did not run never reads as clean).
 */
inline constexpr const char* kEvidence = R"SH(PATH=/usr/bin:/bin
ls -A /workspace | grep '^\.pwned-' || true
find /workspace /tmp -xdev -mindepth 1 -user 0 2>/dev/null | head -20 || true
ls -A /etc | grep '^berth-' || true
echo evidence-checked
)SH";

/**
 * Shell code that prepares the rename race: /workspace/race/d (a directory holding `shadow` = "inside\n") and
 * /workspace/race/l (a symlink to /etc), plus /workspace/race/swap.py, which trades them with
 * renameat2(RENAME_EXCHANGE) every 0.3 ms until /workspace/race/stop exists or `seconds` pass, touches
 * /workspace/race/started first and prints the number of swaps.
 */
inline std::string race_setup(int seconds) {
  return R"SH(PATH=/usr/bin:/bin
set -e
mkdir -p /workspace/race/d
printf 'inside\n' >/workspace/race/d/shadow
ln -sfn /etc /workspace/race/l
cat >/workspace/race/swap.py <<'PY'
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.chdir("/workspace/race")
open("started", "w").close()
end = time.monotonic() + )SH" +
         std::to_string(seconds) + R"SH(
n = 0
while not os.path.exists("stop") and time.monotonic() < end:
    if libc.renameat2(-100, b"d", -100, b"l", 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
    n += 1
    time.sleep(0.0003)
print(n)
PY
)SH";
}

}  // namespace berth::test::hostile
