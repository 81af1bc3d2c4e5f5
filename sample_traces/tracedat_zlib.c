/*
 * Copy a trace.dat as file version 7 with zlib compression, written by libtracecmd itself,
 * then read the copy back with libtracecmd and count its events.
 *
 * Why: Debian builds trace-cmd 3.1.6 and its libtracecmd with zstd only, so no tool here
 * writes the zlib trace.dat that a trace-cmd built with zlib writes. libtracecmd lets a
 * program register a compression protocol; this one registers "zlib" the way trace-cmd's
 * own zlib support does (name "zlib", version zlibVersion(), each block compressed on its
 * own by zlib's compress2 at Z_BEST_COMPRESSION and read by uncompress), then copies the
 * input as `trace-cmd convert --file-version 7 --compression zlib IN OUT` would. Everything
 * in the file but the compressed bytes (sections, chunk headers, options) is libtracecmd's.
 *
 * Prints "events=N" for the copy, read back through libtracecmd (every buffer).
 *
 * Build: gcc -O2 -Wall -o tracedat_zlib tracedat_zlib.c -ltracecmd -l:libtraceevent.so.1 -lz
 * Usage: tracedat_zlib IN.dat OUT.dat
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

struct tracecmd_input;
struct tracecmd_output;
struct tep_record;

/*
 * libtracecmd 1.3's compression protocol (trace-cmd-private.h is not installed; the layout
 * was read from Debian's libtracecmd.so.1.3.1: tracecmd_compress_proto_register copies
 * weight, name, version and the six hooks at these offsets). A hook returns the bytes it
 * wrote, or -1.
 */
struct compression_proto {
	int weight;
	const char *name;
	const char *version;
	int (*compress)(void *ctx, const void *in, int in_bytes, void *out, int out_bytes);
	int (*uncompress)(void *ctx, const void *in, int in_bytes, void *out, int out_bytes);
	unsigned int (*compress_size)(void *ctx, unsigned int bytes);
	bool (*is_supported)(const char *name, const char *version);
	void *(*new_context)(void);
	void (*free_context)(void *ctx);
};

int tracecmd_compress_init(void);
int tracecmd_compress_proto_register(struct compression_proto *proto);
struct tracecmd_input *tracecmd_open_head(const char *file, int flags);
struct tracecmd_input *tracecmd_open(const char *file, int flags);
void tracecmd_close(struct tracecmd_input *handle);
struct tracecmd_output *tracecmd_copy(struct tracecmd_input *ihandle, const char *file,
				      int state, int file_version, const char *compression);
void tracecmd_output_close(struct tracecmd_output *handle);
int tracecmd_buffer_instances(struct tracecmd_input *handle);
struct tracecmd_input *tracecmd_buffer_instance_handle(struct tracecmd_input *handle, int indx);
int tracecmd_iterate_events_multi(struct tracecmd_input **handles, int nr_handles,
				  int (*callback)(struct tracecmd_input *handle,
						  struct tep_record *, int, void *),
				  void *callback_data);

/* enum tracecmd_file_states: the whole file, trace data included */
#define FILE_CPU_FLYRECORD 11

static int zlib_block_compress(void *ctx, const void *in, int in_bytes, void *out,
			       int out_bytes)
{
	uLongf written = out_bytes;

	if (compress2(out, &written, in, in_bytes, Z_BEST_COMPRESSION) != Z_OK)
		return -1;
	return (int)written;
}

static int zlib_block_uncompress(void *ctx, const void *in, int in_bytes, void *out,
				 int out_bytes)
{
	uLongf written = out_bytes;

	if (uncompress(out, &written, in, in_bytes) != Z_OK) {
		errno = EINVAL;
		return -1;
	}
	return (int)written;
}

static unsigned int zlib_block_bound(void *ctx, unsigned int bytes)
{
	return compressBound(bytes);
}

static bool zlib_supported(const char *name, const char *version)
{
	/* a file written by a zlib of the same or an older major version */
	return name && strcmp(name, "zlib") == 0 &&
	       (!version || atoi(version) <= atoi(zlibVersion()));
}

static int no_context;

static void *zlib_context(void)
{
	return &no_context;      /* zlib's one-shot calls need none */
}

static void zlib_context_free(void *ctx)
{
}

static int count_record(struct tracecmd_input *handle, struct tep_record *record, int cpu,
			void *data)
{
	++*(unsigned long long *)data;
	return 0;
}

static unsigned long long count_events(const char *file)
{
	struct tracecmd_input *handles[64];
	unsigned long long events = 0;
	int n = 0, i;

	handles[n] = tracecmd_open(file, 0);
	if (!handles[n])
		return 0;
	n++;
	for (i = 0; i < tracecmd_buffer_instances(handles[0]) && n < 64; i++) {
		struct tracecmd_input *inst = tracecmd_buffer_instance_handle(handles[0], i);

		if (inst)
			handles[n++] = inst;
	}
	tracecmd_iterate_events_multi(handles, n, count_record, &events);
	for (i = n - 1; i >= 0; i--)
		tracecmd_close(handles[i]);
	return events;
}

int main(int argc, char **argv)
{
	struct compression_proto proto = {
		.weight = 10,
		.name = "zlib",
		.version = zlibVersion(),
		.compress = zlib_block_compress,
		.uncompress = zlib_block_uncompress,
		.compress_size = zlib_block_bound,
		.is_supported = zlib_supported,
		.new_context = zlib_context,
		.free_context = zlib_context_free,
	};
	struct tracecmd_input *in;
	struct tracecmd_output *out;

	if (argc != 3) {
		fprintf(stderr, "usage: %s IN.dat OUT.dat\n", argv[0]);
		return 2;
	}
	tracecmd_compress_init();
	if (tracecmd_compress_proto_register(&proto) < 0) {
		fprintf(stderr, "libtracecmd refused the zlib protocol (one is built in?)\n");
		return 1;
	}
	in = tracecmd_open_head(argv[1], 0);
	if (!in) {
		fprintf(stderr, "%s: libtracecmd cannot open it\n", argv[1]);
		return 1;
	}
	out = tracecmd_copy(in, argv[2], FILE_CPU_FLYRECORD, 7, "zlib");
	if (!out) {
		fprintf(stderr, "%s: libtracecmd could not write the copy\n", argv[2]);
		tracecmd_close(in);
		return 1;
	}
	tracecmd_output_close(out);
	tracecmd_close(in);
	printf("events=%llu\n", count_events(argv[2]));
	return 0;
}
