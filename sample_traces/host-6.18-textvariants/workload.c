/* textingest workload: N fresh heap pages (mmap), N fresh stack pages (deep in a big frame),
 * M getppid() calls, one fork; prints what it did as JSON for the tests' expected numbers. */
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/wait.h>
#define N 16
#define M 25
#define PG 4096
static __attribute__((noinline)) void touch_stack(unsigned long *lo, unsigned long *hi) {
    volatile char buf[(N + 64) * PG];          /* the deepest N pages were never touched */
    for (int i = 0; i < N; i++) buf[i * PG] = 1;
    *lo = (unsigned long)&buf[0]; *hi = (unsigned long)&buf[(N - 1) * PG];
}
int main(void) {
    unsigned long slo, shi;
    char *heap = mmap(0, N * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < M; i++) syscall(SYS_getppid);
    for (int i = 0; i < N; i++) heap[i * PG] = 1;
    touch_stack(&slo, &shi);
    pid_t c = fork(); if (c == 0) _exit(0); waitpid(c, 0, 0);
    printf("{\"pid\": %d, \"pages\": %d, \"getppid_calls\": %d, \"getppid_nr\": %d,"
           " \"heap\": [\"%#lx\", \"%#lx\"], \"stack\": [\"%#lx\", \"%#lx\"], \"child\": %d}\n",
           getpid(), N, M, SYS_getppid, (unsigned long)heap, (unsigned long)heap + (N - 1) * PG + PG - 1,
           slo & ~(PG - 1UL), (shi | (PG - 1)), c);
    return 0;
}
