/*
 * The C reference of bench/bench_binary.py: iterate every event of a trace.dat with
 * libtracecmd (Debian's libtracecmd1; the -dev package ships trace-cmd.h but not the
 * libtraceevent/libtracefs headers it includes, so the few calls used are declared here).
 *
 * All buffers (top and instances) are iterated together, merged by time. For each
 * record it reads what the kmltrace table's core columns need: timestamp, CPU,
 * event type and common_pid. Prints "events=N checksum=X seconds=S".
 *
 * Build: gcc -O2 -o tracecmd_ref tracecmd_ref.c -ltracecmd -l:libtraceevent.so.1
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

struct tracecmd_input;
struct tep_handle;

/* the leading members of libtraceevent's struct tep_record (event-parse.h, 1.x) */
struct tep_record {
	unsigned long long ts;
	unsigned long long offset;
	long long missed_events;
	int record_size;
	int size;
	void *data;
	int cpu;
};

struct tracecmd_input *tracecmd_open(const char *file, int flags);
void tracecmd_close(struct tracecmd_input *handle);
struct tep_handle *tracecmd_get_tep(struct tracecmd_input *handle);
int tracecmd_iterate_events(struct tracecmd_input *handle, cpu_set_t *cpus, int cpu_size,
			    int (*callback)(struct tracecmd_input *handle, struct tep_record *,
					    int, void *),
			    void *callback_data);
int tracecmd_iterate_events_multi(struct tracecmd_input **handles, int nr_handles,
				  int (*callback)(struct tracecmd_input *handle,
						  struct tep_record *, int, void *),
				  void *callback_data);
int tracecmd_buffer_instances(struct tracecmd_input *handle);
struct tracecmd_input *tracecmd_buffer_instance_handle(struct tracecmd_input *handle, int indx);
int tep_data_type(struct tep_handle *tep, struct tep_record *rec);
int tep_data_pid(struct tep_handle *tep, struct tep_record *rec);

struct totals {
	struct tep_handle *tep;
	unsigned long long events;
	unsigned long long checksum;
};

static int on_record(struct tracecmd_input *handle, struct tep_record *record, int cpu,
		     void *data)
{
	struct totals *t = data;
	int type = tep_data_type(t->tep, record);
	int pid = tep_data_pid(t->tep, record);

	t->events++;
	t->checksum += record->ts ^ ((unsigned long long)type << 32) ^ (unsigned)pid ^ cpu;
	return 0;
}

int main(int argc, char **argv)
{
	struct timespec a, b;
	struct tracecmd_input *handle, *handles[64];
	struct totals t = { 0 };
	int n = 0, i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s trace.dat\n", argv[0]);
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &a);
	handle = tracecmd_open(argv[1], 0);
	if (!handle) {
		fprintf(stderr, "%s: cannot open\n", argv[1]);
		return 1;
	}
	t.tep = tracecmd_get_tep(handle);
	/* the top buffer and every instance buffer, merged by time like trace-cmd report */
	handles[n++] = handle;
	for (i = 0; i < tracecmd_buffer_instances(handle) && n < 64; i++) {
		struct tracecmd_input *inst = tracecmd_buffer_instance_handle(handle, i);

		if (inst)
			handles[n++] = inst;
	}
	tracecmd_iterate_events_multi(handles, n, on_record, &t);
	for (i = n - 1; i >= 0; i--)
		tracecmd_close(handles[i]);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("events=%llu checksum=%llx seconds=%.6f\n", t.events, t.checksum,
	       (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
