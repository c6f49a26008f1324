/* Attribution's contribution bound in C: the native twin of attribution._bounded_numpy (see `bounded`), called by
 * attribution.bounded where the extension is built. The same counted conversions (equal ones of a person may swap:
 * they cannot show) and the same scaled cents. */
#include "_attribution.h"

/* The contribution bound, one range of people per thread: the cap keeps each person's `cap` earliest conversions
 * (ties by cents; conversions equal in both are interchangeable), then a person whose kept conversions carry S > P
 * |cents| has each scaled to sign x floor(|cents| x P / S), exactly (128-bit products). */
typedef struct {
    int64_t ts, cents, index;
    uint64_t at; /* the person's place in its bucket */
} held;

/* What every thread of the bound reads and writes: the conversions, the request, and the records by bucket of 2^shift
 * people (`all`, bucket b from `start[b]`). */
typedef struct {
    const int64_t *who, *ts;
    const double *value;
    double lo, hi;
    int64_t m, people, cap, person_cents, buckets;
    int shift;
    uint8_t *counted;
    int64_t *out, *start;
    held *all;
} bound_job;

/* One thread's share of a phase: counting (1) and placing (2) the records of conversions [i0, i1) by bucket (`next`
 * and `end` per bucket: where its records of that bucket go), bounding the people of buckets [b0, b1) (3). */
typedef struct {
    bound_job *j;
    int phase;
    int64_t i0, i1, b0, b1;
    int64_t *next, *end;
    int failed;
} bound_part;

/* The most places a bucket of n records is grouped by counting them in (beyond: by sorting its records). */
#define SPARSE(n) (8 * (n) + 1024)

static int held_cmp(const void *a, const void *b) {
    const held *x = a, *y = b;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    if (x->cents != y->cents) return x->cents < y->cents ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* By place in the bucket, then as `held_cmp`: a sparse bucket's records grouped by person. */
static int held_at_cmp(const void *a, const void *b) {
    const held *x = a, *y = b;
    if (x->at != y->at) return x->at < y->at ? -1 : 1;
    return held_cmp(a, b);
}

static int64_t magnitude(int64_t v) { return v < 0 ? -v : v; }

/* One person's conversions h[0..k): the earliest `cap` count, then their cents are scaled to the person's bound. */
static void bound_person(const bound_job *b, held *h, int64_t k) {
    if (k > b->cap) {
        if (k <= 24) {
            for (int64_t i = 1; i < k; i++) {
                held x = h[i];
                int64_t r = i;
                while (r > 0 && held_cmp(&x, &h[r - 1]) < 0) {
                    h[r] = h[r - 1];
                    r--;
                }
                h[r] = x;
            }
        } else {
            qsort(h, (size_t)k, sizeof(held), held_cmp);
        }
    }
    int64_t kept = k > b->cap ? b->cap : k;
    i128 total = 0; /* up to cap x 2^53: beyond 64 bits for a cap over 1024 */
    for (int64_t r = 0; r < kept; r++) total += magnitude(h[r].cents);
    int scale = b->person_cents >= 0 && total > b->person_cents;
    for (int64_t r = kept; r < k; r++) {
        b->counted[h[r].index] = 0;
        if (scale) b->out[h[r].index] = 0; /* counts nowhere: 0, as the numpy path leaves it */
    }
    if (!scale) return;
    for (int64_t r = 0; r < kept; r++) {
        int64_t c = h[r].cents;
        int64_t scaled = (int64_t)((i128)magnitude(c) * b->person_cents / total);
        b->out[h[r].index] = c < 0 ? -scaled : scaled;
    }
}

/* Each conversion becomes a record in its bucket of 2^shift people (phases 1 and 2, each thread over its slice of
 * the conversions, so that every conversion is read once), then each bucket's records are grouped by person in cache
 * and each person bounded (phase 3, each thread over its buckets): no step gathers at random across all people.
 * Phase 2 also turns each value into its cents (the record holds the only copy the bound reads, and `out` starts
 * from it). A person id outside [0, people) stops the bound in phase 1 (BAD_CONVERSION), one that changed between
 * the phases (another thread rewrote `who`) in phase 2 (CHANGED); a value that is not a number (NOT_A_NUMBER) or
 * whose cents lie beyond 2^53 (BAD_VALUE: |INT64_MIN| would leave its person unscaled) in phase 2. */
static void *run_bound(void *arg) {
    bound_part *p = arg;
    bound_job *j = p->j;
    int64_t mask = ((int64_t)1 << j->shift) - 1;
    if (p->phase == 1) {
        for (int64_t i = p->i0; i < p->i1; i++) {
            int64_t a = j->who[i]; /* read once: the index counted is the one checked */
            if ((uint64_t)a >= (uint64_t)j->people) {
                p->failed = BAD_CONVERSION;
                return NULL;
            }
            p->next[a >> j->shift]++;
        }
    } else if (p->phase == 2) {
        for (int64_t i = p->i0; i < p->i1; i++) {
            int64_t a = j->who[i];
            if ((uint64_t)a >= (uint64_t)j->people || p->next[a >> j->shift] == p->end[a >> j->shift]) {
                p->failed = CHANGED; /* phase 1 counted this person elsewhere, or not at all */
                return NULL;
            }
            /* the cents, as least(greatest(value, lo), hi) x 100 rounded toward zero: read once, into the record */
            double x = j->value[i];
            if (x != x) {
                p->failed = NOT_A_NUMBER;
                return NULL;
            }
            x = x > j->lo ? x : j->lo;
            x = x < j->hi ? x : j->hi;
            double t = trunc(x * CENTS);
            if (!(t >= -(double)MAX_CENTS && t <= (double)MAX_CENTS)) { /* also a NaN bound */
                p->failed = BAD_VALUE;
                return NULL;
            }
            int64_t c = (int64_t)t;
            j->out[i] = c;
            j->all[p->next[a >> j->shift]++] = (held){j->ts[i], c, i, (uint64_t)(a & mask)};
        }
    } else {
        int64_t size = mask + 1, longest = 0;
        for (int64_t k = p->b0; k < p->b1; k++)
            if (j->start[k + 1] - j->start[k] > longest) longest = j->start[k + 1] - j->start[k];
        /* A bucket is grouped by counting its places when they are not many more than its records, else by sorting
         * its records (people >> conversions: a direct call; `bounded` numbers people densely): memory and work in
         * proportion to the records, never to 2^shift. `off` only where some bucket counts. */
        int counts = size <= SPARSE(longest);
        int64_t *off = counts ? malloc((size_t)(size + 1) * sizeof(int64_t)) : NULL;
        held *grouped = malloc((size_t)(longest ? longest : 1) * sizeof(held));
        if ((counts && off == NULL) || grouped == NULL) p->failed = NO_MEMORY;
        for (int64_t k = p->b0; k < p->b1 && p->failed == OK; k++) {
            const held *in = j->all + j->start[k];
            int64_t n = j->start[k + 1] - j->start[k];
            if (n == 0) continue;
            if (size > SPARSE(n)) {
                memcpy(grouped, in, (size_t)n * sizeof(held));
                qsort(grouped, (size_t)n, sizeof(held), held_at_cmp);
                for (int64_t r = 0, start = 0; r < n; r++)
                    if (r + 1 == n || grouped[r + 1].at != grouped[start].at) {
                        bound_person(j, grouped + start, r + 1 - start);
                        start = r + 1;
                    }
                continue;
            }
            memset(off, 0, (size_t)(size + 1) * sizeof(int64_t));
            for (int64_t i = 0; i < n; i++) off[in[i].at + 1]++;
            for (int64_t c = 0; c < size; c++) off[c + 1] += off[c];
            for (int64_t i = 0; i < n; i++) grouped[off[in[i].at]++] = in[i]; /* off[c]: now where c's end */
            for (int64_t c = 0, start = 0; c < size; c++) {
                if (off[c] > start) bound_person(j, grouped + start, off[c] - start);
                start = off[c];
            }
        }
        free(off);
        free(grouped);
    }
    return NULL;
}

/* Runs one phase on every part (`run_parts`); the first failure any part met, or OK. */
static int bound_phase(bound_part *parts, int threads, int phase) {
    int failed = OK;
    for (int t = 0; t < threads; t++) parts[t].phase = phase;
    run_parts(parts, sizeof(bound_part), threads, run_bound);
    for (int t = 0; t < threads; t++)
        if (parts[t].failed != OK) failed = parts[t].failed;
    return failed;
}

/* The three phases of `run_bound`, with the buckets' places between the first two. */
static int bound_all(bound_job *j, int threads) {
    int shift = 0;
    while ((j->people >> shift) > 512) shift++;
    j->shift = shift;
    j->buckets = (j->people >> shift) + 1;
    int64_t nb = j->buckets;
    int64_t *counts = calloc((size_t)threads * 2 * (size_t)nb, sizeof(int64_t));
    j->start = calloc((size_t)nb + 1, sizeof(int64_t));
    j->all = malloc((size_t)(j->m ? j->m : 1) * sizeof(held));
    int failed = OK;
    bound_part parts[MAX_THREADS];
    if (counts == NULL || j->start == NULL || j->all == NULL) {
        failed = NO_MEMORY;
        goto done;
    }
    for (int t = 0; t < threads; t++)
        parts[t] = (bound_part){.j = j, .i0 = j->m * t / threads, .i1 = j->m * (t + 1) / threads,
                                .next = counts + (size_t)t * 2 * nb, .end = counts + ((size_t)t * 2 + 1) * nb};
    if ((failed = bound_phase(parts, threads, 1)) != OK) goto done;
    for (int64_t b = 0; b < nb; b++) { /* each thread's records of bucket b after the earlier threads' */
        int64_t at = j->start[b];
        for (int t = 0; t < threads; t++) {
            int64_t n = parts[t].next[b];
            parts[t].next[b] = at;
            parts[t].end[b] = at + n;
            at += n;
        }
        j->start[b + 1] = at;
    }
    if ((failed = bound_phase(parts, threads, 2)) != OK) goto done;
    for (int t = 0, b = 0; t < threads; t++) { /* buckets of about equal numbers of records */
        parts[t].b0 = b;
        while (b < nb && (t == threads - 1 || j->start[b] < j->m * (t + 1) / threads)) b++;
        parts[t].b1 = b;
    }
    failed = bound_phase(parts, threads, 3);
done:
    free(counts);
    free(j->start);
    free(j->all);
    return failed;
}

/* bound(who, ts_us, value, lo, hi, people, cap, person_cents, counted, out, threads): `who` dense person ids in
 * [0, people); `value` the conversions' values (float64), whose cents are trunc(min(max(value, lo), hi) x 100), in
 * that order of operations (the conversions' statement computed them so in SQL before: the same integers);
 * `counted` (uint8, all 1) and `out` are written in place: 0 for each conversion over the cap, and each conversion's
 * cents, scaled where the person's kept conversions carry more than `person_cents` (< 0: no per-person bound). A
 * conversion over the cap counts nowhere: its `out` is its cents, or 0 where its person's are scaled (as numpy's). */
PyObject *attribution_bound(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer who, ts, value, counted, out;
    double lo, hi;
    long long people, cap, person_cents;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*y*ddLLLw*w*i", &who, &ts, &value, &lo, &hi, &people, &cap, &person_cents,
                          &counted, &out, &threads))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t m = who.len / 8;
    if (!check_buffer(&who, 8, "who") || !check_buffer(&ts, 8, "ts_us") || !check_buffer(&value, 8, "value") ||
        !check_buffer(&counted, 1, "counted") || !check_buffer(&out, 8, "out"))
        goto done;
    if (ts.len / 8 != m || value.len / 8 != m || counted.len != m || out.len / 8 != m || people < 0 || cap < 1 ||
        threads < 1) {
        PyErr_SetString(PyExc_ValueError, "bound: inconsistent arguments");
        goto done;
    }
    int failed = OK;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    Py_BEGIN_ALLOW_THREADS;
    bound_job j = {.who = who.buf, .ts = ts.buf, .value = value.buf, .lo = lo, .hi = hi, .m = m, .people = people,
                   .cap = cap, .person_cents = person_cents, .counted = counted.buf, .out = out.buf};
    failed = bound_all(&j, threads);
    Py_END_ALLOW_THREADS;
    switch (failed) {
    case OK:
        result = Py_NewRef(Py_None);
        break;
    case BAD_CONVERSION:
        PyErr_SetString(PyExc_ValueError, "bound: a person id outside [0, people)");
        break;
    case NOT_A_NUMBER:
        PyErr_SetString(PyExc_ValueError, "bound: a value that is not a number");
        break;
    case BAD_VALUE:
        PyErr_SetString(PyExc_ValueError, "bound: cents beyond 2^53, more than any policy allows");
        break;
    case CHANGED:
        PyErr_SetString(PyExc_ValueError, "bound: the people changed during the call");
        break;
    default:
        PyErr_NoMemory();
    }
done:
    PyBuffer_Release(&who);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&value);
    PyBuffer_Release(&counted);
    PyBuffer_Release(&out);
    return result;
}
