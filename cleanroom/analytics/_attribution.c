/* Attribution's credits in C: from the touches DuckDB returned (any order) to exact per-cell sums.
 *
 * The native twin of cleanroom/analytics/credits.py (`touches_of`, `credit`, `cell_sums` and the `none` cell of
 * attribution.attribution_histograms), used by cleanroom/analytics/credit_sums.py when this extension is built.
 * The rules are the same, one conversion at a time as the plain reference in the tests states them:
 *   - a conversion's touches are ordered by time, then by their code (an impression before a click at the same
 *     instant, then campaign, then channel); touches equal in both are in one cell, so their order cannot show;
 *   - with click-over-view, a conversion that has a click keeps its clicks only; the latest MAX_TOUCHES are kept;
 *   - weights per model (last, first, linear 1/n, position-based 0.4 / 0.2 / 0.4, time decay 2^(-age/half-life)
 *     relative to the newest touch, normalised by their sum in order);
 *   - each conversion hands out exactly 1000 thousandths and exactly |cents| cents (with the value's sign): the
 *     floors of weight x total, then the units left over to the largest remainders, ties to the earlier position.
 *     Should float rounding leave as many units as touches or more, whole rounds go to every touch and the rest
 *     by the same order; should it hand out more than the total, whole rounds come from every share above 0 (at
 *     most the least of them), then a unit each from the smallest remainders, never below 0. So the integers add
 *     up to the total exactly and each has the value's sign, whatever the weights: the sensitivity rests on it
 *     (credits.whole_rounds is the numpy twin).
 *   - a counted conversion without a touch hands both to its brand's `none` cell; a dropped one (over the cap)
 *     counts nowhere, whatever touches it has.
 * Sums are 128-bit. No secret passes through here but the data itself; nothing is constant time.
 *
 * The work is split between threads in three phases: the touches are counted and placed by bucket of conversions
 * by slices of the touches, then the conversions are credited by ranges of whole buckets (each thread with its own
 * sums, added at the end); the GIL is released throughout. Compiled with -ffp-contract=off: every float operation
 * is the one written, as numpy's.
 */
#include "_attribution.h"

#ifndef CLEANROOM_SOURCE_SHA256
#define CLEANROOM_SOURCE_SHA256 ""
#endif

/* A touch: its time and code, and its conversion's place in its bucket (`place_touches`). */
typedef struct {
    int64_t ts;
    int32_t code;
    uint32_t at;
} touch;

/* What every thread reads: the touches as they came, the conversions, and the request. */
typedef struct {
    const int64_t *conversion, *ts, *code;
    int64_t n, m;
    touch *sorted; /* the touches by bucket (`place_touches`) */
    const int64_t *conv_cents, *conv_brand, *lookup;
    const uint8_t *counted;
    int64_t codes, click_from, brand_cells, none_group;
    int model, click_over_view;
    double half_life;
} job;

/* One thread's share of a phase: counting (1) and placing (2) the touches [i0, i1) by bucket of 2^shift
 * conversions (`next` and `end` per bucket: where its touches of that bucket go in `sorted`), then (3) crediting
 * the conversions [lo, hi), which are whole buckets: bucket b's touches from `bucket[b]` (b counted from the range's
 * first), the current one's grouped by conversion (`grouped`, from `off[c]`), into its own sums (thousandths and
 * cents per cell) with its own scratch. */
typedef struct {
    const job *j;
    int phase;
    int64_t i0, i1, lo, hi;
    int64_t *next, *end;
    i128 *milli, *cents;
    const int64_t *bucket;
    int64_t *off;
    int shift;
    const touch *sorted;
    touch *grouped, *buf;
    int64_t grouped_cap;
    double *w, *rest;
    int64_t *share, *rank;
    int64_t cap;
    int failed;
} part;

static int touch_less(const touch *a, const touch *b) {
    return a->ts < b->ts || (a->ts == b->ts && a->code < b->code);
}

/* Sorts t[0..n) by (ts, code): insertion for few (the usual case), else a merge sort through `tmp`. */
static void sort_touches(touch *t, int64_t n, touch *tmp) {
    if (n <= 24) {
        for (int64_t i = 1; i < n; i++) {
            touch x = t[i];
            int64_t k = i;
            while (k > 0 && touch_less(&x, &t[k - 1])) {
                t[k] = t[k - 1];
                k--;
            }
            t[k] = x;
        }
        return;
    }
    int64_t half = n / 2;
    sort_touches(t, half, tmp);
    sort_touches(t + half, n - half, tmp);
    int64_t a = 0, b = half, o = 0;
    while (a < half && b < n) tmp[o++] = touch_less(&t[b], &t[a]) ? t[b++] : t[a++];
    while (a < half) tmp[o++] = t[a++];
    while (b < n) tmp[o++] = t[b++];
    memcpy(t, tmp, (size_t)n * sizeof(touch));
}

static int grow(part *p, int64_t n) {
    if (n <= p->cap) return 1;
    int64_t cap = n < 256 ? 256 : n;
    touch *buf = realloc(p->buf, (size_t)cap * sizeof(touch)); /* the merge's scratch */
    if (buf == NULL) return 0;
    p->buf = buf;
    double *w = realloc(p->w, (size_t)cap * sizeof(double));
    if (w == NULL) return 0;
    p->w = w;
    double *rest = realloc(p->rest, (size_t)cap * sizeof(double));
    if (rest == NULL) return 0;
    p->rest = rest;
    int64_t *share = realloc(p->share, (size_t)cap * sizeof(int64_t));
    if (share == NULL) return 0;
    p->share = share;
    int64_t *rank = realloc(p->rank, (size_t)cap * sizeof(int64_t));
    if (rank == NULL) return 0;
    p->rank = rank;
    p->cap = cap;
    return 1;
}

/* Integer shares of `total` (>= 0) by weights w[0..n): floors, then the largest remainders (ties: earlier first). */
static void apportion(part *p, int64_t n, int64_t total) {
    double *w = p->w, *rest = p->rest;
    int64_t *share = p->share, *rank = p->rank;
    int64_t left = total;
    for (int64_t i = 0; i < n; i++) {
        double exact = w[i] * (double)total;
        double floor_ = floor(exact);
        rest[i] = exact - floor_;
        share[i] = (int64_t)floor_;
        left -= share[i];
    }
    if (left == 0) return;
    /* the positions by descending remainder, ties by position: an insertion sort (n <= MAX_TOUCHES) */
    for (int64_t i = 0; i < n; i++) {
        int64_t k = i;
        while (k > 0 && rest[rank[k - 1]] < rest[i]) {
            rank[k] = rank[k - 1];
            k--;
        }
        rank[k] = i;
    }
    if (left > 0) {
        for (int64_t i = 0; i < n; i++) share[i] += left / n;
        for (int64_t r = 0; r < left % n; r++) share[rank[r]] += 1;
    }
    /* too many handed out (the shares add up to more than total >= 0, so one is above 0 while left < 0): whole
     * rounds from every share above 0, at most the least of them each, then a unit each from the smallest */
    while (left < 0) {
        int64_t above = 0, least = INT64_MAX;
        for (int64_t i = 0; i < n; i++) {
            above += share[i] > 0;
            if (share[i] > 0 && share[i] < least) least = share[i];
        }
        int64_t whole = -left / above < least ? -left / above : least;
        for (int64_t i = 0; i < n; i++) share[i] -= share[i] > 0 ? whole : 0;
        left += whole * above;
        for (int64_t r = n - 1; whole == 0 && r >= 0 && left < 0; r--) {
            if (share[rank[r]] > 0) {
                share[rank[r]]--;
                left++;
            }
        }
    }
}

static void weigh(part *p, const touch *t, int64_t n) {
    const job *j = p->j;
    double *w = p->w;
    switch (j->model) {
    case LINEAR:
        for (int64_t i = 0; i < n; i++) w[i] = 1.0 / (double)n;
        break;
    case POSITION_BASED: {
        double end = n == 2 ? 0.5 : (n == 1 ? 1.0 : 0.4);
        double middle = 0.2 / (double)(n - 2 > 1 ? n - 2 : 1);
        for (int64_t i = 0; i < n; i++) w[i] = (i == 0 || i == n - 1) ? end : middle;
        break;
    }
    default: { /* TIME_DECAY */
        int64_t newest = t[n - 1].ts;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            /* newest - ts >= 0 may pass INT64_MAX for times far apart: unsigned, it is exact */
            double age_days = (double)((uint64_t)newest - (uint64_t)t[i].ts) / MICROSECONDS_PER_DAY;
            w[i] = exp2(-age_days / j->half_life);
            sum += w[i];
        }
        for (int64_t i = 0; i < n; i++) w[i] = w[i] / sum;
    }
    }
}

/* Phases 1 and 2, each thread over its slice of the touches: count them per bucket of 2^shift conversions, then
 * move each touch's time and code to its bucket's place for this thread (`sorted`, shared; each thread writes only
 * its own places). So every touch is read twice in all, whatever the threads, and no step gathers at random
 * across all the conversions: a bucket's write position stays in cache. Checks every touch's conversion and code
 * in phase 1, and in phase 2 that a bucket gets no more touches than phase 1 counted: the caller's arrays are read
 * without the GIL, and one rewritten meanwhile must not move a write beyond `sorted` (CHANGED). */
static void place_touches(part *p) {
    const job *j = p->j;
    const int64_t *cv = j->conversion, *code = j->code;
    uint64_t m = (uint64_t)j->m;
    if (p->phase == 1) {
        for (int64_t i = p->i0; i < p->i1; i++) {
            int64_t c = cv[i], cd = code[i]; /* read once: the index counted is the one checked */
            if ((uint64_t)c >= m) {
                p->failed = BAD_CONVERSION;
                return;
            }
            if (cd < 0 || cd >= j->codes) {
                p->failed = BAD_CODE;
                return;
            }
            p->next[c >> p->shift]++;
        }
        return;
    }
    uint32_t mask = (uint32_t)(((uint64_t)1 << p->shift) - 1);
    for (int64_t i = p->i0; i < p->i1; i++) {
        int64_t c = cv[i], cd = code[i];
        if ((uint64_t)c >= m || p->next[c >> p->shift] == p->end[c >> p->shift] || cd < 0 || cd >= j->codes) {
            p->failed = CHANGED;
            return;
        }
        touch *to = &j->sorted[p->next[c >> p->shift]++];
        to->ts = j->ts[i];
        to->code = (int32_t)cd;
        to->at = (uint32_t)c & mask;
    }
}

/* Groups bucket b's touches by conversion into `grouped`, from `off[c]` (c the conversion's place in the bucket). */
static int group_bucket(part *p, int64_t b) {
    const touch *in = p->sorted + p->bucket[b];
    int64_t n = p->bucket[b + 1] - p->bucket[b], size = (int64_t)1 << p->shift;
    if (n > p->grouped_cap) {
        touch *grouped = realloc(p->grouped, (size_t)n * sizeof(touch));
        if (grouped == NULL) return NO_MEMORY;
        p->grouped = grouped;
        p->grouped_cap = n;
    }
    int64_t *off = p->off;
    memset(off, 0, (size_t)(size + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) off[in[i].at + 1]++;
    for (int64_t c = 0; c < size; c++) off[c + 1] += off[c];
    for (int64_t i = 0; i < n; i++) p->grouped[off[in[i].at]++] = in[i];
    for (int64_t c = size; c > 0; c--) off[c] = off[c - 1]; /* back to each conversion's start */
    off[0] = 0;
    return OK;
}

static void credit_range(part *p) {
    const job *j = p->j;
    p->off = malloc(((size_t)1 << p->shift) * sizeof(int64_t) + sizeof(int64_t));
    if (p->off == NULL) {
        p->failed = NO_MEMORY;
        return;
    }
    for (int64_t c = p->lo; c < p->hi; c++) {
        int64_t in_bucket = (c - p->lo) & (((int64_t)1 << p->shift) - 1);
        if (in_bucket == 0 && (p->failed = group_bucket(p, (c - p->lo) >> p->shift)) != OK) return;
        if (!j->counted[c]) continue;
        int64_t brand = j->brand_cells > 1 ? j->conv_brand[c] : 0;
        int64_t cents = j->conv_cents[c];
        if (brand < 0 || brand >= j->brand_cells || cents < -MAX_CENTS || cents > MAX_CENTS) {
            p->failed = BAD_VALUE; /* a cell outside the sums, or |cents| no policy allows */
            return;
        }
        touch *t = p->grouped + p->off[in_bucket];
        int64_t k = p->off[in_bucket + 1] - p->off[in_bucket];
        if (k == 0) {
            int64_t cell = j->none_group * j->brand_cells + brand;
            p->milli[cell] += MILLI;
            p->cents[cell] += cents;
            continue;
        }
        if (!grow(p, k)) {
            p->failed = NO_MEMORY;
            return;
        }
        int64_t clicks = 0;
        for (int64_t i = 0; i < k; i++) {
            if (j->lookup[t[i].code] < 0) {
                p->failed = BAD_GROUP;
                return;
            }
            clicks += t[i].code >= j->click_from;
        }
        if (j->click_over_view && clicks > 0 && clicks < k) {
            int64_t kept = 0;
            for (int64_t i = 0; i < k; i++)
                if (t[i].code >= j->click_from) t[kept++] = t[i];
            k = kept;
        }
        sort_touches(t, k, p->buf);
        if (k > MAX_TOUCHES) {
            t += k - MAX_TOUCHES;
            k = MAX_TOUCHES;
        }
        int64_t sign = cents < 0 ? -1 : 1, size = cents < 0 ? -cents : cents;
        if (k == 1 || j->model == LAST_TOUCH || j->model == FIRST_TOUCH) {
            const touch *whole = j->model == FIRST_TOUCH ? &t[0] : &t[k - 1];
            int64_t cell = j->lookup[whole->code] * j->brand_cells + brand;
            p->milli[cell] += MILLI;
            p->cents[cell] += cents;
            continue;
        }
        weigh(p, t, k);
        apportion(p, k, MILLI);
        for (int64_t i = 0; i < k; i++) p->milli[j->lookup[t[i].code] * j->brand_cells + brand] += p->share[i];
        apportion(p, k, size);
        for (int64_t i = 0; i < k; i++) p->cents[j->lookup[t[i].code] * j->brand_cells + brand] += sign * p->share[i];
    }
}

static void *run_part(void *arg) {
    part *p = arg;
    if (p->phase < 3) place_touches(p);
    else credit_range(p);
    return NULL;
}

/* Runs one phase on every part (`run_parts`); the first failure any part met, or OK. */
static int credit_phase(part *parts, int threads, int phase) {
    int failed = OK;
    for (int t = 0; t < threads; t++) parts[t].phase = phase;
    run_parts(parts, sizeof(part), threads, run_part);
    for (int t = 0; t < threads && failed == OK; t++) failed = parts[t].failed;
    return failed;
}

/* The three phases, with the buckets' places between the first two and the conversions split between threads by
 * whole buckets before the third, in about equal shares of touches and conversions (each costs about the same:
 * most conversions have no touch or one). */
static int credit_all(job *j, part *parts, int threads, int64_t *start, int64_t *counts) {
    int shift = 0;
    while ((j->m >> shift) > 1024) shift++; /* at most 1025 buckets: `credit_sums` sized for more */
    int64_t nb = (j->m >> shift) + 1;
    for (int t = 0; t < threads; t++) {
        parts[t].shift = shift;
        parts[t].i0 = j->n * t / threads;
        parts[t].i1 = j->n * (t + 1) / threads;
        parts[t].next = counts + (size_t)t * 2 * (size_t)nb;
        parts[t].end = counts + ((size_t)t * 2 + 1) * (size_t)nb;
    }
    int failed = credit_phase(parts, threads, 1);
    if (failed != OK) return failed;
    start[0] = 0;
    for (int64_t b = 0; b < nb; b++) { /* each thread's touches of bucket b after the earlier threads' */
        int64_t at = start[b];
        for (int t = 0; t < threads; t++) {
            int64_t k = parts[t].next[b];
            parts[t].next[b] = at;
            parts[t].end[b] = at + k;
            at += k;
        }
        start[b + 1] = at;
    }
    if ((failed = credit_phase(parts, threads, 2)) != OK) return failed;
    for (int t = 0; t < threads; t++) /* every place filled: phase 3 reads no record phase 2 did not write */
        for (int64_t k = 0; k < nb; k++)
            if (parts[t].next[k] != parts[t].end[k]) return CHANGED;
    int64_t b = 0, all = j->n + j->m;
    for (int t = 0; t < threads; t++) {
        int64_t b0 = b;
        while (b < nb && (t == threads - 1 || start[b] + (b << shift) < all * (t + 1) / threads)) b++;
        parts[t].lo = b0 << shift < j->m ? b0 << shift : j->m;
        parts[t].hi = b << shift < j->m ? b << shift : j->m;
        parts[t].bucket = start + b0;
        parts[t].sorted = j->sorted;
    }
    return credit_phase(parts, threads, 3);
}

/* credit_sums(conversion, ts_us, code, conv_cents, conv_brand, counted, lookup, click_from, brand_cells,
 *             none_group, cells, model, click_over_view, half_life, threads) -> (milli bytes, cents bytes)
 * int64 buffers but `counted` (uint8); the sums come back as little-endian 128-bit integers, 16 bytes per cell.
 * ValueError for a touch naming no conversion or with a code outside `lookup` or in no group, a counted
 * conversion's brand outside [0, brand_cells) or |cents| above MAX_CENTS, groups beyond `cells`, and more cells
 * than one allocation of every thread's sums can address (its size in bytes must not wrap). */
static PyObject *credit_sums(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer conv, ts, code, cents, brand, counted, lookup;
    long long click_from, brand_cells, none_group, cells;
    int model, click_over_view, threads;
    double half_life;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*LLLLipdi", &conv, &ts, &code, &cents, &brand, &counted, &lookup,
                          &click_from, &brand_cells, &none_group, &cells, &model, &click_over_view, &half_life,
                          &threads))
        return NULL;
    PyObject *result = NULL;
    i128 *sums = NULL;
    int64_t *lk = NULL; /* the lookup, copied and checked here: a rewrite of the caller's meanwhile moves no cell */
    part parts[MAX_THREADS];
    memset(parts, 0, sizeof parts);
    Py_ssize_t n = conv.len / 8, m = cents.len / 8;
    if (!check_buffer(&conv, 8, "conversion") || !check_buffer(&ts, 8, "ts_us") || !check_buffer(&code, 8, "code") ||
        !check_buffer(&cents, 8, "cents") || !check_buffer(&brand, 8, "brand") ||
        !check_buffer(&counted, 1, "counted") || !check_buffer(&lookup, 8, "lookup"))
        goto done;
    if (ts.len / 8 != n || code.len / 8 != n || brand.len / 8 != m || counted.len != m || model < LAST_TOUCH ||
        model > POSITION_BASED || brand_cells < 1 || cells < 1 || none_group < 0 ||
        none_group >= cells / brand_cells || !(half_life > 0) || threads < 1) { /* no product: it could wrap */
        PyErr_SetString(PyExc_ValueError, "credit_sums: inconsistent arguments");
        goto done;
    }
    if (cells > PY_SSIZE_T_MAX / (2 * MAX_THREADS * (Py_ssize_t)sizeof(i128))) { /* threads x 2 x cells sums */
        PyErr_SetString(PyExc_ValueError, "credit_sums: more cells than memory can hold");
        goto done;
    }
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    lk = malloc((size_t)lookup.len + sizeof(int64_t));
    if (lk == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(lk, lookup.buf, (size_t)lookup.len);
    for (Py_ssize_t i = 0; i < lookup.len / 8; i++) {
        if (lk[i] >= 0 && lk[i] >= cells / brand_cells) {
            PyErr_SetString(PyExc_ValueError, "credit_sums: a group beyond the cells");
            goto done;
        }
    }
    sums = calloc((size_t)threads * 2 * (size_t)cells, sizeof(i128));
    if (sums == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *start = NULL, *counts = NULL;
    touch *sorted = NULL;
    int failed = OK;
    Py_BEGIN_ALLOW_THREADS;
    int64_t nb = 1026; /* more buckets than `credit_all` makes */
    start = malloc((size_t)(nb + 1) * sizeof(int64_t));
    counts = calloc((size_t)threads * 2 * (size_t)nb, sizeof(int64_t));
    sorted = malloc((size_t)(n ? n : 1) * sizeof(touch));
    if (start == NULL || counts == NULL || sorted == NULL) failed = NO_MEMORY;
    if (failed == OK) {
        job jb = {conv.buf, ts.buf, code.buf, n, m, sorted, cents.buf, brand.buf, lk, counted.buf, lookup.len / 8,
                  click_from, brand_cells, none_group, model, click_over_view, half_life};
        for (int t = 0; t < threads; t++)
            parts[t] = (part){.j = &jb, .milli = sums + (size_t)t * 2 * cells,
                              .cents = sums + ((size_t)t * 2 + 1) * cells, .failed = OK};
        failed = credit_all(&jb, parts, threads, start, counts);
        for (int t = 1; t < threads && failed == OK; t++) {
            for (long long c = 0; c < cells; c++) {
                sums[c] += parts[t].milli[c];
                sums[cells + c] += parts[t].cents[c];
            }
        }
    }
    free(start);
    free(counts);
    free(sorted);
    Py_END_ALLOW_THREADS;
    switch (failed) {
    case OK:
        result = Py_BuildValue("(y#y#)", (const char *)sums, (Py_ssize_t)(cells * 16),
                               (const char *)(sums + cells), (Py_ssize_t)(cells * 16));
        break;
    case NO_MEMORY:
        PyErr_NoMemory();
        break;
    case BAD_CONVERSION:
        PyErr_SetString(PyExc_ValueError, "credit_sums: a touch names no conversion");
        break;
    case BAD_CODE:
        PyErr_SetString(PyExc_ValueError, "credit_sums: a touch's code is outside the lookup");
        break;
    case CHANGED:
        PyErr_SetString(PyExc_ValueError, "credit_sums: the touches changed during the call");
        break;
    default:
        PyErr_SetString(PyExc_ValueError, "credit_sums: values outside the declared domains reached an aggregate");
    }
done:
    for (int t = 0; t < MAX_THREADS; t++) {
        free(parts[t].off);
        free(parts[t].grouped);
        free(parts[t].buf);
        free(parts[t].w);
        free(parts[t].rest);
        free(parts[t].share);
        free(parts[t].rank);
    }
    free(sums);
    free(lk);
    PyBuffer_Release(&conv);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&code);
    PyBuffer_Release(&cents);
    PyBuffer_Release(&brand);
    PyBuffer_Release(&counted);
    PyBuffer_Release(&lookup);
    return result;
}

static PyMethodDef methods[] = {
    {"bound", attribution_bound, METH_VARARGS, "Attribution's contribution bound over the conversions (see the source)."},
    {"credit_sums", credit_sums, METH_VARARGS, "Attribution's exact per-cell sums from the touches (see the source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_attribution", NULL, -1, methods};

PyMODINIT_FUNC PyInit__attribution(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", CLEANROOM_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
