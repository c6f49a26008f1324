/*
 * Native curve25519 for the SDK over whole batches: RFC 9380 hash to curve (suite curve25519_XMD:SHA-512_ELL2_RO_,
 * the compiled twin of cleanroom_client/curve.py, which stays as the fallback and the reference), the point checks
 * and X25519 with the member's key.
 *
 * What it computes (tested equal to the Python code and to the RFC vectors in
 * tests/unit/cleanroom_client/test_curve.py):
 *   hash_to_u_batch(msgs, dst, path=None) -> (bytes, list[(int, bytes)])
 *       For each message: expand_message_xmd with SHA-512 (96 bytes), two field elements, Elligator 2 on each (RFC
 *       9380 appendix G.2.1, one exponentiation per map), the sum of the two points as a fraction, the cofactor
 *       cleared by three doublings on the u-line, and u = X / Z with one inversion for the whole batch (Montgomery's
 *       trick). Two paths: "avx512ifma" runs eight messages at once throughout (the SHA-512 of _sha512_mb.h, the
 *       field work of _h2c_ifma.h, the exponentiations of two groups of eight interleaved); "portable" one at a time
 *       (_sha512.h, _elligator2.h). Both give the same bytes. Output: 32 bytes little-endian per message, packed.
 *       The second item lists the indices the native path did not finish (the two mapped points share u, or the
 *       result is the identity: probability about 2^-250 per message); their 32 bytes are zero and the caller
 *       computes them in Python.
 *
 *   on_curve_batch(points, path=None) -> bytes
 *       For each packed 32-byte u, 1 when u^3 + A u^2 + u is a nonzero square mod p (Euler's criterion, eight at a time
 *       on the IFMA path), else 0: the curve-or-twist test of cleanroom_client.curve.check_points for points received
 *       from a peer (public values; tested against gmpy2's Legendre symbol in test_curve.py).
 *
 *   x25519_batch(key, points, path=None) -> bytes
 *       RFC 7748 X25519(key, u) for each packed 32-byte u (bit 255 masked, u >= p accepted, the scalar clamped,
 *       canonical output, all zero for a point of low order), packed in the same order, with the GIL released. Two
 *       paths, chosen at run time: eight ladders at once with AVX-512 IFMA (_x25519_ifma.c, where the CPU and OS
 *       support it; a short last group is padded with u = 9 and the filler dropped) and the portable ladder below (any
 *       CPU); either way one field inversion per block of 256 points (Montgomery's trick). `path` forces one; the
 *       module's X25519_PATHS lists those this machine runs, fastest first. Tested equal to `cryptography` and to RFC
 *       7748's vectors (tests/unit/cleanroom_client/test_x25519.py).
 *
 * Secrets: hash_to_u_batch has none. Its input is the RFC 9380 message of each identifier (type, 0x00, SHA-256
 * of the normalized identifier), the same value curve.py hashes, on the member's own machine, before any
 * blinding. So, like curve.py, it makes no constant-time promise and branches on data where that is simpler.
 * x25519_batch holds the member's blinding key: it is constant time in the key (each scalar bit only builds the
 * mask of a conditional swap, no branch or memory index depends on it, and every key runs the same instructions;
 * the fe_* arithmetic it uses has no data-dependent branch), its clamped copy and the ladder's working values are
 * wiped with a memset the compiler cannot drop before it returns, the stack its callees used (where the compiler
 * spilled registers) is overwritten before it returns (burn_stack), and no error message shows the key. It runs
 * without the GIL on copies it owns: the key copied under the GIL, the points too unless they are an immutable
 * bytes object. The points are public (blinded values the peer holds).
 *
 * Field arithmetic mod p = 2^255 - 19 in radix 2^51 is in _fe25519.h, SHA-512 (FIPS 180-4, written out) in
 * _sha512.h and for eight messages at once with AVX-512 in _sha512_mb.h, one message's hash to curve in
 * _elligator2.h: the extension needs nothing beyond a C compiler and Python's headers.
 *
 *   sha512_batch(msgs, path=None) -> bytes
 *       SHA-512 of each message, packed, with the SHA-512 the hash to curve runs on that path: a test hook (both
 *       paths are checked against hashlib in test_curve.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_sha512.h"
#include "_sha512_mb.h"
#include "_fe25519.h"
#include "_elligator2.h"

/* ---------------------------------------------------------------- X25519 over a batch, one secret scalar */

/* Defined in _x25519_ifma.c: eight ladders at once with AVX-512 IFMA (x86-64 only; reports 0 elsewhere). */
int x25519_ifma_available(void);
void x25519_ifma_ladder8(const uint8_t scalar[32], const uint64_t u[5][8], uint64_t x2[5][8], uint64_t z2[5][8]);
void x25519_ifma_euler_8(const uint64_t in[5][8], uint64_t out[5][8]);
void x25519_ifma_h2c_8(const uint64_t u[2][5][8], const uint64_t sqrt_m1[5], const uint64_t c2[5], uint64_t X[5][8],
                       uint64_t Z[5][8], uint8_t ok[8]);
void x25519_ifma_divide_8(uint64_t (*X)[5][8], const uint64_t (*Z)[5][8], uint64_t (*pre)[5][8], size_t count);

/* memset through a volatile pointer: the compiler may not drop it as a dead store, so secrets really go. */
static void *(*const volatile wipe_memset)(void *, int, size_t) = memset;

/* Swaps f and g when mask is all ones, nothing when it is zero; the same instructions either way. */
static void fe_cswap(fe f, fe g, uint64_t mask) {
    for (int i = 0; i < 5; i++) {
        uint64_t t = mask & (f[i] ^ g[i]);
        f[i] ^= t;
        g[i] ^= t;
    }
}

/* RFC 7748 section 5's ladder for one u (limbs from fe_frombytes) and a clamped scalar, in constant time in the
   scalar: each bit only builds the swap mask. Leaves x2 and z2 (X25519(k, u) = x2 / z2; x25519_finish divides). */
static void x25519_portable(fe x2, fe z2, const uint8_t scalar[32], const fe u) {
    fe s[6]; /* x1, x2, z2, x3, z3, and a temporary: wiped before return */
    fe a, aa, b, bb, c, d, da, cb, e;
    fe_copy(s[0], u);
    fe_set_small(s[1], 1);
    fe_set_small(s[2], 0);
    fe_copy(s[3], u);
    fe_set_small(s[4], 1);
    uint64_t swap = 0;
    for (int t = 254; t >= 0; t--) {
        uint64_t bit = (scalar[t >> 3] >> (t & 7)) & 1;
        swap ^= bit;
        fe_cswap(s[1], s[3], 0 - swap);
        fe_cswap(s[2], s[4], 0 - swap);
        swap = bit;
        fe_add(a, s[1], s[2]);
        fe_sq(aa, a);
        fe_sub(b, s[1], s[2]);
        fe_sq(bb, b);
        fe_sub(e, aa, bb);
        fe_add(c, s[3], s[4]);
        fe_sub(d, s[3], s[4]);
        fe_mul(da, d, a);
        fe_mul(cb, c, b);
        fe_add(s[5], da, cb);
        fe_sq(s[3], s[5]);
        fe_sub(s[5], da, cb);
        fe_sq(s[5], s[5]);
        fe_mul(s[4], s[0], s[5]);
        fe_mul(s[1], aa, bb);
        fe_mul_small(s[5], e, 121665);
        fe_add(s[5], aa, s[5]);
        fe_mul(s[2], e, s[5]);
    }
    fe_cswap(s[1], s[3], 0 - swap);
    fe_cswap(s[2], s[4], 0 - swap);
    fe_copy(x2, s[1]);
    fe_copy(z2, s[2]);
    wipe_memset(s, 0, sizeof s);
    wipe_memset(a, 0, sizeof a);
    wipe_memset(b, 0, sizeof b);
    wipe_memset(aa, 0, sizeof aa);
    wipe_memset(bb, 0, sizeof bb);
    wipe_memset(c, 0, sizeof c);
    wipe_memset(d, 0, sizeof d);
    wipe_memset(da, 0, sizeof da);
    wipe_memset(cb, 0, sizeof cb);
    wipe_memset(e, 0, sizeof e);
}

/* All ones when f is 0 mod p, else 0, in constant time (f derives from the key). */
static uint64_t fe_zero_mask(const fe f) {
    uint8_t b[32];
    uint64_t acc = 0;
    fe_tobytes(b, f);
    for (int i = 0; i < 32; i++) acc |= b[i];
    return ((acc | (0 - acc)) >> 63) - 1;
}

/* Points per block of x25519_batch: one field inversion for the block (Montgomery's trick) instead of one per
   point, about 8% of an X25519; the block's values (about 32 KB) are on the heap (x25519_work) and are wiped. */
#define X25519_BLOCK 256

/* out_i = canonical bytes of x_i / z_i for i < n (n <= X25519_BLOCK), all zero where z_i = 0 (RFC 7748's result
   for a point of low order): one inversion for the block. Constant time in the values: a zero z_i is replaced by
   1 and its output cleared under a mask, so the product never vanishes and no branch depends on which. `pre` and
   `zero` are the caller's scratch for X25519_BLOCK prefix products and masks (on the heap: see x25519_work). */
static void x25519_finish(uint8_t *out, fe *x, fe *z, size_t n, fe *pre, uint64_t *zero) {
    fe acc, inv, t;
    fe_set_small(acc, 1);
    for (size_t i = 0; i < n; i++) {
        zero[i] = fe_zero_mask(z[i]);
        z[i][0] += zero[i] & 1;
        fe_copy(pre[i], acc); /* z_0 ... z_(i-1) */
        fe_mul(acc, acc, z[i]);
    }
    fe_invert(inv, acc);
    for (size_t i = n; i-- > 0;) {
        fe_mul(t, inv, pre[i]); /* 1 / z_i */
        fe_mul(inv, inv, z[i]);
        fe_mul(t, x[i], t);
        fe_tobytes(out + 32 * i, t);
        for (int j = 0; j < 32; j++) out[32 * i + j] &= (uint8_t)~zero[i];
    }
    wipe_memset(pre, 0, sizeof(fe) * n);
    wipe_memset(zero, 0, sizeof(uint64_t) * n);
    wipe_memset(acc, 0, sizeof acc);
    wipe_memset(inv, 0, sizeof inv);
    wipe_memset(t, 0, sizeof t);
}

/* SHA-256 of _curve25519.c and _x25519_ifma.c as built (setup.py defines it): the module's SOURCE_SHA256, which
   cleanroom_client.curve compares with the sources beside it so that an extension built from older sources is not
   used. Empty when compiled some other way (the tests' harnesses). */
#ifndef CLEANROOM_SOURCE_SHA256
#define CLEANROOM_SOURCE_SHA256 ""
#endif

enum x25519_path { PATH_PORTABLE, PATH_IFMA };
static int ifma_ok;       /* set once at import: the CPU and the OS run AVX-512 IFMA */
static int sha512_mb_ok; /* and AVX-512F, BW and VL: the multi-buffer SHA-512 of _sha512_mb.h (any IFMA CPU) */

/* The block's ladder results and the inversion's scratch (about 32 KB): on the heap, not the stack, so that the batch
   runs in a thread with the smallest stack Python allows (threading.stack_size's 32 KiB); wiped before it is freed. */
typedef struct {
    fe x[X25519_BLOCK], z[X25519_BLOCK], pre[X25519_BLOCK];
    uint64_t zero[X25519_BLOCK];
} x25519_work;

/* Bytes of stack below x25519_batch's frame that burn_stack overwrites: more than the deepest call under it (the
   IFMA ladder's frame, about 8.7 KB at -O3, the largest). */
#define X25519_BURN 16384

/* Overwrites the stack the ladders and the inversion used below the caller's frame: the registers the compiler
   spilled there (the IFMA ladder's zmm working values lie outside its wiped array) are gone when the batch
   returns. noinline so that its array lies where the callees' frames were. */
static __attribute__((noinline)) void burn_stack(void) {
    uint8_t area[X25519_BURN];
    wipe_memset(area, 0, sizeof area);
    __asm__ __volatile__("" : : "r"(area) : "memory");
}

/* X25519(key, u) for n packed 32-byte u's into out (32 bytes each): RFC 7748 decoding (bit 255 of u masked,
   u >= p accepted), the scalar clamped, canonical output (all zero for a point of low order). Blocks of
   X25519_BLOCK points: ladders (eight at a time on the IFMA path), then one inversion for the block. Runs without
   the GIL (its scratch from PyMem_RawMalloc); returns -1 when that allocation fails, else 0. */
static int x25519_batch(const uint8_t key[32], const uint8_t *points, uint8_t *out, size_t n, enum x25519_path path) {
    uint8_t k[32];
    x25519_work *w = PyMem_RawMalloc(sizeof *w);
    if (!w) return -1;
    fe *x = w->x, *z = w->z;
    memcpy(k, key, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    for (size_t first = 0; first < n; first += X25519_BLOCK) {
        size_t count = n - first < X25519_BLOCK ? n - first : X25519_BLOCK;
        const uint8_t *in = points + 32 * first;
        if (path == PATH_IFMA) {
            uint64_t u[5][8], rx[5][8], rz[5][8];
            for (size_t start = 0; start < count; start += 8) {
                for (size_t lane = 0; lane < 8; lane++) {
                    fe f;
                    if (start + lane < count)
                        fe_frombytes(f, in + 32 * (start + lane));
                    else
                        fe_set_small(f, 9); /* filler for a short last group: computed and dropped */
                    for (int i = 0; i < 5; i++) u[i][lane] = f[i];
                }
                x25519_ifma_ladder8(k, (const uint64_t(*)[8])u, rx, rz);
                for (size_t lane = 0; lane < 8 && start + lane < count; lane++)
                    for (int i = 0; i < 5; i++) {
                        x[start + lane][i] = rx[i][lane];
                        z[start + lane][i] = rz[i][lane];
                    }
            }
            wipe_memset(rx, 0, sizeof rx);
            wipe_memset(rz, 0, sizeof rz);
        } else {
            for (size_t i = 0; i < count; i++) {
                fe u;
                fe_frombytes(u, in + 32 * i);
                x25519_portable(x[i], z[i], k, u);
            }
        }
        x25519_finish(out + 32 * first, x, z, count, w->pre, w->zero);
    }
    wipe_memset(w, 0, sizeof *w);
    PyMem_RawFree(w);
    wipe_memset(k, 0, sizeof k);
    burn_stack();
    return 0;
}

/* ---------------------------------------------------------------- hash to curve over a batch */

/* Messages per block of the batch (their message pointers and expand_message_xmd outputs at once): on the portable
   path the block's 2 x 64 Elligator 2 states (about 40 KB) stay in cache between its passes; the IFMA path runs
   each group of eight through x25519_ifma_h2c_8 (_h2c_ifma.h) at once. */
#define H2C_BLOCK 64

/* ---------------------------------------------------------------- curve or twist, over a batch */

/* z^((p - 1) / 2) = z^(2^254 - 10): Euler's criterion, one by one. */
static void fe_pow_euler(fe out, const fe z) {
    fe t, z11, z2, z6;
    fe_pow_2_250_1(t, z11, z);
    fe_sqn(t, t, 4); /* 2^254 - 16 */
    fe_sq(z2, z);
    fe_sq(z6, z2);
    fe_mul(z6, z6, z2);
    fe_mul(out, t, z6);
}

/* For each of n packed u (the low 255 bits read, as fe_frombytes does): 1 when u^3 + A u^2 + u is a nonzero
   square (the point is on curve25519, not its twist), else 0. Public values: no constant-time need. */
static void on_curve_batch(const uint8_t *points, uint8_t *out, size_t n, enum x25519_path path) {
    static const uint8_t one[32] = {1};
    uint64_t a[5][8], r[5][8];
    for (size_t start = 0; start < n; start += 8) {
        size_t count = n - start < 8 ? n - start : 8;
        fe rhs[8], e[8];
        for (size_t lane = 0; lane < 8; lane++) {
            fe u, t;
            if (lane < count) {
                fe_frombytes(u, points + 32 * (start + lane));
                fe_set_small(t, J);
                fe_add(t, t, u);
                fe_mul(t, t, u);
                fe_set_small(rhs[lane], 1);
                fe_add(t, t, rhs[lane]);
                fe_mul(rhs[lane], t, u); /* u (u (u + A) + 1) */
            } else {
                fe_set_small(rhs[lane], 1);
            }
        }
        if (path == PATH_IFMA) {
            for (size_t lane = 0; lane < 8; lane++)
                for (int i = 0; i < 5; i++) a[i][lane] = rhs[lane][i];
            x25519_ifma_euler_8((const uint64_t(*)[8])a, r);
            for (size_t lane = 0; lane < count; lane++)
                for (int i = 0; i < 5; i++) e[lane][i] = r[i][lane];
        } else {
            for (size_t lane = 0; lane < count; lane++) fe_pow_euler(e[lane], rhs[lane]);
        }
        for (size_t lane = 0; lane < count; lane++) {
            uint8_t b[32];
            fe_tobytes(b, e[lane]);
            out[start + lane] = memcmp(b, one, 32) == 0;
        }
    }
}

/* ---------------------------------------------------------------- Python functions */

/* The path `name` asks for (None: the fastest this CPU runs); -1 with ValueError for an unknown or unavailable one. */
static int choose_path(const char *name, enum x25519_path *path) {
    *path = ifma_ok ? PATH_IFMA : PATH_PORTABLE;
    if (!name) return 0;
    if (strcmp(name, "portable") == 0) {
        *path = PATH_PORTABLE;
        return 0;
    }
    if (strcmp(name, "avx512ifma") == 0) {
        if (!ifma_ok) {
            PyErr_SetString(PyExc_ValueError, "this CPU cannot run the avx512ifma path");
            return -1;
        }
        *path = PATH_IFMA;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "unknown path '%.20s': use 'avx512ifma' or 'portable'", name);
    return -1;
}

/* The messages as a tuple of the batch's own (a new reference; NULL with TypeError `what` for no sequence): on
   Python 3.11 allocating can run the collector, whose finalizers may empty or refill the caller's list and free the
   item array under the batch (a use-after-free, tested in test_curve.py). So the tuple is allocated first and the
   items copied only while the list keeps that length, with no allocation in between (PySequence_Tuple allocates
   while holding the list's item array); a tuple cannot change and keeps every message alive. */
static PyObject *message_tuple(PyObject *msgs, const char *what) {
    PyObject *fast = PySequence_Fast(msgs, what); /* msgs itself for an exact list or tuple, else a new list */
    if (!fast || PyTuple_Check(fast)) return fast;
    for (;;) {
        Py_ssize_t n = PyList_GET_SIZE(fast);
        PyObject *tuple = PyTuple_New(n); /* may run the collector, and so change the list */
        if (!tuple || PyList_GET_SIZE(fast) == n) {
            for (Py_ssize_t i = 0; tuple && i < n; i++) {
                PyObject *item = PyList_GET_ITEM(fast, i);
                Py_INCREF(item);
                PyTuple_SET_ITEM(tuple, i, item);
            }
            Py_DECREF(fast);
            return tuple;
        }
        Py_DECREF(tuple); /* the list changed meanwhile: again, at its new length */
    }
}

/* The message bytes of items[0..count) into data and len (the hash's and sha512_batch's); -1 with TypeError where
   one is not bytes. */
static int h2c_messages(const uint8_t **data, size_t *len, PyObject **items, Py_ssize_t count) {
    for (Py_ssize_t j = 0; j < count; j++) {
        char *bytes;
        Py_ssize_t size;
        if (PyBytes_AsStringAndSize(items[j], &bytes, &size) < 0) return -1;
        data[j] = (const uint8_t *)bytes;
        len[j] = (size_t)size;
    }
    return 0;
}

/* uniform[lane] = expand_message_xmd(data[lane], DST, 96) for lane < lanes (at most 8): eight at once with the
   multi-buffer SHA-512 on the IFMA path (where the CPU runs it), else one by one. */
static void h2c_uniform(uint8_t uniform[8][96], const uint8_t *const *data, const size_t *len, size_t lanes,
                        const sha512_ctx *zpad, const uint8_t *dst_prime, size_t dst_prime_len,
                        enum x25519_path path) {
    if (path == PATH_IFMA && sha512_mb_ok)
        xmd96_mb8(&uniform[0][0], zpad->h, data, len, lanes, dst_prime, dst_prime_len);
    else
        for (size_t lane = 0; lane < lanes; lane++)
            expand_xmd96(uniform[lane], zpad, data[lane], len[lane], dst_prime, dst_prime_len);
}

/* Per block of H2C_BLOCK messages on the portable path: Elligator 2 on both field elements (one exponentiation
   each), the sum and the cofactor clearing, one message at a time; xs, zs and ok for the block's messages. */
static void h2c_block_portable(fe *xs, fe *zs, uint8_t *ok, ell2_state *maps, fe *powers, uint8_t (*uniform)[96],
                               size_t count) {
    for (size_t j = 0; j < count; j++) {
        fe r0, r1;
        fe_from48_be(r0, uniform[j]);
        fe_from48_be(r1, uniform[j] + 48);
        elligator2_start(&maps[2 * j], r0);
        elligator2_start(&maps[2 * j + 1], r1);
    }
    for (size_t i = 0; i < 2 * count; i++) fe_pow22523(powers[i], maps[i].tv2);
    for (size_t j = 0; j < count; j++) {
        fe xn1, xd1, y1, xn2, xd2, y2;
        elligator2_finish(xn1, xd1, y1, &maps[2 * j], powers[2 * j]);
        elligator2_finish(xn2, xd2, y2, &maps[2 * j + 1], powers[2 * j + 1]);
        ok[j] = (uint8_t)hash_to_uz(xs[j], zs[j], xn1, xd1, y1, xn2, xd2, y2);
        if (!ok[j]) fe_set_small(xs[j], 0), fe_set_small(zs[j], 1); /* defined values: the caller zeroes them */
    }
}

static PyObject *py_hash_to_u_batch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *msgs;
    Py_buffer dst;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "Oy*|z", &msgs, &dst, &name)) return NULL;
    PyObject *result = NULL, *seq = NULL, *fallback = NULL, *out = NULL;
    /* The batch's fractions X / Z: one fe per message on the portable path, one group of eight lanes per eight
       messages on the IFMA path (where `xs` and `zs` hold uint64_t[5][8] each). On the heap, as are a block's
       Elligator 2 states (about 45 KB), so that a thread with a small stack (32 KiB is Python's minimum) runs it. */
    fe *xs = NULL, *zs = NULL, *pre = NULL, *powers = NULL;
    uint8_t *ok = NULL, (*uniform)[96] = NULL;
    ell2_state *maps = NULL;
    enum x25519_path path;
    if (dst.len > 255) {
        PyErr_SetString(PyExc_ValueError, "DST longer than 255 bytes");
        goto done;
    }
    if (choose_path(name, &path) < 0) goto done;
    seq = message_tuple(msgs, "hash_to_u_batch takes a sequence of bytes");
    if (!seq) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint8_t dst_prime[256];
    memcpy(dst_prime, dst.buf, (size_t)dst.len);
    dst_prime[dst.len] = (uint8_t)dst.len;
    size_t dst_prime_len = (size_t)dst.len + 1;
    sha512_ctx zpad;
    uint8_t zeros[128] = {0};
    sha512_init(&zpad);
    sha512_update(&zpad, zeros, 128);
    size_t slots = path == PATH_IFMA ? 8 * (((size_t)n + 7) / 8) : (size_t)(n ? n : 1); /* fe per array */
    xs = PyMem_Malloc(sizeof(fe) * slots);
    zs = PyMem_Malloc(sizeof(fe) * slots);
    pre = PyMem_Malloc(sizeof(fe) * slots);
    ok = PyMem_Malloc(slots);
    out = PyBytes_FromStringAndSize(NULL, 32 * n);
    fallback = PyList_New(0);
    uniform = PyMem_Malloc(96 * H2C_BLOCK);
    maps = PyMem_Malloc(sizeof(ell2_state) * 2 * H2C_BLOCK);
    powers = PyMem_Malloc(sizeof(fe) * 2 * H2C_BLOCK);
    if (!xs || !zs || !pre || !ok || !out || !fallback || !uniform || !maps || !powers) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    uint64_t(*x8)[5][8] = (uint64_t(*)[5][8])xs, (*z8)[5][8] = (uint64_t(*)[5][8])zs;
    for (Py_ssize_t start = 0; start < n; start += H2C_BLOCK) {
        Py_ssize_t count = n - start < H2C_BLOCK ? n - start : H2C_BLOCK;
        const uint8_t *data[H2C_BLOCK];
        size_t len[H2C_BLOCK];
        if (h2c_messages(data, len, items + start, count) < 0) goto done;
        for (Py_ssize_t group = 0; group < count; group += 8) {
            size_t lanes = count - group < 8 ? (size_t)(count - group) : 8;
            h2c_uniform(uniform + group, data + group, len + group, lanes, &zpad, dst_prime,
                        dst_prime_len, path);
            if (path != PATH_IFMA) continue;
            uint64_t u[2][5][8] = {{{0}}}; /* a short last group's filler lanes: u = 0, left unfinished */
            for (size_t lane = 0; lane < lanes; lane++)
                for (int k = 0; k < 2; k++) {
                    fe r;
                    fe_from48_be(r, uniform[group + lane] + 48 * k);
                    for (int i = 0; i < 5; i++) u[k][i][lane] = r[i];
                }
            size_t g = (size_t)(start + group) / 8;
            x25519_ifma_h2c_8((const uint64_t(*)[5][8])u, SQRT_M1, C2, x8[g], z8[g], ok + 8 * g);
        }
        if (path != PATH_IFMA)
            h2c_block_portable(xs + start, zs + start, ok + start, maps, powers, uniform, (size_t)count);
    }
    /* One inversion for the batch: prefix products, invert the total, walk back (eight lanes wide on IFMA). */
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    if (n > 0 && path == PATH_IFMA) {
        x25519_ifma_divide_8(x8, (const uint64_t(*)[5][8])z8, (uint64_t(*)[5][8])pre, ((size_t)n + 7) / 8);
        for (Py_ssize_t i = 0; i < n; i++) {
            fe u;
            for (int k = 0; k < 5; k++) u[k] = x8[i / 8][k][i % 8];
            fe_tobytes(o + 32 * i, u);
        }
    } else if (n > 0) {
        fe acc, inv;
        fe_set_small(acc, 1);
        for (Py_ssize_t i = 0; i < n; i++) {
            fe_copy(pre[i], acc); /* product of zs[0..i-1] */
            fe_mul(acc, acc, zs[i]);
        }
        fe_invert(inv, acc); /* 1 / (z_0 ... z_{n-1}) */
        for (Py_ssize_t i = n - 1; i >= 0; i--) {
            fe zi_inv, u;
            fe_mul(zi_inv, inv, pre[i]); /* 1 / z_i */
            fe_mul(inv, inv, zs[i]);
            fe_mul(u, xs[i], zi_inv);
            fe_tobytes(o + 32 * i, u);
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!ok[i]) {
            memset(o + 32 * i, 0, 32);
            PyObject *index = Py_BuildValue("(nO)", i, items[i]); /* the message as this batch read it */
            if (!index || PyList_Append(fallback, index) < 0) {
                Py_XDECREF(index);
                goto done;
            }
            Py_DECREF(index);
        }
    }
    result = PyTuple_Pack(2, out, fallback);
done:
    PyBuffer_Release(&dst);
    Py_XDECREF(seq);
    Py_XDECREF(out);
    Py_XDECREF(fallback);
    PyMem_Free(xs);
    PyMem_Free(zs);
    PyMem_Free(pre);
    PyMem_Free(ok);
    PyMem_Free(uniform);
    PyMem_Free(maps);
    PyMem_Free(powers);
    return result;
}

/* The bytes of `view` for reading without the GIL: the buffer itself when it is an immutable bytes object, else a
   copy taken now (another thread may rewrite a bytearray or memoryview while the kernel runs), which the caller
   frees with PyMem_Free. NULL with MemoryError when the copy cannot be made. */
static const uint8_t *owned_bytes(const Py_buffer *view, uint8_t **copy) {
    *copy = NULL;
    if (view->obj && PyBytes_CheckExact(view->obj)) return view->buf;
    *copy = PyMem_Malloc(view->len ? (size_t)view->len : 1);
    if (!*copy) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(*copy, view->buf, (size_t)view->len);
    return *copy;
}

static PyObject *py_x25519_batch(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer key, points;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "y*y*|z", &key, &points, &name)) return NULL;
    PyObject *out = NULL;
    uint8_t k[32], *copy = NULL;
    enum x25519_path path;
    if (key.len != 32) {
        PyErr_Format(PyExc_ValueError, "an X25519 key is 32 bytes, got %zd", key.len);
        goto done;
    }
    if (points.len % 32) {
        PyErr_Format(PyExc_ValueError, "%zd bytes is not a whole number of 32-byte points", points.len);
        goto done;
    }
    if (choose_path(name, &path) < 0) goto done;
    const uint8_t *p = owned_bytes(&points, &copy);
    if (!p) goto done;
    out = PyBytes_FromStringAndSize(NULL, points.len);
    if (!out) goto done;
    {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        size_t n = (size_t)points.len / 32;
        int failed;
        memcpy(k, key.buf, 32); /* the key read under the GIL: the kernel works on this copy only */
        Py_BEGIN_ALLOW_THREADS failed = x25519_batch(k, p, o, n, path);
        Py_END_ALLOW_THREADS
        if (failed) {
            Py_CLEAR(out);
            PyErr_NoMemory();
        }
    }
done:
    wipe_memset(k, 0, sizeof k);
    PyMem_Free(copy);
    PyBuffer_Release(&key);
    PyBuffer_Release(&points);
    return out;
}

static PyObject *py_on_curve_batch(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer points;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "y*|z", &points, &name)) return NULL;
    PyObject *out = NULL;
    uint8_t *copy = NULL;
    enum x25519_path path;
    if (points.len % 32) {
        PyErr_Format(PyExc_ValueError, "%zd bytes is not a whole number of 32-byte points", points.len);
        goto done;
    }
    if (choose_path(name, &path) < 0) goto done;
    const uint8_t *p = owned_bytes(&points, &copy);
    if (!p) goto done;
    out = PyBytes_FromStringAndSize(NULL, points.len / 32);
    if (!out) goto done;
    {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        size_t n = (size_t)points.len / 32;
        Py_BEGIN_ALLOW_THREADS on_curve_batch(p, o, n, path);
        Py_END_ALLOW_THREADS
    }
done:
    PyMem_Free(copy);
    PyBuffer_Release(&points);
    return out;
}

/* sha512_batch(msgs, path=None): SHA-512 of each message, packed, with the SHA-512 the hash to curve's path uses
   (eight messages at once on "avx512ifma", one at a time on "portable"): the check of both against hashlib. */
static PyObject *py_sha512_batch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *msgs, *seq, *out = NULL;
    const char *name = NULL;
    enum x25519_path path;
    if (!PyArg_ParseTuple(args, "O|z", &msgs, &name)) return NULL;
    if (choose_path(name, &path) < 0) return NULL;
    seq = message_tuple(msgs, "sha512_batch takes a sequence of bytes");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    out = PyBytes_FromStringAndSize(NULL, 64 * n);
    if (!out) goto done;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t group = 0; group < n; group += 8) {
        size_t lanes = n - group < 8 ? (size_t)(n - group) : 8;
        const uint8_t *data[8];
        size_t len[8];
        if (h2c_messages(data, len, items + group, (Py_ssize_t)lanes) < 0) {
            Py_CLEAR(out);
            goto done;
        }
        if (path == PATH_IFMA && sha512_mb_ok) {
            sha512_mb8(o + 64 * group, data, len, lanes);
        } else {
            for (size_t lane = 0; lane < lanes; lane++) {
                sha512_ctx c;
                sha512_init(&c);
                sha512_update(&c, data[lane], len[lane]);
                sha512_final(&c, o + 64 * (group + (Py_ssize_t)lane));
            }
        }
    }
done:
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"hash_to_u_batch", py_hash_to_u_batch, METH_VARARGS,
     "hash_to_u_batch(msgs, dst, path=None) -> (packed 32-byte u per message, (index, message) left to Python); "
     "path 'avx512ifma' (eight messages at once) or 'portable' (one at a time) forces one"},
    {"on_curve_batch", py_on_curve_batch, METH_VARARGS,
     "on_curve_batch(points, path=None) -> one byte per packed 32-byte u: 1 when u^3 + A u^2 + u is a nonzero "
     "square (on curve25519, not the twist), else 0"},
    {"x25519_batch", py_x25519_batch, METH_VARARGS,
     "x25519_batch(key, points, path=None) -> RFC 7748 X25519(key, u) for each packed 32-byte u, packed; path "
     "'avx512ifma' or 'portable' forces one (default: the fastest this CPU runs)"},
    {"sha512_batch", py_sha512_batch, METH_VARARGS,
     "sha512_batch(msgs, path=None) -> packed SHA-512 of each message with the hash to curve's SHA-512 on that path "
     "(eight at a time on 'avx512ifma'): a test hook"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_curve25519", "Native RFC 9380 hash to curve, point checks and batched X25519.", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__curve25519(void) {
    fe_frombytes(SQRT_M1, SQRT_M1_BYTES);
    fe_frombytes(C2, C2_BYTES);
    ifma_ok = x25519_ifma_available();
    sha512_mb_ok = sha512_mb_available();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *paths = ifma_ok ? Py_BuildValue("(ss)", "avx512ifma", "portable") : Py_BuildValue("(s)", "portable");
    if (!paths || PyModule_AddObject(m, "X25519_PATHS", paths) < 0) {
        Py_XDECREF(paths);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "SOURCE_SHA256", CLEANROOM_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
