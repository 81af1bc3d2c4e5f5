/* sysrate: getppid system calls at a steady rate, for streaming and loss tests.
 *
 *   sysrate RATE SECONDS      RATE getppid calls per second for SECONDS, in 1 ms ticks
 *   sysrate -b COUNT          COUNT getppid calls as fast as possible (a burst)
 *
 * Each getppid is one raw_syscalls:sys_enter + one sys_exit (id 110 on x86-64). Prints
 * "getppid N" (the exact number of calls made), "pid P" and "elapsed_ns T" (the time the
 * calls took, measured by the workload itself) at the end.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned long done = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (argc == 3 && strcmp(argv[1], "-b") == 0) {
		unsigned long count = strtoul(argv[2], NULL, 0);
		for (; done < count; done++)
			syscall(SYS_getppid);
	} else if (argc == 3) {
		double rate = strtod(argv[1], NULL), seconds = strtod(argv[2], NULL);
		unsigned long ticks = (unsigned long)(seconds * 1000), total = (unsigned long)(rate * seconds);
		struct timespec next;
		clock_gettime(CLOCK_MONOTONIC, &next);
		for (unsigned long t = 1; t <= ticks; t++) {
			unsigned long target = total * t / ticks;
			for (; done < target; done++)
				syscall(SYS_getppid);
			next.tv_nsec += 1000000;
			if (next.tv_nsec >= 1000000000) {
				next.tv_nsec -= 1000000000;
				next.tv_sec++;
			}
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		}
	} else {
		fprintf(stderr, "usage: sysrate RATE SECONDS | sysrate -b COUNT\n");
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("getppid %lu\npid %d\nelapsed_ns %lld\n", done, (int)getpid(),
	       (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
	return 0;
}
