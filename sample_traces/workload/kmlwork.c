/* kmlwork: a workload that does a known amount of work, so that traces of it can be
 * checked against exact numbers.
 *
 *   kmlwork [-m MARKER_FILE]... [-d MAPS_DIR] N M K P
 *
 * The process (the "parent"):
 *   - touches exactly N fresh stack pages (one write per page, deep below anything used
 *     before, highest page first so each write is one page fault),
 *   - touches exactly N fresh heap pages (mmap anonymous + MADV_NOHUGEPAGE),
 *   - makes exactly M getppid calls through syscall(SYS_getppid) (no libc caching),
 *   - makes exactly one arch_prctl(ARCH_SET_GS, 0) call,
 *   - forks one child that makes exactly K getppid calls and touches exactly P fresh heap
 *     pages, and waits for it.
 * Each phase is bracketed by a line written to every MARKER_FILE (an instance's
 * trace_marker), which shows up as ftrace:print.  With -d, each process copies its
 * /proc/self/maps to MAPS_DIR/maps.<pid> at the end.
 * At the end the child, then the parent, print "key value" lines to stdout.
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define MAX_MARKERS 8
/* distance between the stack in use at the start and the touched stack pages */
#define STACK_GAP (256UL * 1024)
#define ARCH_SET_GS 0x1001

static int marker_fds[MAX_MARKERS];
static int n_markers;

static void marker(const char *text)
{
	for (int i = 0; i < n_markers; i++)
		if (write(marker_fds[i], text, strlen(text)) < 0)
			perror("trace_marker");
}

static void copy_maps(const char *dir)
{
	char path[4096], buf[65536];
	if (!dir)
		return;
	snprintf(path, sizeof(path), "%s/maps.%d", dir, (int)getpid());
	int in = open("/proc/self/maps", O_RDONLY), out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ssize_t n;
	if (in < 0 || out < 0) {
		perror("maps");
		exit(2);
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, n) != n)
			exit(2);
	close(in);
	close(out);
}

/* Touch `pages` fresh heap pages; returns their start. A guard page on each side keeps
 * the mapping from merging with neighbours. */
static uintptr_t touch_heap(unsigned long pages)
{
	char *map = mmap(NULL, (pages + 2) * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	if (madvise(map, (pages + 2) * PAGE, MADV_NOHUGEPAGE) != 0) {
		perror("madvise");
		exit(2);
	}
	volatile char *first = map + PAGE;
	for (unsigned long i = 0; i < pages; i++)
		first[i * PAGE] = 1;
	return (uintptr_t)first;
}

/* Touch `pages` fresh stack pages below a STACK_GAP; returns their lowest address.
 * noinline so the alloca'd area is released on return. */
static __attribute__((noinline)) uintptr_t touch_stack(unsigned long pages)
{
	unsigned long size = STACK_GAP + (pages + 1) * PAGE;
	volatile char *area = alloca(size);
	uintptr_t top = ((uintptr_t)area + size) & ~(PAGE - 1);
	top -= STACK_GAP;
	/* highest page first: the stack VMA grows one page per fault */
	for (unsigned long i = 1; i <= pages; i++)
		((volatile char *)(top - i * PAGE))[0] = 1;
	return top - pages * PAGE;
}

static void getppid_calls(unsigned long count)
{
	for (unsigned long i = 0; i < count; i++)
		syscall(SYS_getppid);
}

int main(int argc, char **argv)
{
	const char *maps_dir = NULL;
	int opt;
	while ((opt = getopt(argc, argv, "m:d:")) != -1) {
		if (opt == 'm' && n_markers < MAX_MARKERS) {
			int fd = open(optarg, O_WRONLY);
			if (fd < 0) {
				perror(optarg);
				return 2;
			}
			marker_fds[n_markers++] = fd;
		} else if (opt == 'd') {
			maps_dir = optarg;
		} else {
			fprintf(stderr, "usage: %s [-m MARKER]... [-d MAPS_DIR] N M K P\n", argv[0]);
			return 2;
		}
	}
	if (argc - optind != 4) {
		fprintf(stderr, "usage: %s [-m MARKER]... [-d MAPS_DIR] N M K P\n", argv[0]);
		return 2;
	}
	unsigned long n = strtoul(argv[optind], NULL, 0), m = strtoul(argv[optind + 1], NULL, 0);
	unsigned long k = strtoul(argv[optind + 2], NULL, 0), p = strtoul(argv[optind + 3], NULL, 0);

	/* no transparent huge pages anywhere in this process tree */
	prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);

	marker("kmlwork: stack begin\n");
	uintptr_t stack_lo = touch_stack(n);
	marker("kmlwork: stack end\n");

	marker("kmlwork: heap begin\n");
	uintptr_t heap_lo = touch_heap(n);
	marker("kmlwork: heap end\n");

	marker("kmlwork: getppid begin\n");
	getppid_calls(m);
	marker("kmlwork: getppid end\n");

	marker("kmlwork: arch_prctl begin\n");
	long gs_ret = syscall(SYS_arch_prctl, ARCH_SET_GS, 0UL);
	marker("kmlwork: arch_prctl end\n");

	fflush(stdout);
	marker("kmlwork: fork\n");
	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		marker("kmlwork: child begin\n");
		getppid_calls(k);
		uintptr_t child_heap_lo = touch_heap(p);
		marker("kmlwork: child end\n");
		copy_maps(maps_dir);
		printf("child_pid %d\nchild_heap_lo 0x%lx\nchild_heap_hi 0x%lx\n", (int)getpid(),
		       (unsigned long)child_heap_lo, (unsigned long)(child_heap_lo + p * PAGE));
		fflush(stdout);
		_exit(0);
	}
	int status;
	waitpid(child, &status, 0);
	marker("kmlwork: wait end\n");
	copy_maps(maps_dir);
	char exe[4096] = "";
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (len > 0)
		exe[len] = 0;
	printf("pid %d\nchild_pid_seen %d\nchild_status %d\nexe %s\n", (int)getpid(), (int)child,
	       status, exe);
	printf("N %lu\nM %lu\nK %lu\nP %lu\n", n, m, k, p);
	printf("syscall_nr %d\narch_prctl_nr %d\narch_prctl_code 0x%x\narch_prctl_ret %ld\n",
	       SYS_getppid, SYS_arch_prctl, ARCH_SET_GS, gs_ret);
	printf("stack_lo 0x%lx\nstack_hi 0x%lx\nheap_lo 0x%lx\nheap_hi 0x%lx\n",
	       (unsigned long)stack_lo, (unsigned long)(stack_lo + n * PAGE),
	       (unsigned long)heap_lo, (unsigned long)(heap_lo + n * PAGE));
	return 0;
}
