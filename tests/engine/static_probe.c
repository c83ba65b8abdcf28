/* berth-static-probe: a tiny static program for the shell-less test image (tests/engine/agent_inject_test.cpp).
 *   probe echo WORDS...   prints the words, space-separated, and a newline
 *   probe cat             copies stdin to stdout
 *   probe id              prints the real uid
 *   probe pid             prints its pid and its parent's
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "echo") == 0) {
    for (int i = 2; i < argc; ++i)
      printf("%s%s", i > 2 ? " " : "", argv[i]);
    printf("\n");
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "cat") == 0) {
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0)
      if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n) return 1;
    return n < 0 ? 1 : 0;
  }
  if (argc >= 2 && strcmp(argv[1], "id") == 0) {
    printf("%u\n", (unsigned)getuid());
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "pid") == 0) {
    printf("%d %d\n", (int)getpid(), (int)getppid());
    return 0;
  }
  fprintf(stderr, "usage: probe echo|cat|id|pid\n");
  return 2;
}
