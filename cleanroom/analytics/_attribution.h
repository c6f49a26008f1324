/* What the attribution kernels' two files share (_attribution.c: the credits and the module; _attribution_bound.c:
 * the contribution bound): limits, failure codes, the 128-bit integer, the buffers' check. */
#ifndef CLEANROOM_ATTRIBUTION_H
#define CLEANROOM_ATTRIBUTION_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MILLI 1000
/* Cents per unit of a conversion's value (attribution.CENTS). */
#define CENTS 100.0
#define MAX_TOUCHES 100
#define MAX_THREADS 16
#define MICROSECONDS_PER_DAY 86400000000.0
/* The most |cents| a conversion may carry (credits.MAX_CENTS: the policy's MAX_SENSITIVITY): beyond it the float
 * products of the weights lose whole units and |INT64_MIN| does not exist, so both functions refuse such a value. */
#define MAX_CENTS ((int64_t)1 << 53)

enum model { LAST_TOUCH, FIRST_TOUCH, LINEAR, TIME_DECAY, POSITION_BASED };
enum failure { OK, NO_MEMORY, BAD_CONVERSION, BAD_CODE, BAD_GROUP, BAD_VALUE, CHANGED, NOT_A_NUMBER };

typedef __int128 i128;

/* Whether a buffer holds whole items of `item` bytes (TypeError naming the argument if not). */
static inline int check_buffer(Py_buffer *b, Py_ssize_t item, const char *name) {
    if (b->itemsize != item || b->len % item != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous buffer of %zd-byte integers", name, item);
        return 0;
    }
    return 1;
}

/* Runs fn on each of `threads` parts (part t at `parts` + t x `size` bytes), part 0 in this thread, the others in
 * threads of their own; a part whose thread cannot start runs here after part 0. Returns once every part is done. */
static inline void run_parts(void *parts, size_t size, int threads, void *(*fn)(void *)) {
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    char *at = parts;
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&tid[t], NULL, fn, at + (size_t)t * size) == 0;
    fn(at);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else fn(at + (size_t)t * size);
    }
}

/* bound(...): the contribution bound, in _attribution_bound.c (its comment says the call). */
PyObject *attribution_bound(PyObject *self, PyObject *args);

#endif
