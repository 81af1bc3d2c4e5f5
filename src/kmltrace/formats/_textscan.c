/* Text trace lines -> columns, in one pass: the accelerator of formats/text_pipeline.py.
 *
 * It takes only what it is sure of: a line of printable ASCII whose header follows the
 * grammar exactly (tracefs / trace-cmd report / perf script), and, for the hot tracepoints,
 * field text in its canonical form. Every other line is "deferred": handed back as text to
 * the polars pipeline, which stays the reference (tests compare both on every sample). The line
 * before a deferred one is deferred too, so a stack trace or callchain line always reaches the
 * pipeline with the event line it belongs to.
 *
 * Results cross to Python through the Arrow C data interface (one struct array; polars imports
 * it with pl.Series), so no Python object is made per line.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arrow_c.h"

/* ---- growable buffers and column builders */

typedef struct {
    char *data;
    int64_t len, cap;
} Buf;

/* Buffers are mapped, not malloc'ed, and freed ones wait in a small cache for the next piece:
 * glibc would keep every freed buffer resident (its mmap threshold rises as big blocks are
 * freed), so each piece of a big trace would add to the peak memory; unmapping at once would
 * make every piece fault in (and zero) fresh pages instead. A header before the data holds
 * the mapped size. Arrow release callbacks may run on any thread: the cache has a lock. */
#define BLOCK_HEADER 64
#define CACHE_BLOCKS 64
/* 48 MB: ingest of the 205 MB bench text peaked at 1.30x the text (96 MB: 1.43-1.50x, 32 MB:
 * 1.21-1.24x but more page faults). With the one-pass ingest: 48 MB 1.16-1.20x, 137-146 k page
 * faults; 96 MB 1.27-1.31x, 107-125 k; 160 MB 1.45-1.53x, 88-95 k, 0.1-0.2 s faster. A cached
 * block serves the smallest request it fits, so the big ones stay for the big requests. */
#define CACHE_BYTES ((size_t)48 << 20)
#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static char *cache[CACHE_BLOCKS];
static int cache_count;
static size_t cache_bytes;

static char *cached_block(size_t total) {
    char *m = NULL;
    int best = -1;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < cache_count; i++)      /* the smallest that fits */
        if (*(size_t *)cache[i] >= total
            && (best < 0 || *(size_t *)cache[i] < *(size_t *)cache[best]))
            best = i;
    if (best >= 0) {
        m = cache[best];
        cache[best] = cache[--cache_count];
        cache_bytes -= *(size_t *)m;
    }
    pthread_mutex_unlock(&cache_lock);
    return m;
}

static void *block_grow(void *p, int64_t size) {
    size_t total = (size_t)size + BLOCK_HEADER;
    char *m;
    if (p) {
        char *old = (char *)p - BLOCK_HEADER;
        if (*(size_t *)old >= total) return p;
        m = mremap(old, *(size_t *)old, total, MREMAP_MAYMOVE);
    } else {
        if ((m = cached_block(total))) return m + BLOCK_HEADER;
        m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (m == MAP_FAILED) return NULL;
    *(size_t *)m = total;
    return m + BLOCK_HEADER;
}

static void block_free(void *p) {
    if (!p) return;
    char *m = (char *)p - BLOCK_HEADER;
    size_t size = *(size_t *)m;
    pthread_mutex_lock(&cache_lock);
    if (cache_count < CACHE_BLOCKS && cache_bytes + size <= CACHE_BYTES) {
        cache[cache_count++] = m;
        cache_bytes += size;
        m = NULL;
    }
    pthread_mutex_unlock(&cache_lock);
    if (m) munmap(m, size);
}
#else
static void *block_grow(void *p, int64_t size) {
    char *m = realloc(p ? (char *)p - BLOCK_HEADER : NULL, (size_t)size + BLOCK_HEADER);
    return m ? m + BLOCK_HEADER : NULL;
}

static void block_free(void *p) {
    if (p) free((char *)p - BLOCK_HEADER);
}
#endif

/* a zero-filled block (a cached one holds old data) */
static void *block_zeros(int64_t size) {
    char *p = block_grow(NULL, size);
    if (p) memset(p, 0, (size_t)size);
    return p;
}

static int buf_reserve(Buf *b, int64_t more) {
    if (b->len + more <= b->cap) return 0;
    int64_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + more) cap *= 2;
    char *data = block_grow(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, int64_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

enum Kind { K_I32, K_I64, K_U64, K_BOOL, K_UTF8, K_LIST_U64 };

typedef struct {
    const char *name;
    enum Kind kind;
    Buf values;     /* fixed-width values; bool: one byte each, packed at export */
    Buf validity;   /* one byte per row (1: valid), packed at export */
    Buf offsets;    /* utf8: int64 offsets; list: int32 offsets */
    Buf bytes;      /* utf8: the text; list: the uint64 items */
    int64_t length, nulls;
} Column;

/* Room for `rows` rows in all and `text` more bytes of text: every store after it is
 * unchecked (a scan reserves its data's size for text once, and grows the rows on demand).
 * Big reservations cost only address space until a page is written. */
static int col_reserve(Column *c, int64_t rows, int64_t text) {
    int width = c->kind == K_I32 ? 4 : (c->kind == K_BOOL ? 1 : 8);
    if (c->kind != K_UTF8 && c->kind != K_LIST_U64 && buf_reserve(&c->values, rows * width))
        return -1;   /* values.len and validity.len stay 0: rows are stored by index */
    if (buf_reserve(&c->validity, rows)) return -1;
    if (c->kind == K_UTF8) {    /* `offsets` holds the 16-byte string views */
        if (buf_reserve(&c->offsets, rows * 16 - c->offsets.len)
            || buf_reserve(&c->bytes, text)) return -1;
    }
    if (c->kind == K_LIST_U64) {
        if (buf_reserve(&c->offsets, (rows + 1) * 4 - c->offsets.len)) return -1;
        if (c->offsets.len == 0) { *(int32_t *)c->offsets.data = 0; c->offsets.len = 4; }
    }
    return 0;
}

static inline void col_valid(Column *c, int valid) {
    c->validity.data[c->length++] = (char)valid;
    c->nulls += !valid;
}

static inline void col_i64(Column *c, int64_t x, int valid) {
    if (!valid) x = 0;
    if (c->kind == K_I32) ((int32_t *)c->values.data)[c->length] = (int32_t)x;
    else if (c->kind == K_BOOL) c->values.data[c->length] = (char)(x != 0);
    else ((int64_t *)c->values.data)[c->length] = x;
    col_valid(c, valid);
}

/* A string as an Arrow string view (polars' own layout, so it imports without a copy): its
 * length, then up to 12 bytes inline, or its first 4 bytes, buffer 0 and its offset there. */
static inline void col_text(Column *c, const char *s, int64_t n, int valid) {
    char *view = c->offsets.data + c->length * 16;
    memset(view, 0, 16);
    if (valid) {
        int32_t len = (int32_t)n;
        memcpy(view, &len, 4);
        if (n <= 12) {
            memcpy(view + 4, s, (size_t)n);
        } else {
            int32_t at = (int32_t)c->bytes.len;
            memcpy(view + 4, s, 4);
            memcpy(view + 12, &at, 4);        /* buffer index 0 at view + 8 */
            memcpy(c->bytes.data + c->bytes.len, s, (size_t)n);
            c->bytes.len += n;
        }
    }
    c->offsets.len += 16;
    col_valid(c, valid);
}

/* The one store that may outgrow its reservation (a list of more than 6 items). */
static int col_list(Column *c, const uint64_t *items, int64_t n, int valid) {
    if (valid && buf_put(&c->bytes, items, n * 8)) return -1;
    ((int32_t *)c->offsets.data)[c->length + 1] = (int32_t)(c->bytes.len / 8);
    c->offsets.len += 4;
    col_valid(c, valid);
    return 0;
}

static void col_free(Column *c) {
    block_free(c->values.data);
    block_free(c->validity.data);
    block_free(c->offsets.data);
    block_free(c->bytes.data);
    memset(&c->values, 0, sizeof(Buf) * 4);
}

/* ---- export: one struct array whose children are the columns */

typedef struct {
    void *owned[4];
} Owned;

static void release_array(struct ArrowArray *a) {
    if (!a || !a->release) return;
    for (int64_t i = 0; i < a->n_children; i++) {
        struct ArrowArray *child = a->children[i];
        if (child && child->release) child->release(child);
        free(child);
    }
    free(a->children);
    Owned *owned = a->private_data;
    if (owned) {
        for (int i = 0; i < 4; i++) block_free(owned->owned[i]);
        free(owned);
    }
    free(a->buffers);
    a->release = NULL;
}

static void release_schema(struct ArrowSchema *s) {
    if (!s || !s->release) return;
    for (int64_t i = 0; i < s->n_children; i++) {
        struct ArrowSchema *child = s->children[i];
        if (child && child->release) child->release(child);
        free(child);
    }
    free(s->children);
    s->release = NULL;
}

static char *packed_bits(const Buf *bytes, int64_t n) {
    char *bits = block_zeros((n + 7) / 8 + 1);
    if (!bits) return NULL;
    for (int64_t i = 0; i < n; i++)
        if (bytes->data[i]) bits[i >> 3] |= (char)(1 << (i & 7));
    return bits;
}

static const char *format_of(enum Kind kind) {
    switch (kind) {
    case K_I32: return "i";
    case K_I64: return "l";
    case K_U64: return "L";
    case K_BOOL: return "b";
    case K_UTF8: return "vu";
    case K_LIST_U64: return "+l";
    }
    return "n";
}

static struct ArrowSchema *leaf_schema(const char *format, const char *name) {
    struct ArrowSchema *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->format = format;
    s->name = name;
    s->flags = ARROW_FLAG_NULLABLE;
    s->release = release_schema;
    return s;
}

/* Moves the column's buffers into an ArrowArray (the column is left empty). */
static int export_column(Column *c, struct ArrowSchema **schema_out,
                         struct ArrowArray **array_out) {
    struct ArrowSchema *s = leaf_schema(format_of(c->kind), c->name);
    struct ArrowArray *a = calloc(1, sizeof *a);
    Owned *owned = calloc(1, sizeof *owned);
    if (!s || !a || !owned) goto fail;
    int64_t n = c->length;
    if (c->offsets.len == 0 && c->kind == K_LIST_U64) {   /* no rows: one zero offset */
        int32_t z = 0;
        if (buf_put(&c->offsets, &z, 4)) goto fail;
    }
    if (c->kind == K_UTF8 && c->bytes.len > INT32_MAX) goto fail;   /* view offsets are 32-bit */
    char *validity = c->nulls ? packed_bits(&c->validity, n) : NULL;
    if (c->nulls && !validity) goto fail;
    owned->owned[0] = validity;
    a->length = n;
    a->null_count = c->nulls;
    a->private_data = owned;
    a->release = release_array;
    if (c->kind == K_UTF8) {
        /* validity, views, one data buffer, then the data buffers' sizes */
        a->n_buffers = 4;
        a->buffers = calloc(4, sizeof(void *));
        int64_t *sizes = block_zeros(8);
        if (!a->buffers || !sizes) { block_free(sizes); goto fail; }
        if (buf_reserve(&c->bytes, 1) || buf_reserve(&c->offsets, 16)) {
            block_free(sizes);
            goto fail;
        }
        sizes[0] = c->bytes.len;
        a->buffers[0] = validity;
        a->buffers[1] = owned->owned[1] = c->offsets.data;
        a->buffers[2] = owned->owned[2] = c->bytes.data;
        a->buffers[3] = owned->owned[3] = sizes;
        c->offsets.data = c->bytes.data = NULL;
    } else if (c->kind == K_LIST_U64) {
        a->n_buffers = 2;
        a->buffers = calloc(2, sizeof(void *));
        a->children = calloc(1, sizeof(void *));
        s->children = calloc(1, sizeof(void *));
        if (!a->buffers || !a->children || !s->children) goto fail;
        if (buf_reserve(&c->bytes, 8)) goto fail;
        a->buffers[0] = validity;
        a->buffers[1] = owned->owned[1] = c->offsets.data;
        c->offsets.data = NULL;
        struct ArrowArray *items = calloc(1, sizeof *items);
        Owned *item_owned = calloc(1, sizeof *item_owned);
        struct ArrowSchema *item_schema = leaf_schema("L", "item");
        if (!items || !item_owned || !item_schema) {
            free(items); free(item_owned); free(item_schema);
            goto fail;
        }
        items->length = c->bytes.len / 8;
        items->n_buffers = 2;
        items->buffers = calloc(2, sizeof(void *));
        items->private_data = item_owned;
        items->release = release_array;
        if (!items->buffers) { free(items); free(item_owned); free(item_schema); goto fail; }
        items->buffers[1] = item_owned->owned[1] = c->bytes.data;
        c->bytes.data = NULL;
        a->n_children = 1;
        a->children[0] = items;
        s->n_children = 1;
        s->children[0] = item_schema;
    } else {
        a->n_buffers = 2;
        a->buffers = calloc(2, sizeof(void *));
        if (!a->buffers) goto fail;
        if (c->kind == K_BOOL) {
            char *bits = packed_bits(&c->values, n);
            if (!bits) goto fail;
            a->buffers[1] = owned->owned[1] = bits;
        } else {
            if (buf_reserve(&c->values, 8)) goto fail;
            a->buffers[1] = owned->owned[1] = c->values.data;
            c->values.data = NULL;
        }
        a->buffers[0] = validity;
    }
    *schema_out = s;
    *array_out = a;
    return 0;
fail:
    if (a && a->release) a->release(a);
    else free(owned);
    free(a);
    if (s && s->release) s->release(s);
    free(s);
    return -1;
}

static void capsule_schema_free(PyObject *capsule) {
    struct ArrowSchema *s = PyCapsule_GetPointer(capsule, "arrow_schema");
    if (s && s->release) s->release(s);
    free(s);
}

static void capsule_array_free(PyObject *capsule) {
    struct ArrowArray *a = PyCapsule_GetPointer(capsule, "arrow_array");
    if (a && a->release) a->release(a);
    free(a);
}

/* (schema capsule, array capsule) of a struct array of `cols`. */
static PyObject *export_struct(Column *cols, int ncols, int64_t rows) {
    struct ArrowSchema *s = leaf_schema("+s", "");
    struct ArrowArray *a = calloc(1, sizeof *a);
    if (!s || !a) { free(s); free(a); return PyErr_NoMemory(); }
    s->flags = 0;
    s->children = calloc((size_t)ncols, sizeof(void *));
    a->children = calloc((size_t)ncols, sizeof(void *));
    a->buffers = calloc(1, sizeof(void *));
    a->release = release_array;
    a->length = rows;
    a->n_buffers = 1;
    if (!s->children || !a->children || !a->buffers) goto fail;
    for (int i = 0; i < ncols; i++) {
        if (export_column(&cols[i], &s->children[i], &a->children[i])) goto fail;
        s->n_children = a->n_children = i + 1;
    }
    PyObject *schema = PyCapsule_New(s, "arrow_schema", capsule_schema_free);
    if (!schema) goto fail;
    PyObject *array = PyCapsule_New(a, "arrow_array", capsule_array_free);
    if (!array) { Py_DECREF(schema); a->release(a); free(a); return NULL; }
    return Py_BuildValue("(NN)", schema, array);
fail:
    a->release(a);
    free(a);
    s->release(s);
    free(s);
    return PyErr_NoMemory();
}

/* ---- reading pieces of a line */

typedef struct {
    const char *p;
    int64_t n;
} Span;

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_word(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'
        || c == '.' || c == '-';
}
static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Digits [p, p+n) as a number; 0 when there are none or too many for `max_digits`. */
static int read_uint(const char *p, int64_t n, int max_digits, int64_t *out) {
    if (n <= 0 || n > max_digits) return 0;
    int64_t x = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!is_digit(p[i])) return 0;
        x = x * 10 + (p[i] - '0');
    }
    *out = x;
    return 1;
}

/* An optional '-' then digits, as polars' cast to Int64 reads it (at most 18 digits here). */
static int read_int(const char *p, int64_t n, int64_t *out) {
    int neg = n > 0 && p[0] == '-';
    int64_t x;
    if (!read_uint(p + neg, n - neg, 18, &x)) return 0;
    *out = neg ? -x : x;
    return 1;
}

static int read_hex(const char *p, int64_t n, uint64_t *out) {
    if (n <= 0 || n > 16) return 0;
    uint64_t x = 0;
    for (int64_t i = 0; i < n; i++) {
        int v = hex_value(p[i]);
        if (v < 0) return 0;
        x = (x << 4) | (uint64_t)v;
    }
    *out = x;
    return 1;
}

static const char *find2(const char *p, const char *end, char a, char b) {
    for (; p + 1 < end; p++)
        if (p[0] == a && p[1] == b) return p;
    return NULL;
}

static int starts(const char *p, const char *end, const char *lit) {
    size_t n = strlen(lit);
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}

/* ---- the fast field decoders (each mirrors one entry of formats/fields.py) */

enum Decoder { D_NONE, D_NR_ARGS, D_NR_RET, D_FAULT, D_VECTOR, D_FUNCTION };

enum FieldCol {
    F_ID, F_ARGS, F_RET, F_ADDRESS, F_ADDRESS_SYM, F_IP, F_IP_SYM, F_ERROR_CODE, F_VECTOR,
    F_PARENT_IP, F_PARENT_IP_SYM, F_COUNT
};

typedef struct {
    int64_t id, ret, vector;
    uint64_t address, ip, error_code, parent_ip, args[64];
    int64_t nargs;
    Span address_sym, ip_sym, parent_ip_sym;
    int have[F_COUNT];
} Fields;

/* "NR 33 (a, 1, 0)": fields.py's r"NR (?P<id>-?\d+) \((?P<args>[^)]*)\)" as "hexlist" */
static int decode_nr_args(const char *p, const char *end, Fields *f) {
    if (!starts(p, end, "NR ")) return 0;
    p += 3;
    const char *q = p;
    if (q < end && *q == '-') q++;
    while (q < end && is_digit(*q)) q++;
    if (!read_int(p, q - p, &f->id) || !starts(q, end, " (")) return 0;
    p = q + 2;
    const char *close = memchr(p, ')', (size_t)(end - p));
    if (!close) return 0;
    f->nargs = 0;
    while (1) {      /* items split at ", ": each must be bare hex */
        const char *item = p;
        while (p < close && *p != ',') p++;
        if (f->nargs >= 64 || !read_hex(item, p - item, &f->args[f->nargs])) return 0;
        f->nargs++;
        if (p == close) break;
        if (!starts(p, close, ", ")) return 0;
        p += 2;
    }
    f->have[F_ID] = f->have[F_ARGS] = 1;
    return 1;
}

/* "NR 33 = 1": r"NR (?P<id>-?\d+) = (?P<ret>-?\d+)" */
static int decode_nr_ret(const char *p, const char *end, Fields *f) {
    if (!starts(p, end, "NR ")) return 0;
    p += 3;
    const char *q = p;
    if (q < end && *q == '-') q++;
    while (q < end && is_digit(*q)) q++;
    if (!read_int(p, q - p, &f->id) || !starts(q, end, " = ")) return 0;
    p = q + 3;
    q = p;
    if (q < end && *q == '-') q++;
    while (q < end && is_digit(*q)) q++;
    if (!read_int(p, q - p, &f->ret)) return 0;
    f->have[F_ID] = f->have[F_RET] = 1;
    return 1;
}

/* a %ps value: "0x..." -> the number, else the symbol text */
static int decode_ps(const char *p, int64_t n, uint64_t *value, Span *sym, int *have_value,
                     int *have_sym) {
    if (n <= 0) return 0;
    if (n > 2 && p[0] == '0' && p[1] == 'x') {
        int hex = 1;
        for (int64_t i = 2; i < n; i++) hex &= hex_value(p[i]) >= 0;
        if (hex) {
            if (!read_hex(p + 2, n - 2, value)) return 0;   /* > 64 bits: leave it to polars */
            *have_value = 1;
            return 1;
        }
    }
    sym->p = p;
    sym->n = n;
    *have_sym = 1;
    return 1;
}

static const char *token_end(const char *p, const char *end) {
    while (p < end && *p != ' ') p++;
    return p;
}

/* "address=0x7ffd1000 ip=0x401136 error_code=0x6" (the whole field text):
 * r"address=(?P<address>\S+) ip=(?P<ip>\S+) error_code=(?P<error_code>\S+)" */
static int decode_fault(const char *p, const char *end, Fields *f) {
    if (!starts(p, end, "address=")) return 0;
    p += 8;
    const char *a_end = token_end(p, end);
    if (!decode_ps(p, a_end - p, &f->address, &f->address_sym, &f->have[F_ADDRESS],
                   &f->have[F_ADDRESS_SYM])) return 0;
    if (!starts(a_end, end, " ip=")) return 0;
    p = a_end + 4;
    const char *i_end = token_end(p, end);
    if (!decode_ps(p, i_end - p, &f->ip, &f->ip_sym, &f->have[F_IP], &f->have[F_IP_SYM]))
        return 0;
    if (!starts(i_end, end, " error_code=")) return 0;
    p = i_end + 12;
    const char *e_end = token_end(p, end);
    if (e_end != end) return 0;
    if (e_end - p > 2 && p[0] == '0' && p[1] == 'x') p += 2;
    if (!read_hex(p, e_end - p, &f->error_code)) return 0;
    f->have[F_ERROR_CODE] = 1;
    return 1;
}

/* "vector=236" (the whole field text): r"vector=(?P<vector>\d+)" */
static int decode_vector(const char *p, const char *end, Fields *f) {
    if (!starts(p, end, "vector=")) return 0;
    if (!read_uint(p + 7, end - p - 7, 9, &f->vector)) return 0;
    f->have[F_VECTOR] = 1;
    return 1;
}

/* "do_user_addr_fault <-exc_page_fault" (a line already known to be of that form):
 * r"^(?P<ip>\S+) <-(?P<parent_ip>\S+)$", both %ps */
static int decode_function(const char *p, const char *end, Fields *f) {
    const char *blank = token_end(p, end);
    if (blank >= end || !starts(blank, end, " <-")) return 0;
    return decode_ps(p, blank - p, &f->ip, &f->ip_sym, &f->have[F_IP], &f->have[F_IP_SYM])
        && decode_ps(blank + 3, end - blank - 3, &f->parent_ip, &f->parent_ip_sym,
                     &f->have[F_PARENT_IP], &f->have[F_PARENT_IP_SYM])
        && token_end(blank + 3, end) == end;
}

static int decode_fields(int decoder, const char *p, const char *end, Fields *f) {
    memset(f->have, 0, sizeof f->have);
    switch (decoder) {
    case D_NR_ARGS: return decode_nr_args(p, end, f);
    case D_NR_RET: return decode_nr_ret(p, end, f);
    case D_FAULT: return decode_fault(p, end, f);
    case D_VECTOR: return decode_vector(p, end, f);
    case D_FUNCTION: return decode_function(p, end, f);
    }
    return 0;
}

/* ---- one line's header */

enum Grammar { G_TRACEFS, G_TRACECMD, G_PERF };

typedef struct {
    Span comm, flags, event, raw, system;
    int64_t pid, tgid, cpu, ts_ns, frac_digits;
    int has_tgid, has_flags;
} Header;

static const char *skip_spaces(const char *p, const char *end) {
    while (p < end && *p == ' ') p++;
    return p;
}

/* The first " [digits] " of [p, end): the position of its leading space. */
static const char *cpu_column(const char *p, const char *end) {
    for (const char *q = p; q + 3 < end; q++) {
        if (q[0] != ' ' || q[1] != '[' || !is_digit(q[2])) continue;
        const char *r = q + 2;
        while (r < end && is_digit(*r)) r++;
        if (r + 1 < end && r[0] == ']' && r[1] == ' ') return q;
    }
    return NULL;
}

/* "[001] d....   323.272707" (tracefs) or "[000]   352.738789" (perf: `need_frac`). */
static int read_stamp(const char *p, const char *end, int allow_flags, int need_frac, Header *h) {
    if (p >= end || *p != '[') return 0;
    const char *q = ++p;
    while (q < end && is_digit(*q)) q++;
    if (!read_uint(p, q - p, 9, &h->cpu) || q >= end || *q != ']') return 0;
    p = q + 1;
    const char *rest = skip_spaces(p, end);
    if (rest == p || rest >= end) return 0;
    const char *tok_end = token_end(rest, end);
    h->has_flags = 0;
    const char *time = rest;
    if (tok_end < end) {
        if (!allow_flags) return 0;
        int64_t n = tok_end - rest;
        if (n < 3 || n > 6 || memchr(rest, ':', (size_t)n)) return 0;
        h->flags.p = rest;
        h->flags.n = n;
        h->has_flags = 1;
        time = skip_spaces(tok_end, end);
        if (token_end(time, end) != end) return 0;
    }
    const char *dot = memchr(time, '.', (size_t)(end - time));
    int64_t sec;
    if (!read_uint(time, (dot ? dot : end) - time, 15, &sec)) return 0;
    int64_t frac_ns = 0;
    h->frac_digits = -1;
    if (dot) {
        int64_t n = end - dot - 1;
        if (n <= 0) return 0;
        for (int64_t i = 0; i < n; i++) {
            if (!is_digit(dot[1 + i])) return 0;
            if (i < 9) frac_ns = frac_ns * 10 + (dot[1 + i] - '0');
        }
        for (int64_t i = n; i < 9; i++) frac_ns *= 10;
        h->frac_digits = n;
        h->ts_ns = sec * 1000000000 + frac_ns;
    } else {
        if (need_frac) return 0;
        h->ts_ns = sec;     /* a counter clock */
    }
    return 1;
}

static const char FUNCTION_EVENT[] = "function";

/* tracefs / trace-cmd: "comm-pid [(tgid)] [cpu] [flags] sec.frac: event: fields" */
static int read_tracefs(const char *p, const char *end, int strip_padding, Header *h) {
    if (p < end && *p == '#') return 0;
    const char *col = cpu_column(p, end);
    if (!col) return 0;
    /* "comm-pid" or "comm-pid (tgid)", read from the right */
    const char *e = col;
    while (e > p && e[-1] == ' ') e--;
    h->has_tgid = 0;
    if (e > p && e[-1] == ')') {
        const char *open = e - 1;
        while (open > p && *open != '(') open--;
        if (*open != '(') return 0;
        const char *v = skip_spaces(open + 1, e - 1);
        int64_t n = (e - 1) - v;
        if (n <= 0) return 0;
        if (is_digit(*v)) {
            if (!read_uint(v, n, 9, &h->tgid)) return 0;
            h->has_tgid = 1;
        } else {
            for (int64_t i = 0; i < n; i++) if (v[i] != '-') return 0;
        }
        e = open;
        while (e > p && e[-1] == ' ') e--;
    }
    const char *d = e;
    while (d > p && is_digit(d[-1])) d--;
    if (d == e || d == p || d[-1] != '-' || !read_uint(d, e - d, 9, &h->pid)) return 0;
    const char *comm = skip_spaces(p, d - 1);
    for (const char *c = comm; c < d - 1; c++)
        if (*c == '[' || *c == ']' || *c == '(' || *c == ')') return 0;   /* leave to polars */
    h->comm.p = comm;
    h->comm.n = (d - 1) - comm;
    const char *tail = col + 1;
    const char *colon = find2(tail, end, ':', ' ');
    if (!colon || !read_stamp(tail, colon, 1, 0, h)) return 0;
    const char *body = colon + 2;
    const char *split = find2(body, end, ':', ' ');
    if (!split) {
        /* the function tracer's "func <-parent" (ftrace_text.FUNCTION_RE: r"^\S+ <-\S+$") */
        const char *blank = memchr(body, ' ', (size_t)(end - body));
        if (!blank || blank == body || !starts(blank, end, " <-") || end - blank <= 3
            || memchr(blank + 1, ' ', (size_t)(end - blank - 1)))
            return 0;
        h->event.p = FUNCTION_EVENT;
        h->event.n = sizeof FUNCTION_EVENT - 1;
        h->raw.p = body;
        h->raw.n = end - body;
        return 1;
    }
    h->event.p = body;
    h->event.n = split - body;
    const char *raw = split + 2;
    if (strip_padding) raw = skip_spaces(raw, end);
    h->raw.p = raw;
    h->raw.n = end - raw;
    return 1;
}

/* More than one " [digits]" in the line: perf's split takes the exact regex then. */
static int several_cpu_columns(const char *p, const char *end) {
    const char *first = cpu_column(p, end);
    if (!first) return 0;
    for (const char *q = first + 2; q + 2 < end; q++)
        if (q[0] == ' ' && q[1] == '[' && is_digit(q[2])) return 1;
    return 0;
}

/* perf script: "comm tid[/pid]? [cpu] sec.frac: system:event: fields" */
static int read_perf(const char *p, const char *end, Header *h) {
    const char *col = cpu_column(p, end);
    if (!col || several_cpu_columns(p, end)) return 0;
    const char *s = skip_spaces(p, col);
    const char *e = col;
    while (e > s && e[-1] == ' ') e--;
    const char *ids = e;
    while (ids > s && ids[-1] != ' ') ids--;
    if (ids == s) return 0;   /* no blank: no comm */
    const char *comm_end = ids;
    while (comm_end > s && comm_end[-1] == ' ') comm_end--;
    if (comm_end == s) return 0;
    const char *slash = memchr(ids, '/', (size_t)(e - ids));
    int64_t first, tid;
    if (slash) {
        if (!read_uint(ids, slash - ids, 9, &first) || !read_uint(slash + 1, e - slash - 1, 9, &tid))
            return 0;
        h->pid = tid;
        h->tgid = first;
        h->has_tgid = 1;
    } else {
        if (!read_uint(ids, e - ids, 9, &first)) return 0;
        h->pid = first;
        h->has_tgid = 0;
    }
    h->comm.p = s;
    h->comm.n = comm_end - s;
    const char *tail = col + 1;
    const char *colon = find2(tail, end, ':', ' ');
    if (!colon || !read_stamp(tail, colon, 0, 1, h)) return 0;
    h->has_flags = 0;
    const char *body = skip_spaces(colon + 2, end);
    /* "system:event:" then a blank or the end (a leading period number: leave to polars) */
    const char *q = body;
    while (q < end && is_word(*q)) q++;
    if (q == body || is_digit(*body) || q >= end || *q != ':') return 0;
    h->system.p = body;
    h->system.n = q - body;
    const char *ev = ++q;
    while (q < end && is_word(*q)) q++;
    if (q == ev || q >= end || *q != ':') return 0;
    h->event.p = ev;
    h->event.n = q - ev;
    q++;
    if (q == end) {
        h->raw.p = q;
        h->raw.n = 0;
    } else {
        if (*q != ' ') return 0;
        h->raw.p = q + 1;
        h->raw.n = end - q - 1;
    }
    return 1;
}

/* The end of the line at `p` (its '\n' or `end`); *clean: every byte is printable ASCII.
 * SSE2 (every x86_64 has it) tests 16 bytes at a time: a byte below 0x20 or above 0x7e stops. */
#ifdef __SSE2__
#include <emmintrin.h>
#endif
static const char *line_end(const char *p, const char *end, int *clean) {
#ifdef __SSE2__
    const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* signed: bytes >= 0x80 are negative, so "< 0x20" catches them too */
        __m128i stop = _mm_or_si128(_mm_cmplt_epi8(v, space), _mm_cmpeq_epi8(v, del));
        int mask = _mm_movemask_epi8(stop);
        if (mask) {
            p += __builtin_ctz(mask);
            break;
        }
        p += 16;
    }
#endif
    while (p < end && (unsigned char)*p >= 0x20 && (unsigned char)*p <= 0x7e) p++;
    if (p >= end) { *clean = 1; return end; }
    if (*p == '\n') { *clean = 1; return p; }
    *clean = 0;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl ? nl : end;
}

/* ---- the scan */

enum Out {
    O_LINE, O_OFFSET, O_COMM, O_PID, O_TGID, O_CPU, O_FLAGS, O_TS, O_EVENT, O_RAW, O_SYSTEM,
    O_DECODED, O_FIELDS
};
#define NCOLS (O_FIELDS + F_COUNT)

static const char *const NAMES[NCOLS] = {
    "line", "__offset", "comm", "pid", "tgid", "cpu", "flags", "ts_ns", "event", "raw",
    "system", "__decoded",
    "__fast_id", "__fast_args", "__fast_ret", "__fast_address", "__fast_address_sym",
    "__fast_ip", "__fast_ip_sym", "__fast_error_code", "__fast_vector", "__fast_parent_ip",
    "__fast_parent_ip_sym",
};
static const enum Kind KINDS[NCOLS] = {
    K_I64, K_I64, K_UTF8, K_I32, K_I32, K_I32, K_UTF8, K_I64, K_UTF8, K_UTF8, K_UTF8, K_BOOL,
    K_I64, K_LIST_U64, K_I64, K_U64, K_UTF8, K_U64, K_UTF8, K_U64, K_I32, K_U64, K_UTF8,
};

typedef struct {
    const char *start, *end;
    Header h;
    int ok;
} Line;

/* What the scan knows of an event name, copied out of Python dicts so the scan runs without
 * the GIL: its field decoder (D_DEFER: leave its lines to the pipeline) and its system. */
#define MAX_EVENTS 512
#define D_DEFER (-1)
typedef struct {
    char name[64];
    int64_t n;
    int decoder;
    Span system;
} EventEntry;

typedef struct {
    EventEntry entries[MAX_EVENTS];
    int count;
    int last[2];       /* the entries of the last two names looked up (events alternate) */
    EventEntry unknown;
} Events;

static EventEntry *entry_for(Events *d, const char *name, Py_ssize_t n) {
    for (int i = 0; i < d->count; i++)
        if (d->entries[i].n == n && memcmp(d->entries[i].name, name, (size_t)n) == 0)
            return &d->entries[i];
    if (n >= 64 || d->count >= MAX_EVENTS) {
        PyErr_SetString(PyExc_ValueError, "at most 512 event names of < 64 bytes");
        return NULL;
    }
    EventEntry *e = &d->entries[d->count++];
    memset(e, 0, sizeof *e);
    e->n = n;
    memcpy(e->name, name, (size_t)n);
    return e;
}

/* decoders: {name: decoder number}; systems: {name: system} (both bytes keys). */
static int events_from(PyObject *decoders, PyObject *systems, Events *d) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    memset(d, 0, sizeof *d);
    d->last[0] = d->last[1] = -1;
    while (PyDict_Next(decoders, &pos, &key, &value)) {
        if (!PyBytes_Check(key)) { PyErr_SetString(PyExc_TypeError, "names are bytes"); return -1; }
        long v = PyLong_AsLong(value);
        if (v == -1 && PyErr_Occurred()) return -1;
        EventEntry *e = entry_for(d, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
        if (!e) return -1;
        e->decoder = (int)v;
    }
    pos = 0;
    while (PyDict_Next(systems, &pos, &key, &value)) {
        if (!PyBytes_Check(key) || !PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "systems: bytes -> bytes");
            return -1;
        }
        EventEntry *e = entry_for(d, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
        if (!e) return -1;
        e->system.p = PyBytes_AS_STRING(value);   /* the dict keeps it alive */
        e->system.n = PyBytes_GET_SIZE(value);
    }
    return 0;
}

static const EventEntry *event_of(Events *d, Span event) {
    for (int k = 0; k < 2; k++) {
        int i = d->last[k];
        if (i >= 0 && d->entries[i].n == event.n
            && memcmp(d->entries[i].name, event.p, (size_t)event.n) == 0)
            return &d->entries[i];
    }
    for (int i = 0; i < d->count; i++)
        if (d->entries[i].n == event.n && memcmp(d->entries[i].name, event.p, (size_t)event.n) == 0) {
            d->last[1] = d->last[0];
            d->last[0] = i;
            return &d->entries[i];
        }
    return &d->unknown;
}

/* fields.system_of for a name the table lacks: the syscalls system's "sys_enter_<name>" */
static Span system_of(const EventEntry *e, Span event) {
    static const char syscalls[] = "syscalls";
    if (e->system.n) return e->system;
    if (starts(event.p, event.p + event.n, "sys_enter_") || starts(event.p, event.p + event.n, "sys_exit_")) {
        Span s = {syscalls, 8};
        return s;
    }
    Span none = {NULL, -1};
    return none;
}

static int emit(Column *cols, const Line *ln, int64_t line_no, int64_t offset, int grammar,
                const EventEntry *entry) {
    const Header *h = &ln->h;
    int decoder = entry->decoder;
    Span system = grammar == G_PERF ? h->system : system_of(entry, h->event);
    Fields f;
    int decoded = decoder > 0 && decode_fields(decoder, h->raw.p, h->raw.p + h->raw.n, &f);
    if (!decoded) memset(f.have, 0, sizeof f.have);
    col_i64(&cols[O_LINE], line_no, 1);
    col_i64(&cols[O_OFFSET], offset, 1);
    col_text(&cols[O_COMM], h->comm.p, h->comm.n, 1);
    col_i64(&cols[O_PID], h->pid, 1);
    col_i64(&cols[O_TGID], h->tgid, h->has_tgid);
    col_i64(&cols[O_CPU], h->cpu, 1);
    col_text(&cols[O_FLAGS], h->flags.p, h->flags.n, h->has_flags);
    col_i64(&cols[O_TS], h->ts_ns, 1);
    col_text(&cols[O_EVENT], h->event.p, h->event.n, 1);
    col_text(&cols[O_RAW], h->raw.p, h->raw.n, 1);
    col_text(&cols[O_SYSTEM], system.p, system.n, system.n >= 0);
    col_i64(&cols[O_DECODED], decoded, 1);
    Column *fc = cols + O_FIELDS;
    col_i64(&fc[F_ID], f.id, f.have[F_ID]);
    int bad = col_list(&fc[F_ARGS], f.args, f.nargs, f.have[F_ARGS]);
    col_i64(&fc[F_RET], f.ret, f.have[F_RET]);
    col_i64(&fc[F_ADDRESS], (int64_t)f.address, f.have[F_ADDRESS]);
    col_text(&fc[F_ADDRESS_SYM], f.address_sym.p, f.address_sym.n, f.have[F_ADDRESS_SYM]);
    col_i64(&fc[F_IP], (int64_t)f.ip, f.have[F_IP]);
    col_text(&fc[F_IP_SYM], f.ip_sym.p, f.ip_sym.n, f.have[F_IP_SYM]);
    col_i64(&fc[F_ERROR_CODE], (int64_t)f.error_code, f.have[F_ERROR_CODE]);
    col_i64(&fc[F_VECTOR], f.vector, f.have[F_VECTOR]);
    col_i64(&fc[F_PARENT_IP], (int64_t)f.parent_ip, f.have[F_PARENT_IP]);
    col_text(&fc[F_PARENT_IP_SYM], f.parent_ip_sym.p, f.parent_ip_sym.n, f.have[F_PARENT_IP_SYM]);
    return bad;
}

PyDoc_STRVAR(scan_doc,
"scan(data, first_line, grammar, prefixes, decoders, systems)\n"
"-> (events, deferred_text, deferred_lines, deferred_offsets, lines, max_frac_digits, first_nul)\n\n"
"Split the lines of `data` (grammar TRACEFS, TRACECMD or PERF).\n"
"events: (schema, array) Arrow capsules of a struct array, one row per line taken;\n"
"deferred_text: the other lines, each ended by a newline; deferred_lines/offsets: their\n"
"line numbers and byte offsets (int64 bytes); lines: the lines in `data`;\n"
"max_frac_digits: the longest timestamp fraction of the rows taken (-1: none);\n"
"first_nul: the first line holding a NUL byte (-1: none).\n"
"prefixes: a tuple of bytes cut off the start of each line, in order (trace-cmd buffers);\n"
"decoders: {event name: decoder number, or DEFER to leave its lines to the pipeline};\n"
"systems: {event name: system} for grammars that do not print it.");

typedef struct {
    const char *data, *end;
    int64_t first_line;
    int grammar;
    const char *prefix[16];
    int64_t prefix_n[16];
    int nprefix;
    Events events;
    int64_t first_nul;     /* the first line holding a NUL byte, -1: none */
    Column cols[NCOLS];
    int64_t cap_rows, rows, lines, max_frac;
    Buf deferred, deferred_lines, deferred_offsets;
} Scan;

static const char *cut_prefixes(const Scan *s, const char *p, const char *end) {
    for (int i = 0; i < s->nprefix; i++)
        if (end - p >= s->prefix_n[i] && memcmp(p, s->prefix[i], (size_t)s->prefix_n[i]) == 0)
            p += s->prefix_n[i];
    return p;
}

static int take(Scan *s, const Line *ln, int64_t line_no, int64_t offset) {
    if (s->rows == s->cap_rows) {
        s->cap_rows *= 2;
        for (int i = 0; i < NCOLS; i++)
            if (col_reserve(&s->cols[i], s->cap_rows, 0)) return -1;
    }
    if (emit(s->cols, ln, line_no, offset, s->grammar, event_of(&s->events, ln->h.event)))
        return -1;
    s->rows++;
    if (ln->h.frac_digits > s->max_frac) s->max_frac = ln->h.frac_digits;
    return 0;
}

static int defer(Scan *s, const Line *ln, int64_t line_no, int64_t offset) {
    return buf_put(&s->deferred, ln->start, ln->end - ln->start) || buf_put(&s->deferred, "\n", 1)
        || buf_put(&s->deferred_lines, &line_no, 8) || buf_put(&s->deferred_offsets, &offset, 8);
}

/* The scan proper: no Python object is touched (it runs without the GIL). -1: out of memory. */
static int scan_all(Scan *s) {
    /* a window of two lines: a line is taken once the next one is known to be taken too */
    Line prev = {0}, cur;
    int64_t prev_line = 0, prev_offset = 0, line_no = s->first_line;
    int have_prev = 0;
    const char *p = s->data;
    while (1) {
        int have_cur = p < s->end;
        if (have_cur) {
            int clean;
            memset(&cur, 0, sizeof cur);
            cur.start = p;
            cur.end = line_end(p, s->end, &clean);
            if (clean) {
                const char *body = s->grammar == G_TRACECMD ? cut_prefixes(s, p, cur.end) : p;
                cur.ok = s->grammar == G_PERF
                    ? read_perf(body, cur.end, &cur.h)
                    : read_tracefs(body, cur.end, s->grammar == G_TRACECMD, &cur.h);
                if (cur.ok && event_of(&s->events, cur.h.event)->decoder == D_DEFER) cur.ok = 0;
            } else if (s->first_nul < 0 && memchr(p, 0, (size_t)(cur.end - p))) {
                s->first_nul = line_no;
            }
        }
        if (have_prev) {
            int failed = (prev.ok && (!have_cur || cur.ok)) ? take(s, &prev, prev_line, prev_offset)
                                                           : defer(s, &prev, prev_line, prev_offset);
            if (failed) return -1;
        }
        if (!have_cur) break;
        prev = cur;
        prev_line = line_no++;
        prev_offset = cur.start - s->data;
        have_prev = 1;
        p = cur.end < s->end ? cur.end + 1 : s->end;
    }
    s->lines = line_no - s->first_line;
    return 0;
}

static void scan_free(Scan *s) {
    for (int i = 0; i < NCOLS; i++) col_free(&s->cols[i]);
    block_free(s->deferred.data);
    block_free(s->deferred_lines.data);
    block_free(s->deferred_offsets.data);
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    long long first_line;
    int grammar;
    PyObject *prefixes, *decoders, *systems;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*LiO!O!O!", &view, &first_line, &grammar, &PyTuple_Type,
                          &prefixes, &PyDict_Type, &decoders, &PyDict_Type, &systems))
        return NULL;
    Scan *s = calloc(1, sizeof *s);
    PyObject *result = NULL;
    if (!s) { PyBuffer_Release(&view); return PyErr_NoMemory(); }
    s->data = view.buf;
    s->end = s->data + view.len;
    s->first_line = first_line;
    s->grammar = grammar;
    s->max_frac = -1;
    s->first_nul = -1;
    if (PyTuple_GET_SIZE(prefixes) > 16) {
        PyErr_SetString(PyExc_ValueError, "at most 16 prefixes");
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(prefixes, i);
        if (!PyBytes_Check(prefix)) {
            PyErr_SetString(PyExc_TypeError, "prefixes must be bytes");
            goto done;
        }
        s->prefix[i] = PyBytes_AS_STRING(prefix);   /* the tuple keeps them alive */
        s->prefix_n[i] = PyBytes_GET_SIZE(prefix);
        s->nprefix++;
    }
    if (events_from(decoders, systems, &s->events)) goto done;
    s->cap_rows = view.len / 64 + 16;
    for (int i = 0; i < NCOLS; i++) {
        s->cols[i].name = NAMES[i];
        s->cols[i].kind = KINDS[i];
        if (col_reserve(&s->cols[i], s->cap_rows, view.len)) { PyErr_NoMemory(); goto done; }
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = scan_all(s);
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    PyObject *events = export_struct(s->cols, NCOLS, s->rows);
    if (events)
        result = Py_BuildValue("(Ny#y#y#LLL)", events,
                               s->deferred.data ? s->deferred.data : "", (Py_ssize_t)s->deferred.len,
                               s->deferred_lines.data ? s->deferred_lines.data : "",
                               (Py_ssize_t)s->deferred_lines.len,
                               s->deferred_offsets.data ? s->deferred_offsets.data : "",
                               (Py_ssize_t)s->deferred_offsets.len,
                               (long long)s->lines, (long long)s->max_frac,
                               (long long)s->first_nul);
done:
    scan_free(s);
    free(s);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_textscan",
    "Text trace lines -> Arrow columns (the accelerator of formats/text_pipeline.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__textscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "TRACEFS", G_TRACEFS) || PyModule_AddIntConstant(m, "TRACECMD", G_TRACECMD)
        || PyModule_AddIntConstant(m, "PERF", G_PERF)
        || PyModule_AddIntConstant(m, "NR_ARGS", D_NR_ARGS)
        || PyModule_AddIntConstant(m, "NR_RET", D_NR_RET)
        || PyModule_AddIntConstant(m, "FAULT", D_FAULT)
        || PyModule_AddIntConstant(m, "VECTOR", D_VECTOR)
        || PyModule_AddIntConstant(m, "FUNCTION", D_FUNCTION)
        || PyModule_AddIntConstant(m, "DEFER", D_DEFER)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
