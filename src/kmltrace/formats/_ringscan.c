/* Optional C accelerator of kmltrace.formats.ringbuffer (the pure numpy path is the
 * reference and the fallback; tests/formats/test_ringscan.py checks they agree).
 *
 * walk():        one CPU's ring-buffer pages -> its records (time, type, payload start and
 *                length, lost-events markers), exactly as ringbuffer_pages.walk_cpu computes them.
 * merge():       the CPUs' records -> one time-ordered table (k-way merge, stable: CPU order
 *                then page order break ties, like numpy's stable argsort of the concatenation),
 *                with the common header's pid and flags key read on the way.
 * type_order():  a stable counting sort of the records by event type.
 * gather_blocks(): `width` bytes at each of many buffer offsets.
 *
 * Input comes in through the buffer protocol, output goes out as bytearrays (numpy views
 * them with np.frombuffer); no numpy C API. Every read is bounds-checked: the pages are
 * untrusted file content. Little-endian hosts only (the module refuses to import elsewhere,
 * and the pure path takes over).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "_ringscan reads little-endian data in place: little-endian hosts only"
#endif

#define TYPE_PADDING 29
#define TYPE_TIME_EXTEND 30
#define TYPE_TIME_STAMP 31
#define STEP_END ((int64_t)1 << 40)
#define COMMIT_MASK (((int64_t)1 << 30) - 1)

static PyObject *new_block_object(size_t size);     /* a Block (below) of `size` bytes */

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Big outputs in transparent huge pages where the system offers them (as numpy does for its
 * own arrays): a 4 KiB page fault per 4 KiB written was a third of the decode's time. Not in
 * a VM that hands free memory back to its host (memory.huge_pages_pay decides): a huge
 * page then always comes from memory the host took back, 4 KiB pages often not. */
static int huge_pages = 1;

static PyObject *set_huge_pages(PyObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on))
        return NULL;
    int before = huge_pages;
    huge_pages = on;
    return PyBool_FromLong(before);
}

static void advise_huge(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)1 << 21;
    if (!huge_pages || n < 2 * huge)
        return;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t e = ((uintptr_t)p + n) & ~(huge - 1);
    if (e > a)
        (void)madvise((void *)a, e - a, MADV_HUGEPAGE);     /* advice only: errors ignored */
#endif
}

/* Fresh output arrays faulted in by a second thread while one thread writes them from the
 * start: MADV_POPULATE_WRITE (Linux 5.14) maps a page writable and zeroed unless it is
 * there already, and never changes a page's contents, so the two threads cannot disturb
 * each other. On a VM whose host took the memory back, each first touch waits for the host,
 * and two CPUs wait side by side. The helper works from the arrays' ends backwards, where
 * the writer comes last; an old kernel (EINVAL) ends it at once. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define PREFAULT_MAX 16

typedef struct {
    void *at[PREFAULT_MAX];
    size_t len[PREFAULT_MAX];
    int count;
    pthread_t thread;
    int started;
} Prefault;

static void *prefault_backwards(void *arg) {
    Prefault *pf = arg;
    const size_t step = (size_t)1 << 21;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    size_t longest = 0;
    for (int i = 0; i < pf->count; i++)
        longest = pf->len[i] > longest ? pf->len[i] : longest;
    for (size_t end = (longest + step - 1) / step * step; end > 0; end -= step) {
        for (int i = 0; i < pf->count; i++) {
            if (end - step >= pf->len[i])
                continue;
            uintptr_t lo = ((uintptr_t)pf->at[i] + end - step + page - 1) & ~(page - 1);
            uintptr_t hi = ((uintptr_t)pf->at[i] + (end < pf->len[i] ? end : pf->len[i])) &
                           ~(page - 1);
            if (hi > lo && madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) != 0)
                return NULL;
        }
    }
    return NULL;
}

/* start faulting in the `count` ranges (worth it from 8 MiB on) */
static void prefault_start(Prefault *pf, void **at, const size_t *len, int count) {
    size_t total = 0;
    pf->started = 0;
    pf->count = count < PREFAULT_MAX ? count : PREFAULT_MAX;
    for (int i = 0; i < pf->count; i++) {
        pf->at[i] = at[i];
        pf->len[i] = len[i];
        total += len[i];
    }
#ifdef __linux__                    /* MADV_POPULATE_WRITE's number is Linux's */
    if (total >= ((size_t)8 << 20))
        pf->started = pthread_create(&pf->thread, NULL, prefault_backwards, pf) == 0;
#endif
}

static void prefault_join(Prefault *pf) {
    if (pf->started)
        pthread_join(pf->thread, NULL);
    pf->started = 0;
}

/* a bytearray of n elements of `size` bytes, and its data pointer */
static PyObject *new_array(Py_ssize_t n, Py_ssize_t size, void **data) {
    if (n < 0 || (size && n > PY_SSIZE_T_MAX / size)) {
        PyErr_SetString(PyExc_MemoryError, "output too large");
        return NULL;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * size);
    if (out) {
        *data = PyByteArray_AS_STRING(out);
        advise_huge(*data, (size_t)(n * size));
    }
    return out;
}

/* -- walk ----------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    int64_t buf_len;
    int64_t start, n_pages, page_size, ts_off, commit_off, commit_size, data_off, data_size;
} Pages;

typedef struct {
    int64_t *ts, *start, *lost;
    int32_t *kind, *length;
    int64_t *bad_pages, *damaged_pages;     /* page indices, ascending */
    int64_t records, bad, damaged;          /* room in the arrays (the first pass's counts) */
} Out;

typedef struct {
    int64_t records, bad, damaged, short_records, lost_events, lost_unknown;
} Counts;

/* One pass over the pages; with out == NULL it only counts. */
static void scan_pages(const Pages *pg, Out *out, Counts *c) {
    const uint8_t *buf = pg->buf;
    const int64_t wpw = pg->page_size / 4;
    const int64_t dw_base = pg->start + (pg->data_off / 4) * 4;     /* byte of word 0 */
    const int64_t dw_size = pg->n_pages * wpw - pg->data_off / 4;   /* words in the view */
    const int64_t last = dw_size - 1;
    memset(c, 0, sizeof *c);
    if (dw_size <= 0)
        return;
#define DW(i) rd32(buf + dw_base + 4 * (i))
    for (int64_t p = 0; p < pg->n_pages; p++) {
        const uint8_t *page = buf + pg->start + p * pg->page_size;
        /* each record's position depends on the one before it: fetch the next page ahead
         * (the hardware prefetcher stops at page boundaries) */
        if (p + 1 < pg->n_pages)
            for (int64_t b = 0; b < pg->page_size; b += 64)
                __builtin_prefetch(page + pg->page_size + b);
        uint64_t commit = pg->commit_size == 8 ? rd64(page + (pg->commit_off / 8) * 8)
                                               : rd32(page + (pg->commit_off / 4) * 4);
        commit &= 0xFFFFFFFFull;
        int64_t data_len = (int64_t)commit & COMMIT_MASK;
        int missed = (commit >> 31) & 1, stored = (commit >> 30) & 1;
        if (data_len > pg->data_size) {
            if (out && c->bad < out->bad)
                out->bad_pages[c->bad] = p;
            c->bad++;
            data_len = 0;
            missed = stored = 0;
        }
        int64_t lost = missed ? -1 : 0;
        if (stored && data_len + pg->commit_size <= pg->data_size) {
            int64_t at = pg->data_off + data_len;
            if (at >= 0 && at + pg->commit_size <= pg->page_size)
                lost = pg->commit_size == 8 ? (int64_t)rd64(page + at) : (int64_t)rd32(page + at);
        }
        int64_t page_ts = (int64_t)rd64(page + (pg->ts_off / 8) * 8);
        if (lost != 0) {
            if (lost > 0)   /* wrapping like numpy's int64 sum */
                c->lost_events = (int64_t)((uint64_t)c->lost_events + (uint64_t)lost);
            else
                c->lost_unknown++;
            if (out && c->records < out->records) {
                int64_t r = c->records;
                out->ts[r] = page_ts;
                out->kind[r] = -1;
                out->start[r] = pg->start + p * pg->page_size;
                out->length[r] = 0;
                out->lost[r] = lost;
            }
            c->records++;
        }
        const int64_t lw = data_len / 4;
        int64_t pos = 0;
        uint64_t now = 0;
        int first = 1;
        while (pos < lw) {
            int64_t at = p * wpw + pos;
            if (at < 0 || at > last) {      /* cannot happen with a consistent layout */
                if (out && c->damaged < out->damaged)
                    out->damaged_pages[c->damaged] = p;
                c->damaged++;
                break;
            }
            uint32_t head = DW(at);
            uint32_t next = DW(at + 1 < last ? at + 1 : last);
            int tl = head & 31;
            int64_t step = tl <= 28 ? tl + 1 : 2;
            if (tl == 0 || tl == TYPE_PADDING) {
                step = 1 + ((int64_t)next + 3) / 4;
                if (tl == TYPE_PADDING && (head >> 5) == 0)
                    step = STEP_END;
                if (tl == 0 && next < 8)
                    step = -1;
            }
            int64_t end = pos + step;
            if (!(step > 0 && (end <= lw || step == STEP_END))) {
                if (out && c->damaged < out->damaged)
                    out->damaged_pages[c->damaged] = p;
                c->damaged++;
                break;
            }
            /* the time: deltas summed from the page's time, restarted by absolute stamps */
            uint64_t delta = head >> 5;
            if (tl == TYPE_TIME_STAMP) {
                now = ((uint64_t)next << 27) + delta;
            } else {
                if (tl == TYPE_TIME_EXTEND)
                    delta += (uint64_t)next << 27;
                now = first ? (uint64_t)page_ts + delta : now + delta;
            }
            first = 0;
            if (tl <= 28) {
                int64_t length = tl == 0 ? (int64_t)next - 4 : (int64_t)tl * 4;
                if (length < 8) {
                    c->short_records++;
                } else {
                    if (out && c->records < out->records) {
                        int64_t r = c->records;
                        int64_t d_start = pg->start + pg->data_off + p * pg->page_size +
                                          pos * 4 + (tl == 0 ? 8 : 4);
                        uint32_t word = next;
                        if (tl == 0) {
                            int64_t a = d_start;
                            if (pg->buf_len < 4) {
                                word = 0;
                            } else {
                                if (a > pg->buf_len - 4) a = pg->buf_len - 4;
                                if (a < 0) a = 0;
                                word = rd32(buf + a);
                            }
                        }
                        out->ts[r] = (int64_t)now;
                        out->kind[r] = (int32_t)(word & 0xFFFF);
                        out->start[r] = d_start;
                        out->length[r] = (int32_t)length;
                        out->lost[r] = 0;
                    }
                    c->records++;
                }
            }
            if (end >= lw)
                break;
            pos = end;
        }
    }
#undef DW
}

static int get_buffer(PyObject *obj, Py_buffer *view, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: a contiguous buffer is needed", what);
        return -1;
    }
    return 0;
}

static PyObject *walk(PyObject *self, PyObject *args) {
    PyObject *buf_obj;
    Pages pg;
    if (!PyArg_ParseTuple(args, "OLLLLLLLL", &buf_obj, &pg.start, &pg.n_pages, &pg.page_size,
                          &pg.ts_off, &pg.commit_off, &pg.commit_size, &pg.data_off,
                          &pg.data_size))
        return NULL;
    Py_buffer view;
    if (get_buffer(buf_obj, &view, "buf") < 0)
        return NULL;
    pg.buf = view.buf;
    pg.buf_len = view.len;
    /* the layout must keep every header, commit and data read inside each page, and the
     * pages inside the buffer */
    int ok = pg.page_size > 0 && pg.page_size % 8 == 0 && pg.page_size <= (1 << 30) &&
             pg.ts_off <= pg.page_size && pg.commit_off <= pg.page_size &&
             pg.data_off <= pg.page_size && pg.data_size <= pg.page_size &&
             pg.n_pages >= 0 && pg.start >= 0 && pg.start <= pg.buf_len &&
             pg.n_pages <= (pg.buf_len - pg.start) / pg.page_size &&
             (pg.commit_size == 4 || pg.commit_size == 8) &&
             pg.ts_off >= 0 && (pg.ts_off / 8) * 8 + 8 <= pg.page_size &&
             pg.commit_off >= 0 &&
             (pg.commit_off / pg.commit_size) * pg.commit_size + pg.commit_size <= pg.page_size &&
             pg.data_off >= 0 && pg.data_size >= 0 && pg.data_off + pg.data_size == pg.page_size;
    if (!ok) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "walk: inconsistent page layout");
        return NULL;
    }
    Counts c;
    Py_BEGIN_ALLOW_THREADS
    scan_pages(&pg, NULL, &c);
    Py_END_ALLOW_THREADS
    Out out = {.records = c.records, .bad = c.bad, .damaged = c.damaged};
    PyObject *ts = new_array(c.records, 8, (void **)&out.ts);
    PyObject *kind = new_array(c.records, 4, (void **)&out.kind);
    PyObject *start = new_array(c.records, 8, (void **)&out.start);
    PyObject *length = new_array(c.records, 4, (void **)&out.length);
    PyObject *lost = new_array(c.records, 8, (void **)&out.lost);
    PyObject *bad = new_array(c.bad, 8, (void **)&out.bad_pages);
    PyObject *damaged = new_array(c.damaged, 8, (void **)&out.damaged_pages);
    PyObject *result = NULL;
    if (ts && kind && start && length && lost && bad && damaged) {
        Counts again;
        Py_BEGIN_ALLOW_THREADS
        scan_pages(&pg, &out, &again);
        Py_END_ALLOW_THREADS
        /* the buffer changed under us (the second pass never writes past the first's counts) */
        if (memcmp(&again, &c, sizeof c) != 0)
            PyErr_SetString(PyExc_RuntimeError, "walk: the pages changed during the walk");
        else
            result = Py_BuildValue("{sOsOsOsOsOsOsOsLsLsL}", "ts", ts, "kind", kind,
                                   "start", start, "length", length, "lost", lost,
                                   "bad_pages", bad, "damaged_pages", damaged,
                                   "short_records", (long long)c.short_records,
                                   "lost_events", (long long)c.lost_events,
                                   "lost_unknown", (long long)c.lost_unknown);
    }
    Py_XDECREF(ts); Py_XDECREF(kind); Py_XDECREF(start); Py_XDECREF(length);
    Py_XDECREF(lost); Py_XDECREF(bad); Py_XDECREF(damaged);
    PyBuffer_Release(&view);
    return result;
}

/* -- merge ---------------------------------------------------------------------------------- */

typedef struct {
    Py_buffer ts, kind, start, length, lost;
    int64_t n, at, cpu, shift;
} Part;

static void release_parts(Part *parts, Py_ssize_t k) {
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_buffer *b[] = {&parts[i].ts, &parts[i].kind, &parts[i].start, &parts[i].length,
                          &parts[i].lost};
        for (int j = 0; j < 5; j++)
            if (b[j]->obj)
                PyBuffer_Release(b[j]);
    }
    PyMem_Free(parts);
}

/* heap order: earlier time first, then the lower part (CPU order) */
static inline int before(const Part *parts, int32_t a, int32_t b) {
    int64_t ta = ((const int64_t *)parts[a].ts.buf)[parts[a].at];
    int64_t tb = ((const int64_t *)parts[b].ts.buf)[parts[b].at];
    return ta < tb || (ta == tb && a < b);
}

static void sift_down(const Part *parts, int32_t *heap, Py_ssize_t size, Py_ssize_t i) {
    for (;;) {
        Py_ssize_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < size && before(parts, heap[l], heap[m])) m = l;
        if (r < size && before(parts, heap[r], heap[m])) m = r;
        if (m == i) return;
        int32_t t = heap[i]; heap[i] = heap[m]; heap[m] = t;
        i = m;
    }
}

static PyObject *merge(PyObject *self, PyObject *args) {
    PyObject *part_list, *buf_obj, *order_obj;
    if (!PyArg_ParseTuple(args, "O!OO", &PyList_Type, &part_list, &buf_obj, &order_obj))
        return NULL;
    Py_ssize_t k = PyList_GET_SIZE(part_list);
    if (k > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "merge: too many parts");
        return NULL;
    }
    Part *parts = PyMem_Calloc(k ? k : 1, sizeof(Part));
    if (!parts)
        return PyErr_NoMemory();
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *item = PyList_GET_ITEM(part_list, i);
        PyObject *bufs[5];
        long long cpu, shift;
        if (!PyArg_ParseTuple(item, "OOOOOLL", &bufs[0], &bufs[1], &bufs[2], &bufs[3], &bufs[4],
                              &cpu, &shift))
            goto fail;
        Part *p = &parts[i];
        Py_buffer *views[] = {&p->ts, &p->kind, &p->start, &p->length, &p->lost};
        const int sizes[] = {8, 4, 8, 4, 8};
        for (int j = 0; j < 5; j++)
            if (get_buffer(bufs[j], views[j], "merge part") < 0)
                goto fail;
        p->n = p->ts.len / 8;
        for (int j = 0; j < 5; j++)
            if (views[j]->len != p->n * sizes[j]) {
                PyErr_SetString(PyExc_ValueError, "merge: part arrays of different lengths");
                goto fail;
            }
        p->cpu = cpu;
        p->shift = shift;
        total += p->n;
    }
    Py_buffer buf, order = {0};
    if (get_buffer(buf_obj, &buf, "buf") < 0)
        goto fail;
    if (order_obj != Py_None) {
        if (get_buffer(order_obj, &order, "order") < 0) {
            PyBuffer_Release(&buf);
            goto fail;
        }
        if (order.len != total * 8) {
            PyErr_SetString(PyExc_ValueError, "merge: order has the wrong length");
            goto fail_bufs;
        }
    } else {
        /* a k-way merge equals the stable sort only when each part is in time order */
        for (Py_ssize_t i = 0; i < k; i++) {
            const int64_t *t = parts[i].ts.buf;
            for (int64_t j = 1; j < parts[i].n; j++)
                if (t[j] < t[j - 1]) {
                    PyBuffer_Release(&buf);
                    release_parts(parts, k);
                    Py_RETURN_NONE;
                }
        }
    }
    int64_t *o_ts, *o_start, *o_lost, *o_offset;
    int32_t *o_kind, *o_length, *o_cpu, *o_pid;
    uint16_t *o_lat;
    PyObject *arrays[9] = {
        new_array(total, 8, (void **)&o_ts), new_array(total, 4, (void **)&o_kind),
        new_array(total, 8, (void **)&o_start), new_array(total, 4, (void **)&o_length),
        new_array(total, 8, (void **)&o_lost), new_array(total, 4, (void **)&o_cpu),
        new_array(total, 8, (void **)&o_offset), new_array(total, 4, (void **)&o_pid),
        new_array(total, 2, (void **)&o_lat)};
    int32_t *heap = PyMem_Malloc((k ? k : 1) * sizeof(int32_t));
    int64_t *bounds = PyMem_Malloc((k + 1) * sizeof(int64_t));
    int complete = heap && bounds;
    for (int j = 0; j < 9; j++)
        complete = complete && arrays[j];
    if (!complete) {
        for (int j = 0; j < 9; j++)
            Py_XDECREF(arrays[j]);
        PyMem_Free(heap);
        PyMem_Free(bounds);
        PyErr_NoMemory();
        goto fail_bufs;
    }
    const uint8_t *data = buf.buf;
    const int64_t len = buf.len;
    int bad_order = 0;
    Prefault prefault;
    void *outputs[9] = {o_ts, o_kind, o_start, o_length, o_lost, o_cpu, o_offset, o_pid, o_lat};
    const size_t widths[9] = {8, 4, 8, 4, 8, 4, 8, 4, 2};
    size_t lengths[9];
    for (int j = 0; j < 9; j++)
        lengths[j] = (size_t)total * widths[j];
    Py_BEGIN_ALLOW_THREADS
    prefault_start(&prefault, outputs, lengths, 9);
    bounds[0] = 0;
    for (Py_ssize_t i = 0; i < k; i++)
        bounds[i + 1] = bounds[i] + parts[i].n;
    Py_ssize_t size = 0;
    if (!order.buf) {
        for (Py_ssize_t i = 0; i < k; i++)
            if (parts[i].n)
                heap[size++] = (int32_t)i;
        for (Py_ssize_t i = size / 2 - 1; i >= 0; i--)
            sift_down(parts, heap, size, i);
    }
    for (int64_t r = 0; r < total; r++) {
        Part *p;
        int64_t j;
        if (order.buf) {
            int64_t g = ((const int64_t *)order.buf)[r];
            if (g < 0 || g >= total) {
                bad_order = 1;
                break;
            }
            /* the part holding concatenated index g: parts are few, search them */
            Py_ssize_t lo = 0, hi = k;
            while (hi - lo > 1) {
                Py_ssize_t mid = (lo + hi) / 2;
                if (bounds[mid] <= g) lo = mid; else hi = mid;
            }
            p = &parts[lo];
            j = g - bounds[lo];
        } else {
            p = &parts[heap[0]];
            j = p->at++;
            if (p->at == p->n)
                heap[0] = heap[--size];
            sift_down(parts, heap, size, 0);
        }
        int64_t s = ((const int64_t *)p->start.buf)[j];
        int32_t kd = ((const int32_t *)p->kind.buf)[j];
        o_ts[r] = ((const int64_t *)p->ts.buf)[j];
        o_kind[r] = kd;
        o_start[r] = s;
        o_length[r] = ((const int32_t *)p->length.buf)[j];
        o_lost[r] = ((const int64_t *)p->lost.buf)[j];
        o_cpu[r] = (int32_t)p->cpu;
        o_offset[r] = (int64_t)((uint64_t)s + (uint64_t)p->shift);    /* wraps like numpy */
        uint32_t head = 0, pid = 0;
        if (kd >= 0 && len >= 4) {
            /* the common header: u16 type, u8 flags, u8 preempt_count, s32 pid (reads kept
             * inside the buffer, as the pure path clips them) */
            const int64_t hi = len - 4;
            int64_t a = s < 0 ? 0 : s > hi ? hi : s;
            int64_t b = s < -4 ? 0 : s > hi - 4 ? hi : s + 4;
            head = rd32(data + a);
            pid = rd32(data + b);
        }
        o_lat[r] = (uint16_t)(head >> 16);
        o_pid[r] = (int32_t)pid;
    }
    prefault_join(&prefault);
    Py_END_ALLOW_THREADS
    PyMem_Free(heap);
    PyMem_Free(bounds);
    PyObject *result = NULL;
    if (bad_order)
        PyErr_SetString(PyExc_ValueError, "merge: order index out of range");
    else
        result = Py_BuildValue("{sOsOsOsOsOsOsOsOsO}", "ts", arrays[0], "kind", arrays[1],
                               "start", arrays[2], "length", arrays[3], "lost", arrays[4],
                               "cpu", arrays[5], "offset", arrays[6], "pid", arrays[7],
                               "lat_key", arrays[8]);
    for (int j = 0; j < 9; j++)
        Py_DECREF(arrays[j]);
    if (order.obj)
        PyBuffer_Release(&order);
    PyBuffer_Release(&buf);
    release_parts(parts, k);
    return result;
fail_bufs:
    if (order.obj)
        PyBuffer_Release(&order);
    PyBuffer_Release(&buf);
fail:
    release_parts(parts, k);
    return NULL;
}

/* -- type_order ----------------------------------------------------------------------------- */

static PyObject *type_order(PyObject *self, PyObject *args) {
    PyObject *index_obj;
    long long n_types;
    if (!PyArg_ParseTuple(args, "OL", &index_obj, &n_types))
        return NULL;
    if (n_types < 1 || n_types > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "type_order: bad number of types");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(index_obj, &view, "type index") < 0)
        return NULL;
    if (view.len % 4) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "type_order: int32 indices expected");
        return NULL;
    }
    int64_t n = view.len / 4;
    const int32_t *idx = view.buf;
    int64_t *order, *counts;
    PyObject *o = new_array(n, 8, (void **)&order);
    PyObject *c = new_array(n_types, 8, (void **)&counts);
    int64_t *next = PyMem_Malloc(n_types * sizeof(int64_t));
    PyObject *result = NULL;
    if (o && c && next) {
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        memset(counts, 0, n_types * sizeof(int64_t));
        for (int64_t i = 0; i < n; i++) {
            if (idx[i] < 0 || idx[i] >= n_types) { bad = 1; break; }
            counts[idx[i]]++;
        }
        if (!bad) {
            int64_t at = 0;
            for (int64_t t = 0; t < n_types; t++) { next[t] = at; at += counts[t]; }
            for (int64_t i = 0; i < n; i++)
                order[next[idx[i]]++] = i;
        }
        Py_END_ALLOW_THREADS
        if (bad)
            PyErr_SetString(PyExc_ValueError, "type_order: index out of range");
        else
            result = Py_BuildValue("(OO)", o, c);
    } else if (!next) {
        PyErr_NoMemory();
    }
    PyMem_Free(next);
    Py_XDECREF(o);
    Py_XDECREF(c);
    PyBuffer_Release(&view);
    return result;
}

/* -- gather_blocks -------------------------------------------------------------------------- */

static PyObject *gather_blocks(PyObject *self, PyObject *args) {
    PyObject *buf_obj, *at_obj;
    long long width;
    if (!PyArg_ParseTuple(args, "OOL", &buf_obj, &at_obj, &width))
        return NULL;
    Py_buffer buf, at;
    if (get_buffer(buf_obj, &buf, "buf") < 0)
        return NULL;
    if (get_buffer(at_obj, &at, "at") < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *result = NULL;
    if (width <= 0 || width > buf.len || at.len % 8) {
        PyErr_SetString(PyExc_ValueError, "gather_blocks: width outside the buffer");
    } else {
        int64_t n = at.len / 8;
        uint8_t *out = NULL;
        /* a Block: a fixed array's bytes become a list column's values without a copy */
        result = n <= ((int64_t)1 << 40) / width ? new_block_object((size_t)(n * width)) : NULL;
        if (!result && !PyErr_Occurred())
            PyErr_SetString(PyExc_MemoryError, "gather_blocks: output too large");
        if (result) {
            Py_buffer w;
            if (PyObject_GetBuffer(result, &w, PyBUF_WRITABLE) < 0) {
                Py_CLEAR(result);
            } else {
                out = w.buf;
                PyBuffer_Release(&w);   /* the Block keeps the memory: the pointer stays valid */
            }
        }
        if (result) {
            const int64_t *pos = at.buf;
            const uint8_t *data = buf.buf;
            const int64_t hi = buf.len - width;
            Py_BEGIN_ALLOW_THREADS
            for (int64_t i = 0; i < n; i++) {
                int64_t a = pos[i] < 0 ? 0 : pos[i] > hi ? hi : pos[i];
                memcpy(out + i * width, data + a, width);
            }
            Py_END_ALLOW_THREADS
        }
    }
    PyBuffer_Release(&at);
    PyBuffer_Release(&buf);
    return result;
}


/* -- columns handed to polars without a copy (Arrow C data interface) --------------------------
 *
 * A Block is memory the decoder fills through numpy (buffer protocol) and then hands to polars
 * as the buffers of an Arrow array (pl.Series(obj) with obj.__arrow_c_array__): polars keeps
 * the memory instead of copying it into fresh pages of its own. The memory has an atomic
 * reference count (the Python object holds one, every exported array one), so polars may
 * release it from any thread without the GIL. Fresh anonymous mappings: zeroed, and in huge
 * pages where the system offers them. */

typedef struct {
    _Atomic long refs;
    size_t size;
    void *data;
} Memory;

static Memory *memory_new(size_t size, int huge) {
    Memory *m = malloc(sizeof *m);
    if (!m)
        return NULL;
    size_t mapped = size ? size : 1;
    void *p = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(m);
        return NULL;
    }
    if (huge)
        advise_huge(p, mapped);
    m->refs = 1;
    m->size = size;
    m->data = p;
    return m;
}

static void memory_unref(Memory *m) {
    if (m && __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        munmap(m->data, m->size ? m->size : 1);
        free(m);
    }
}

typedef struct {
    PyObject_HEAD
    Memory *memory;
} Block;

static void block_dealloc(Block *self) {
    memory_unref(self->memory);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int block_getbuffer(Block *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->memory->data,
                             (Py_ssize_t)self->memory->size, 0, flags);
}

static PyBufferProcs block_as_buffer = {(getbufferproc)block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kmltrace.formats._ringscan.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "zeroed memory shared by numpy (buffer protocol) and exported Arrow arrays",
};

static PyObject *block(PyObject *self, PyObject *args) {
    long long size;
    int huge = 1;
    if (!PyArg_ParseTuple(args, "L|p", &size, &huge))
        return NULL;
    if (size < 0 || (unsigned long long)size > ((unsigned long long)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "block: bad size");
        return NULL;
    }
    Block *b = PyObject_New(Block, &BlockType);
    if (!b)
        return NULL;
    b->memory = memory_new((size_t)size, huge);
    if (!b->memory) {
        Py_TYPE(b)->tp_free((PyObject *)b);
        return PyErr_NoMemory();
    }
    return (PyObject *)b;
}

#include "arrow_c.h"

static void schema_release(struct ArrowSchema *s) {
    if (!s->release)
        return;
    for (int64_t i = 0; i < s->n_children; i++) {
        if (s->children[i]->release)
            s->children[i]->release(s->children[i]);
        free(s->children[i]);
    }
    free(s->children);
    free((void *)s->format);
    free((void *)s->name);
    s->release = NULL;
}

static void array_release(struct ArrowArray *a) {
    if (!a->release)
        return;
    Memory **memories = a->private_data;
    for (int64_t i = 0; i < a->n_buffers; i++)
        memory_unref(memories[i]);
    free(memories);
    free((void *)a->buffers);
    for (int64_t i = 0; i < a->n_children; i++) {
        if (a->children[i]->release)
            a->children[i]->release(a->children[i]);
        free(a->children[i]);
    }
    free(a->children);
    a->release = NULL;
}

/* spec: (format, name, length, null_count, [Block | None, ...], [child spec, ...]) */
static int fill_export(PyObject *spec, struct ArrowSchema *s, struct ArrowArray *a, int depth) {
    memset(s, 0, sizeof *s);
    memset(a, 0, sizeof *a);
    const char *format, *name;
    long long length, null_count;
    PyObject *buffers, *children;
    if (depth > 4) {
        PyErr_SetString(PyExc_ValueError, "export: nested too deep");
        return -1;
    }
    if (!PyArg_ParseTuple(spec, "ssLLO!O!", &format, &name, &length, &null_count,
                          &PyList_Type, &buffers, &PyList_Type, &children))
        return -1;
    Py_ssize_t nb = PyList_GET_SIZE(buffers), nc = PyList_GET_SIZE(children);
    if (length < 0 || null_count < -1 || null_count > length || nb > 64 || nc > 64) {
        PyErr_SetString(PyExc_ValueError, "export: bad array spec");
        return -1;
    }
    s->format = strdup(format);
    s->name = strdup(name);
    s->flags = ARROW_FLAG_NULLABLE;
    s->release = schema_release;
    a->length = length;
    a->null_count = null_count;
    a->release = array_release;
    a->buffers = calloc(nb ? nb : 1, sizeof(void *));
    Memory **memories = calloc(nb ? nb : 1, sizeof(Memory *));
    a->private_data = memories;
    s->children = calloc(nc ? nc : 1, sizeof(void *));
    a->children = calloc(nc ? nc : 1, sizeof(void *));
    if (!s->format || !s->name || !a->buffers || !memories || !s->children || !a->children) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        PyObject *item = PyList_GET_ITEM(buffers, i);
        if (item == Py_None)
            continue;
        if (!PyObject_TypeCheck(item, &BlockType)) {
            PyErr_SetString(PyExc_TypeError, "export: buffers must be Blocks or None");
            return -1;
        }
        Memory *m = ((Block *)item)->memory;
        __atomic_add_fetch(&m->refs, 1, __ATOMIC_ACQ_REL);
        memories[i] = m;
        a->buffers[i] = m->data;
        a->n_buffers = i + 1;
    }
    a->n_buffers = nb;
    for (Py_ssize_t i = 0; i < nc; i++) {
        s->children[i] = calloc(1, sizeof(struct ArrowSchema));
        a->children[i] = calloc(1, sizeof(struct ArrowArray));
        s->n_children = a->n_children = i + 1;
        if (!s->children[i] || !a->children[i]) {
            PyErr_NoMemory();
            return -1;
        }
        if (fill_export(PyList_GET_ITEM(children, i), s->children[i], a->children[i],
                        depth + 1) < 0)
            return -1;
    }
    return 0;
}

static void schema_capsule_free(PyObject *capsule) {
    struct ArrowSchema *s = PyCapsule_GetPointer(capsule, "arrow_schema");
    if (s) {
        if (s->release)
            s->release(s);
        free(s);
    }
}

static void array_capsule_free(PyObject *capsule) {
    struct ArrowArray *a = PyCapsule_GetPointer(capsule, "arrow_array");
    if (a) {
        if (a->release)
            a->release(a);
        free(a);
    }
}

static PyObject *export_array(PyObject *self, PyObject *args) {
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &spec))
        return NULL;
    struct ArrowSchema *s = calloc(1, sizeof *s);
    struct ArrowArray *a = calloc(1, sizeof *a);
    if (!s || !a) {
        free(s);
        free(a);
        return PyErr_NoMemory();
    }
    if (fill_export(spec, s, a, 0) < 0) {
        /* what was filled is released: every reference taken is given back */
        schema_release(s);
        array_release(a);
        free(s);
        free(a);
        return NULL;
    }
    PyObject *sc = PyCapsule_New(s, "arrow_schema", schema_capsule_free);
    if (!sc) {
        schema_release(s);
        array_release(a);
        free(s);
        free(a);
        return NULL;
    }
    PyObject *ac = PyCapsule_New(a, "arrow_array", array_capsule_free);
    if (!ac) {
        Py_DECREF(sc);
        array_release(a);
        free(a);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, sc, ac);
    Py_DECREF(sc);
    Py_DECREF(ac);
    return out;
}


/* -- take_rows ------------------------------------------------------------------------------ */

static PyObject *take_rows(PyObject *self, PyObject *args) {
    PyObject *src_obj, *idx_obj, *dst_obj;
    long long width, idx_size;
    if (!PyArg_ParseTuple(args, "OLOLO", &src_obj, &width, &idx_obj, &idx_size, &dst_obj))
        return NULL;
    Py_buffer src, idx, dst;
    if (get_buffer(src_obj, &src, "src") < 0)
        return NULL;
    if (get_buffer(idx_obj, &idx, "idx") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&idx);
        PyBuffer_Release(&src);
        return NULL;
    }
    int ok = width > 0 && width <= 4096 && (idx_size == 2 || idx_size == 4 || idx_size == 8) &&
             idx.len % idx_size == 0 && src.len % width == 0 &&
             dst.len == (idx.len / idx_size) * width;
    int bad = 0;
    if (ok) {
        const int64_t n = idx.len / idx_size, rows = src.len / width;
        const uint8_t *from = src.buf;
        uint8_t *to = dst.buf;
        Prefault prefault;
        void *out = to;
        const size_t out_len = (size_t)dst.len;
        Py_BEGIN_ALLOW_THREADS
        prefault_start(&prefault, &out, &out_len, 1);
        for (int64_t i = 0; i < n; i++) {
            int64_t r = idx_size == 8 ? ((const int64_t *)idx.buf)[i]
                      : idx_size == 4 ? ((const int32_t *)idx.buf)[i]
                                      : ((const uint16_t *)idx.buf)[i];
            if (r < 0 || r >= rows) { bad = 1; break; }
            memcpy(to + i * width, from + r * width, width);
        }
        prefault_join(&prefault);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&idx);
    PyBuffer_Release(&src);
    if (!ok || bad) {
        PyErr_SetString(PyExc_ValueError, ok ? "take_rows: index out of range"
                                             : "take_rows: inconsistent sizes");
        return NULL;
    }
    Py_RETURN_NONE;
}


/* -- render_text ---------------------------------------------------------------------------- */

/* decimal of v (negative when `neg`) into out, backwards from out + 24; returns the start */
static char *decimal(char *end, uint64_t v, int neg) {
    char *p = end;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        *--p = '-';
    return p;
}

static char *hexadecimal(char *end, uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    char *p = end;
    do {
        *--p = digits[v & 15];
        v >>= 4;
    } while (v);
    *--p = 'x';
    *--p = '0';
    return p;
}

typedef struct {
    Py_buffer view;
    int itemsize, kind;     /* kind 0: signed decimal, 1: unsigned decimal, 2: 0x hex */
} TextColumn;

static Block *new_block(size_t size) {
    Block *b = PyObject_New(Block, &BlockType);
    if (!b)
        return NULL;
    b->memory = memory_new(size, 1);
    if (!b->memory) {
        Py_TYPE(b)->tp_free((PyObject *)b);
        PyErr_NoMemory();
        return NULL;
    }
    return b;
}

static PyObject *new_block_object(size_t size) {
    return (PyObject *)new_block(size);
}

/* render_text(n, [lit0, ..., litk], [(values, itemsize, kind), ...k], buffer_index) ->
 * (views Block, data Block, data bytes used): row i is lit0 v0 lit1 v1 ... litk as Arrow
 * Utf8View views (strings of up to 12 bytes inline, longer ones in the data block, which
 * the views name as variadic buffer `buffer_index`). */
static PyObject *render_text(PyObject *self, PyObject *args) {
    long long n, buffer_index;
    PyObject *lits, *cols;
    if (!PyArg_ParseTuple(args, "LO!O!L", &n, &PyList_Type, &lits, &PyList_Type, &cols,
                          &buffer_index))
        return NULL;
    Py_ssize_t k = PyList_GET_SIZE(cols);
    if (n < 0 || n > ((long long)1 << 34) || PyList_GET_SIZE(lits) != k + 1 || k > 4096 ||
        buffer_index < 0 || buffer_index > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "render_text: bad arguments");
        return NULL;
    }
    Py_ssize_t lit_total = 0;
    for (Py_ssize_t j = 0; j <= k; j++) {
        PyObject *lit = PyList_GET_ITEM(lits, j);
        if (!PyBytes_Check(lit) || PyBytes_GET_SIZE(lit) > 4096) {
            PyErr_SetString(PyExc_ValueError, "render_text: literals must be short bytes");
            return NULL;
        }
        lit_total += PyBytes_GET_SIZE(lit);
    }
    TextColumn *columns = PyMem_Calloc(k ? k : 1, sizeof(TextColumn));
    if (!columns)
        return PyErr_NoMemory();
    PyObject *result = NULL;
    Block *views = NULL, *data = NULL;
    char *row = NULL;
    Py_ssize_t got = 0;
    for (; got < k; got++) {
        PyObject *obj;
        int itemsize, kind;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(cols, got), "Oii", &obj, &itemsize, &kind))
            goto done;
        if (get_buffer(obj, &columns[got].view, "values") < 0)
            goto done;
        columns[got].itemsize = itemsize;
        columns[got].kind = kind;
        if (!(itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8) ||
            kind < 0 || kind > 2 || columns[got].view.len != n * itemsize) {
            PyBuffer_Release(&columns[got].view);
            PyErr_SetString(PyExc_ValueError, "render_text: a column of the wrong size");
            goto done;
        }
    }
    /* a row is at most the literals and each value's widest text (the data block reserves
     * that much address space a row; only what is written becomes memory) */
    size_t row_max = (size_t)lit_total;
    for (Py_ssize_t j = 0; j < k; j++) {
        static const int widest[3][9] = {
            {0, 4, 6, 0, 11, 0, 0, 0, 20},      /* signed decimal by item size */
            {0, 3, 5, 0, 10, 0, 0, 0, 20},      /* unsigned decimal */
            {0, 4, 6, 0, 10, 0, 0, 0, 18}};     /* 0x hex */
        row_max += widest[columns[j].kind][columns[j].itemsize];
    }
    if ((size_t)n > ((size_t)1 << 46) / (row_max + 1)) {
        PyErr_SetString(PyExc_ValueError, "render_text: output too large");
        goto done;
    }
    views = new_block((size_t)n * 16);
    data = new_block((size_t)n * (row_max > 12 ? row_max : 0));
    row = PyMem_Malloc(row_max + 1);
    if (!views || !data || !row) {
        if (!row)
            PyErr_NoMemory();
        goto done;
    }
    const char **lit_ptr = PyMem_Malloc((k + 1) * sizeof(char *));
    Py_ssize_t *lit_len = PyMem_Malloc((k + 1) * sizeof(Py_ssize_t));
    if (!lit_ptr || !lit_len) {
        PyMem_Free(lit_ptr);
        PyMem_Free(lit_len);
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j <= k; j++) {
        lit_ptr[j] = PyBytes_AS_STRING(PyList_GET_ITEM(lits, j));
        lit_len[j] = PyBytes_GET_SIZE(PyList_GET_ITEM(lits, j));
    }
    uint8_t *v_out = views->memory->data;
    uint8_t *d_out = data->memory->data;
    uint64_t used = 0;
    const uint32_t buf_idx = (uint32_t)buffer_index;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n; i++) {
        size_t len = 0;
        for (Py_ssize_t j = 0; j <= k; j++) {
            memcpy(row + len, lit_ptr[j], lit_len[j]);
            len += lit_len[j];
            if (j == k)
                break;
            const TextColumn *c = &columns[j];
            const uint8_t *at = (const uint8_t *)c->view.buf + i * c->itemsize;
            uint64_t u;
            int64_t v;
            switch (c->itemsize) {
            case 1: v = c->kind == 0 ? (int64_t)*(const int8_t *)at : (int64_t)*at; break;
            case 2: { uint16_t x; memcpy(&x, at, 2);
                      v = c->kind == 0 ? (int64_t)(int16_t)x : (int64_t)x; break; }
            case 4: { uint32_t x; memcpy(&x, at, 4);
                      v = c->kind == 0 ? (int64_t)(int32_t)x : (int64_t)x; break; }
            default: { uint64_t x; memcpy(&x, at, 8); v = (int64_t)x; break; }
            }
            char digits[24], *end = digits + sizeof digits, *p;
            if (c->kind == 2) {
                p = hexadecimal(end, (uint64_t)v);
            } else if (c->kind == 0 && v < 0) {
                u = (uint64_t)0 - (uint64_t)v;
                p = decimal(end, u, 1);
            } else {
                p = decimal(end, (uint64_t)v, 0);
            }
            memcpy(row + len, p, end - p);
            len += end - p;
        }
        uint8_t *view = v_out + i * 16;
        uint32_t len32 = (uint32_t)len;
        memcpy(view, &len32, 4);
        if (len <= 12) {
            memcpy(view + 4, row, len);
        } else {
            uint32_t off = (uint32_t)used;
            memcpy(view + 4, row, 4);
            memcpy(view + 8, &buf_idx, 4);
            memcpy(view + 12, &off, 4);
            memcpy(d_out + used, row, len);
            used += len;
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(lit_ptr);
    PyMem_Free(lit_len);
    if (used > 0xFFFFFFFFull) {     /* view offsets are 32-bit: the caller renders in slices */
        PyErr_SetString(PyExc_ValueError, "render_text: more than 4 GiB of text");
        goto done;
    }
    result = Py_BuildValue("(OOL)", (PyObject *)views, (PyObject *)data, (long long)used);
done:
    for (Py_ssize_t j = 0; j < got; j++)
        PyBuffer_Release(&columns[j].view);
    PyMem_Free(columns);
    PyMem_Free(row);
    Py_XDECREF(views);
    Py_XDECREF(data);
    return result;
}


/* -- scatter_views -------------------------------------------------------------------------- */

/* scatter_views(dst, rows, src, buffer_index): dst view rows[i] = src view i, its long strings
 * naming variadic buffer `buffer_index` */
static PyObject *scatter_views(PyObject *self, PyObject *args) {
    PyObject *dst_obj, *rows_obj, *src_obj;
    long long buffer_index;
    if (!PyArg_ParseTuple(args, "OOOL", &dst_obj, &rows_obj, &src_obj, &buffer_index))
        return NULL;
    Py_buffer dst, rows, src;
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_WRITABLE) < 0)
        return NULL;
    if (get_buffer(rows_obj, &rows, "rows") < 0) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    if (get_buffer(src_obj, &src, "src") < 0) {
        PyBuffer_Release(&rows);
        PyBuffer_Release(&dst);
        return NULL;
    }
    int ok = dst.len % 16 == 0 && rows.len % 8 == 0 && src.len == (rows.len / 8) * 16 &&
             buffer_index >= 0 && buffer_index <= 0x7FFFFFFF;
    int bad = 0;
    if (ok) {
        const int64_t n = rows.len / 8, size = dst.len / 16;
        const int64_t *at = rows.buf;
        const uint8_t *from = src.buf;
        uint8_t *to = dst.buf;
        const uint32_t index = (uint32_t)buffer_index;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t i = 0; i < n; i++) {
            if (at[i] < 0 || at[i] >= size) { bad = 1; break; }
            uint8_t *view = to + at[i] * 16;
            memcpy(view, from + i * 16, 16);
            uint32_t len;
            memcpy(&len, view, 4);
            if (len > 12)
                memcpy(view + 8, &index, 4);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&dst);
    if (!ok || bad) {
        PyErr_SetString(PyExc_ValueError, ok ? "scatter_views: row out of range"
                                             : "scatter_views: inconsistent sizes");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(buf, start, n_pages, page_size, ts_off, commit_off, commit_size, data_off, "
     "data_size) -> dict of one CPU's records (bytearrays) and damage"},
    {"merge", merge, METH_VARARGS,
     "merge([(ts, kind, start, length, lost, cpu, shift)...], buf, order|None) -> dict of the "
     "time-ordered records, or None when a part is out of time order and no order is given"},
    {"type_order", type_order, METH_VARARGS,
     "type_order(int32 index, n_types) -> (int64 stable order, int64 counts)"},
    {"gather_blocks", gather_blocks, METH_VARARGS,
     "gather_blocks(buf, int64 at, width) -> Block of width bytes per index (clipped)"},
    {"take_rows", take_rows, METH_VARARGS,
     "take_rows(src, width, idx, idx_size, dst): dst row i = src row idx[i] (width bytes)"},
    {"render_text", render_text, METH_VARARGS,
     "render_text(n, literals, [(values, itemsize, kind)...], buffer_index) -> (views Block, "
     "data Block, bytes used): `lit0 v0 lit1 ... litk` per row as Utf8View"},
    {"scatter_views", scatter_views, METH_VARARGS,
     "scatter_views(dst, int64 rows, src, buffer_index): Utf8View rows put in place"},
    {"block", block, METH_VARARGS,
     "block(size, huge=True) -> Block: zeroed memory for numpy to fill and export_array to "
     "hand over (huge: in transparent huge pages, for memory that will be written whole)"},
    {"set_huge_pages", set_huge_pages, METH_VARARGS,
     "set_huge_pages(on) -> the previous setting: whether big outputs are advised into "
     "transparent huge pages (process-wide)"},
    {"export_array", export_array, METH_VARARGS,
     "export_array((format, name, length, null_count, [Block|None...], [child spec...])) -> "
     "(arrow_schema capsule, arrow_array capsule), the Blocks' memory shared, not copied"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ringscan",
                                    "C accelerator of kmltrace.formats.ringbuffer", -1, methods};

PyMODINIT_FUNC PyInit__ringscan(void) {
    if (PyType_Ready(&BlockType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
