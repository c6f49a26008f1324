/*
 * Eight X25519 Montgomery ladders at once with AVX-512 IFMA: one point per 64-bit lane of a zmm register, the same
 * scalar in every lane. Compiled into the `_curve25519` extension beside _curve25519.c, which encodes and decodes
 * the points, pads a batch to a multiple of 8, chooses this path at run time and keeps a portable C ladder for
 * machines without IFMA.
 *
 * What it computes:
 * - x25519_ifma_ladder8 takes a clamped scalar and eight u-coordinates as radix-2^51 limbs (each below 2^51, as
 *   fe_frombytes in _curve25519.c leaves them) and returns, per lane, the limbs of x2 and z2 at the end of RFC 7748
 *   section 5's ladder, step for step (a24 = 121665, the conditional swap before each step and once at the end).
 *   The caller computes X25519(k, u) = x2 * z2^(p - 2) for a block of points with one inversion (Montgomery's
 *   trick, x25519_finish in _curve25519.c), keeping the RFC's 0 for a point of low order (z2 = 0). Tested equal
 *   to `cryptography` on random keys and points, on u >= p, on points of low order in every lane and on the
 *   RFC 7748 vectors (tests/unit/cleanroom_client/test_x25519.py).
 * - x25519_ifma_h2c_8 and x25519_ifma_divide_8 (in _h2c_ifma.h, included at the end of the x86-64 part): the native
 *   hash to curve's Elligator 2, sum, cofactor clearing and division for eight messages at once (public values;
 *   tested through hash_to_u_batch against the Python path and the RFC 9380 vectors).
 * - x25519_ifma_euler_8 raises eight to (p - 1) / 2: Euler's criterion, the curve-or-twist check of a peer's
 *   points (public values; tested through check_points against gmpy2's Legendre symbol).
 *
 * Secrets: the scalar is the member's blinding key. The ladder is constant time in it: the only use of a scalar
 * bit is to build an all-ones or all-zero mask that XOR-swaps two ladder registers (no branch, no memory address
 * depends on it); every lane and every call runs the same instruction stream, 255 ladder steps, whatever the key.
 * The ladder's working values (which reveal the key's bits when read in sequence) live in the array `s`, wiped
 * with a memset the compiler cannot drop before return; the caller wipes its clamped copy of the key and the x2,
 * z2 it receives. Registers the compiler spills to the stack (this function's frame is about 8.7 KB at -O3, `s`
 * 4.8 KB of it) are outside `s`: C gives no handle on them here, so x25519_batch overwrites the stack below its
 * frame before it returns (burn_stack in _curve25519.c; tested by reading the dead stack for the ladder's final
 * values in test_x25519.py). The zmm registers themselves are zeroed before return (zero_zmm). The u-coordinates are public (blinded values the peer already holds), so nothing here hides
 * them.
 *
 * Field arithmetic mod p = 2^255 - 19, radix 2^51 in five 64-bit lanes, products with vpmadd52luq / vpmadd52huq
 * (52-bit multiplies giving the low and high 52 bits of a 104-bit product). The multiplication and squaring
 * schedules and their reduction by 19 follow curve25519-dalek's IFMA backend
 * (src/backend/vector/ifma/field.rs, F51x4Reduced::mul and ::square, by Henry de Valence), widened here from
 * four to eight lanes, except the fold of columns 5..9 back by 19: done here with 64-bit shifts and adds (the
 * columns stay below 2^56, so 19 times one plus its partner stays below 2^61), which leaves the multiply pipes to
 * the 25 (15 when squaring) products; the ladder itself is RFC 7748's. Bounds: "reduced" limbs are below 2^52
 * (IFMA reads only the low 52 bits of its inputs); every product, sum and difference is brought back to reduced
 * form before it is multiplied again.
 *
 * The functions carry __attribute__((target(...))) so the extension builds with plain -O3 for any x86-64;
 * x25519_ifma_available() says whether the CPU (and the OS, which must save zmm state) can run them. On other
 * architectures this file compiles to nothing but a stub that reports "not available".
 */
#include <stdint.h>
#include <string.h>

int x25519_ifma_available(void);
void x25519_ifma_ladder8(const uint8_t scalar[32], const uint64_t u[5][8], uint64_t x2[5][8], uint64_t z2[5][8]);
void x25519_ifma_euler_8(const uint64_t in[5][8], uint64_t out[5][8]);
void x25519_ifma_h2c_8(const uint64_t u[2][5][8], const uint64_t sqrt_m1[5], const uint64_t c2[5], uint64_t X[5][8],
                       uint64_t Z[5][8], uint8_t ok[8]);
void x25519_ifma_divide_8(uint64_t (*X)[5][8], const uint64_t (*Z)[5][8], uint64_t (*pre)[5][8], size_t count);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define IFMA __attribute__((target("avx512f,avx512ifma,avx512vl")))
#define IFMA_INLINE static inline __attribute__((always_inline, target("avx512f,avx512ifma,avx512vl")))

typedef struct {
    __m512i v[5];
} fe8;

static void *(*const volatile wipe_memset)(void *, int, size_t) = memset;

int x25519_ifma_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma") &&
           __builtin_cpu_supports("avx512vl");
}

#define LO(z, x, y) _mm512_madd52lo_epu64((z), (x), (y))
#define HI(z, x, y) _mm512_madd52hi_epu64((z), (x), (y))
#define ADD(a, b) _mm512_add_epi64((a), (b))
#define SHR(a, n) _mm512_srli_epi64((a), (n))

/* Limbs below 2^64 to limbs below 2^51 + 2^18 (reduced): each limb's carry moves up one limb at once, the top
   one back to limb 0 times 19 (dalek's From<F51x4Unreduced>). */
IFMA_INLINE void fe8_reduce(fe8 *h, const __m512i z[5]) {
    const __m512i mask = _mm512_set1_epi64((1LL << 51) - 1), r19 = _mm512_set1_epi64(19);
    __m512i c0 = SHR(z[0], 51), c1 = SHR(z[1], 51), c2 = SHR(z[2], 51), c3 = SHR(z[3], 51), c4 = SHR(z[4], 51);
    h->v[0] = LO(_mm512_and_si512(z[0], mask), c4, r19);
    h->v[1] = ADD(_mm512_and_si512(z[1], mask), c0);
    h->v[2] = ADD(_mm512_and_si512(z[2], mask), c1);
    h->v[3] = ADD(_mm512_and_si512(z[3], mask), c2);
    h->v[4] = ADD(_mm512_and_si512(z[4], mask), c3);
}

/* 19 x for x below 2^59, in 64-bit lanes: x + 2 x + 16 x. */
IFMA_INLINE __m512i times19(__m512i x) {
    return ADD(ADD(x, _mm512_slli_epi64(x, 1)), _mm512_slli_epi64(x, 4));
}

IFMA_INLINE void fe8_add(fe8 *h, const fe8 *f, const fe8 *g) {
    __m512i z[5];
    for (int i = 0; i < 5; i++) z[i] = ADD(f->v[i], g->v[i]);
    fe8_reduce(h, z);
}

/* f - g as f + 16p - g: no lane goes negative for reduced g (limbs below 2^52 < 16p's limbs). */
IFMA_INLINE void fe8_sub(fe8 *h, const fe8 *f, const fe8 *g) {
    const __m512i lo = _mm512_set1_epi64(36028797018963664LL), hi = _mm512_set1_epi64(36028797018963952LL);
    __m512i z[5];
    z[0] = _mm512_sub_epi64(ADD(f->v[0], lo), g->v[0]);
    for (int i = 1; i < 5; i++) z[i] = _mm512_sub_epi64(ADD(f->v[i], hi), g->v[i]);
    fe8_reduce(h, z);
}

/* Column sums z_k at weight 2^(51 k): the _1 accumulators count once, the _2 ones twice (a high half of a 52-bit
   product sits at 2^52 = 2 * 2^51). Columns 5..9 fold back to 0..4 times 19, split so that IFMA only ever sees
   inputs below 2^52 (dalek's F51x4Reduced::mul). */
IFMA_INLINE void fe8_mul(fe8 *h, const fe8 *fx, const fe8 *fy) {
    const __m512i *x = fx->v, *y = fy->v;
    const __m512i zero = _mm512_setzero_si512();
    __m512i z0_1 = zero, z1_1 = zero, z2_1 = zero, z3_1 = zero, z4_1 = zero, z5_1 = zero, z6_1 = zero,
            z7_1 = zero, z8_1 = zero;
    __m512i z0_2 = zero, z1_2 = zero, z2_2 = zero, z3_2 = zero, z4_2 = zero, z5_2 = zero, z6_2 = zero,
            z7_2 = zero, z8_2 = zero, z9_2 = zero;

    z4_1 = LO(z4_1, x[2], y[2]);
    z5_2 = HI(z5_2, x[2], y[2]);
    z5_1 = LO(z5_1, x[4], y[1]);
    z6_2 = HI(z6_2, x[4], y[1]);
    z6_1 = LO(z6_1, x[4], y[2]);
    z7_2 = HI(z7_2, x[4], y[2]);
    z7_1 = LO(z7_1, x[4], y[3]);
    z8_2 = HI(z8_2, x[4], y[3]);

    z4_1 = LO(z4_1, x[3], y[1]);
    z5_2 = HI(z5_2, x[3], y[1]);
    z5_1 = LO(z5_1, x[3], y[2]);
    z6_2 = HI(z6_2, x[3], y[2]);
    z6_1 = LO(z6_1, x[3], y[3]);
    z7_2 = HI(z7_2, x[3], y[3]);
    z7_1 = LO(z7_1, x[3], y[4]);
    z8_2 = HI(z8_2, x[3], y[4]);

    z8_1 = LO(z8_1, x[4], y[4]);
    z9_2 = HI(z9_2, x[4], y[4]);
    z4_1 = LO(z4_1, x[4], y[0]);
    z5_2 = HI(z5_2, x[4], y[0]);
    z5_1 = LO(z5_1, x[2], y[3]);
    z6_2 = HI(z6_2, x[2], y[3]);
    z6_1 = LO(z6_1, x[2], y[4]);
    z7_2 = HI(z7_2, x[2], y[4]);
    __m512i z8 = ADD(z8_1, ADD(z8_2, z8_2));
    __m512i z9 = ADD(z9_2, z9_2);

    z3_1 = LO(z3_1, x[3], y[0]);
    z4_2 = HI(z4_2, x[3], y[0]);
    z4_1 = LO(z4_1, x[1], y[3]);
    z5_2 = HI(z5_2, x[1], y[3]);
    z5_1 = LO(z5_1, x[1], y[4]);
    z6_2 = HI(z6_2, x[1], y[4]);
    z2_1 = LO(z2_1, x[2], y[0]);
    z3_2 = HI(z3_2, x[2], y[0]);
    __m512i z6 = ADD(z6_1, ADD(z6_2, z6_2));
    __m512i z7 = ADD(z7_1, ADD(z7_2, z7_2));

    z3_1 = LO(z3_1, x[2], y[1]);
    z4_2 = HI(z4_2, x[2], y[1]);
    z4_1 = LO(z4_1, x[0], y[4]);
    z5_2 = HI(z5_2, x[0], y[4]);
    z1_1 = LO(z1_1, x[1], y[0]);
    z2_2 = HI(z2_2, x[1], y[0]);
    z2_1 = LO(z2_1, x[1], y[1]);
    z3_2 = HI(z3_2, x[1], y[1]);
    __m512i z5 = ADD(z5_1, ADD(z5_2, z5_2));

    z3_1 = LO(z3_1, x[1], y[2]);
    z4_2 = HI(z4_2, x[1], y[2]);
    z0_1 = LO(z0_1, x[0], y[0]);
    z1_2 = HI(z1_2, x[0], y[0]);
    z1_1 = LO(z1_1, x[0], y[1]);
    z2_1 = LO(z2_1, x[0], y[2]);
    z2_2 = HI(z2_2, x[0], y[1]);
    z3_2 = HI(z3_2, x[0], y[2]);

    z3_1 = LO(z3_1, x[0], y[3]);
    z4_2 = HI(z4_2, x[0], y[3]);

    /* Columns 0..4 (below 2^56 each) plus 19 times columns 5..9 (below 2^56): below 2^61, so 64-bit shifts and
       adds fold them, leaving the multiply pipes to the products. */
    __m512i z[5] = {ADD(z0_1, ADD(z0_2, z0_2)), ADD(z1_1, ADD(z1_2, z1_2)), ADD(z2_1, ADD(z2_2, z2_2)),
                    ADD(z3_1, ADD(z3_2, z3_2)), ADD(z4_1, ADD(z4_2, z4_2))};
    z[0] = ADD(z[0], times19(z5));
    z[1] = ADD(z[1], times19(z6));
    z[2] = ADD(z[2], times19(z7));
    z[3] = ADD(z[3], times19(z8));
    z[4] = ADD(z[4], times19(z9));
    fe8_reduce(h, z);
}

/* Squaring with the cross terms counted once and doubled (dalek's F51x4Reduced::square): _2 and _4 accumulators
   count two and four times. */
IFMA_INLINE void fe8_sq(fe8 *h, const fe8 *fx) {
    const __m512i *x = fx->v;
    const __m512i zero = _mm512_setzero_si512();
    __m512i z0_2 = zero, z1_2 = zero, z2_2 = zero, z3_2 = zero, z4_2 = zero, z5_2 = zero, z6_2 = zero,
            z7_2 = zero, z9_2 = zero;
    __m512i z2_4 = zero, z3_4 = zero, z4_4 = zero, z5_4 = zero, z6_4 = zero, z7_4 = zero, z8_4 = zero;

    __m512i z0_1 = LO(zero, x[0], x[0]);

    __m512i z1_1 = zero;
    z1_2 = LO(z1_2, x[0], x[1]);
    z1_2 = HI(z1_2, x[0], x[0]);

    z2_4 = HI(z2_4, x[0], x[1]);
    __m512i z2_1 = _mm512_slli_epi64(z2_4, 2);
    z2_2 = LO(z2_2, x[0], x[2]);
    z2_1 = LO(z2_1, x[1], x[1]);

    z3_4 = HI(z3_4, x[0], x[2]);
    __m512i z3_1 = _mm512_slli_epi64(z3_4, 2);
    z3_2 = LO(z3_2, x[1], x[2]);
    z3_2 = LO(z3_2, x[0], x[3]);
    z3_2 = HI(z3_2, x[1], x[1]);

    z4_4 = HI(z4_4, x[1], x[2]);
    z4_4 = HI(z4_4, x[0], x[3]);
    __m512i z4_1 = _mm512_slli_epi64(z4_4, 2);
    z4_2 = LO(z4_2, x[1], x[3]);
    z4_2 = LO(z4_2, x[0], x[4]);
    z4_1 = LO(z4_1, x[2], x[2]);

    z5_4 = HI(z5_4, x[1], x[3]);
    z5_4 = HI(z5_4, x[0], x[4]);
    __m512i z5_1 = _mm512_slli_epi64(z5_4, 2);
    z5_2 = LO(z5_2, x[2], x[3]);
    z5_2 = LO(z5_2, x[1], x[4]);
    z5_2 = HI(z5_2, x[2], x[2]);

    z6_4 = HI(z6_4, x[2], x[3]);
    z6_4 = HI(z6_4, x[1], x[4]);
    __m512i z6_1 = _mm512_slli_epi64(z6_4, 2);
    z6_2 = LO(z6_2, x[2], x[4]);
    z6_1 = LO(z6_1, x[3], x[3]);

    z7_4 = HI(z7_4, x[2], x[4]);
    __m512i z7_1 = _mm512_slli_epi64(z7_4, 2);
    z7_2 = LO(z7_2, x[3], x[4]);
    z7_2 = HI(z7_2, x[3], x[3]);

    z8_4 = HI(z8_4, x[3], x[4]);
    __m512i z8_1 = _mm512_slli_epi64(z8_4, 2);
    z8_1 = LO(z8_1, x[4], x[4]);

    __m512i z9_1 = zero;
    z9_2 = HI(z9_2, x[4], x[4]);

    z5_1 = ADD(z5_1, _mm512_slli_epi64(z5_2, 1));
    z6_1 = ADD(z6_1, _mm512_slli_epi64(z6_2, 1));
    z7_1 = ADD(z7_1, _mm512_slli_epi64(z7_2, 1));
    z9_1 = ADD(z9_1, _mm512_slli_epi64(z9_2, 1));

    __m512i z[5] = {ADD(z0_1, ADD(z0_2, z0_2)), ADD(z1_1, ADD(z1_2, z1_2)), ADD(z2_1, ADD(z2_2, z2_2)),
                    ADD(z3_1, ADD(z3_2, z3_2)), ADD(z4_1, ADD(z4_2, z4_2))};
    z[0] = ADD(z[0], times19(z5_1));
    z[1] = ADD(z[1], times19(z6_1));
    z[2] = ADD(z[2], times19(z7_1));
    z[3] = ADD(z[3], times19(z8_1));
    z[4] = ADD(z[4], times19(z9_1));
    fe8_reduce(h, z);
}

/* f times a constant below 2^17 (a24): dalek's Mul<(u32, u32, u32, u32)>. */
IFMA_INLINE void fe8_mul_small(fe8 *h, const fe8 *fx, uint64_t s) {
    const __m512i *x = fx->v;
    const __m512i zero = _mm512_setzero_si512(), r19 = _mm512_set1_epi64(19), y = _mm512_set1_epi64((long long)s);
    __m512i z0_1 = LO(zero, y, x[0]), z1_1 = LO(zero, y, x[1]), z2_1 = LO(zero, y, x[2]), z3_1 = LO(zero, y, x[3]),
            z4_1 = LO(zero, y, x[4]);
    __m512i z1_2 = HI(zero, y, x[0]), z2_2 = HI(zero, y, x[1]), z3_2 = HI(zero, y, x[2]), z4_2 = HI(zero, y, x[3]),
            z5_2 = HI(zero, y, x[4]);
    z0_1 = LO(z0_1, ADD(z5_2, z5_2), r19);
    __m512i z[5] = {z0_1, ADD(z1_1, ADD(z1_2, z1_2)), ADD(z2_1, ADD(z2_2, z2_2)), ADD(z3_1, ADD(z3_2, z3_2)),
                    ADD(z4_1, ADD(z4_2, z4_2))};
    fe8_reduce(h, z);
}

IFMA_INLINE void fe8_sqn(fe8 *h, const fe8 *f, int n) {
    fe8_sq(h, f);
    for (int i = 1; i < n; i++) fe8_sq(h, h);
}

/* out = a^(2^n) b (out may alias a or b). */
IFMA_INLINE void fe8_sqn_mul(fe8 *out, const fe8 *a, int n, const fe8 *b) {
    fe8 t;
    fe8_sqn(&t, a, n);
    fe8_mul(out, &t, b);
}

/* z^(2^250 - 1) into t250 and z^11 into z11: the shared start of inversion and of the square-root exponent, with
   the addition chain of fe_pow_2_250_1 in _curve25519.c. */
static IFMA void fe8_pow_2_250_1(fe8 *t250, fe8 *z11, const fe8 *z) {
    fe8 z2, z9, t0, t1;
    fe8_sq(&z2, z);
    fe8_sqn(&t1, &z2, 2);
    fe8_mul(&z9, &t1, z);
    fe8_mul(z11, &z9, &z2);
    fe8_sq(&t0, z11);
    fe8_mul(&t0, &t0, &z9);           /* 2^5 - 1 */
    fe8_sqn_mul(&t0, &t0, 5, &t0);    /* 2^10 - 1 */
    fe8_sqn_mul(&t1, &t0, 10, &t0);   /* 2^20 - 1 */
    fe8_sqn_mul(&t1, &t1, 20, &t1);   /* 2^40 - 1 */
    fe8_sqn_mul(&t0, &t1, 10, &t0);   /* 2^50 - 1 */
    fe8_sqn_mul(&t1, &t0, 50, &t0);   /* 2^100 - 1 */
    fe8_sqn_mul(&t1, &t1, 100, &t1);  /* 2^200 - 1 */
    fe8_sqn_mul(t250, &t1, 50, &t0);  /* 2^250 - 1 */
}

/* Eight z^((p - 1) / 2) = z^(2^254 - 10) at once: Euler's criterion (1 for a nonzero square, p - 1 for a
   non-square, 0 for 0), the curve-or-twist test of points received from a peer (public values). */
void IFMA x25519_ifma_euler_8(const uint64_t in[5][8], uint64_t out[5][8]) {
    fe8 z, t, z11, z2, z6;
    for (int i = 0; i < 5; i++) z.v[i] = _mm512_loadu_si512((const void *)in[i]);
    fe8_pow_2_250_1(&t, &z11, &z);
    fe8_sqn(&t, &t, 4); /* 2^254 - 16 */
    fe8_sq(&z2, &z);
    fe8_sq(&z6, &z2);
    fe8_mul(&z6, &z6, &z2);
    fe8_mul(&t, &t, &z6);
    for (int i = 0; i < 5; i++) _mm512_storeu_si512((void *)out[i], t.v[i]);
}

/* Swaps f and g in every lane where mask is all ones, nothing where it is zero; the same instructions either way. */
IFMA_INLINE void fe8_cswap(fe8 *f, fe8 *g, __m512i mask) {
    for (int i = 0; i < 5; i++) {
        __m512i t = _mm512_and_si512(mask, _mm512_xor_si512(f->v[i], g->v[i]));
        f->v[i] = _mm512_xor_si512(f->v[i], t);
        g->v[i] = _mm512_xor_si512(g->v[i], t);
    }
}

enum { X1, X2, Z2, X3, Z3, A_, AA, B_, BB, C_, D_, DA, CB, E_, T_, NSTATE };

/* Zeroes zmm0..zmm31, where the ladder leaves its last working values: zmm16..31 are used only by AVX-512 code, so
   without this they keep them until such code next runs (or the kernel saves them at a context switch). VZEROALL
   clears zmm0..15 whole; the upper sixteen need their own instruction. */
static IFMA void zero_zmm(void) {
    __asm__ __volatile__(
        "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
        "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
        "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
        "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
        "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
        "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
        "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
        "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31\n\t"
        "vzeroall"
        :
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
          "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
          "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory");
}

void IFMA x25519_ifma_ladder8(const uint8_t scalar[32], const uint64_t u[5][8], uint64_t x2[5][8],
                              uint64_t z2[5][8]) {
    fe8 s[NSTATE];
    for (int i = 0; i < 5; i++) {
        s[X1].v[i] = _mm512_loadu_si512((const void *)u[i]);
        s[X3].v[i] = s[X1].v[i];
        s[X2].v[i] = s[Z3].v[i] = _mm512_set1_epi64(i == 0);
        s[Z2].v[i] = _mm512_setzero_si512();
    }
    uint64_t swap = 0;
    for (int t = 254; t >= 0; t--) {
        uint64_t bit = (scalar[t >> 3] >> (t & 7)) & 1;
        swap ^= bit;
        __m512i mask = _mm512_set1_epi64((long long)(0 - swap));
        fe8_cswap(&s[X2], &s[X3], mask);
        fe8_cswap(&s[Z2], &s[Z3], mask);
        swap = bit;
        fe8_add(&s[A_], &s[X2], &s[Z2]);
        fe8_sq(&s[AA], &s[A_]);
        fe8_sub(&s[B_], &s[X2], &s[Z2]);
        fe8_sq(&s[BB], &s[B_]);
        fe8_sub(&s[E_], &s[AA], &s[BB]);
        fe8_add(&s[C_], &s[X3], &s[Z3]);
        fe8_sub(&s[D_], &s[X3], &s[Z3]);
        fe8_mul(&s[DA], &s[D_], &s[A_]);
        fe8_mul(&s[CB], &s[C_], &s[B_]);
        fe8_add(&s[T_], &s[DA], &s[CB]);
        fe8_sq(&s[X3], &s[T_]);
        fe8_sub(&s[T_], &s[DA], &s[CB]);
        fe8_sq(&s[T_], &s[T_]);
        fe8_mul(&s[Z3], &s[X1], &s[T_]);
        fe8_mul(&s[X2], &s[AA], &s[BB]);
        fe8_mul_small(&s[T_], &s[E_], 121665);
        fe8_add(&s[T_], &s[AA], &s[T_]);
        fe8_mul(&s[Z2], &s[E_], &s[T_]);
    }
    __m512i mask = _mm512_set1_epi64((long long)(0 - swap));
    fe8_cswap(&s[X2], &s[X3], mask);
    fe8_cswap(&s[Z2], &s[Z3], mask);
    for (int i = 0; i < 5; i++) {
        _mm512_storeu_si512((void *)x2[i], s[X2].v[i]);
        _mm512_storeu_si512((void *)z2[i], s[Z2].v[i]);
    }
    swap = 0;
    wipe_memset(s, 0, sizeof s);
    zero_zmm();
}

/* Eight messages' Elligator 2, sum and cofactor clearing, and the batch's division, on the field code above. */
#include "_h2c_ifma.h"

#else /* not x86-64: the portable ladder in _curve25519.c runs */

int x25519_ifma_available(void) { return 0; }

void x25519_ifma_ladder8(const uint8_t scalar[32], const uint64_t u[5][8], uint64_t x2[5][8], uint64_t z2[5][8]) {
    (void)scalar;
    (void)u;
    memset(x2, 0, sizeof(uint64_t[5][8]));
    memset(z2, 0, sizeof(uint64_t[5][8]));
}

void x25519_ifma_euler_8(const uint64_t in[5][8], uint64_t out[5][8]) {
    (void)in;
    memset(out, 0, sizeof(uint64_t[5][8]));
}

void x25519_ifma_h2c_8(const uint64_t u[2][5][8], const uint64_t sqrt_m1[5], const uint64_t c2[5], uint64_t X[5][8],
                       uint64_t Z[5][8], uint8_t ok[8]) {
    (void)u;
    (void)sqrt_m1;
    (void)c2;
    memset(X, 0, sizeof(uint64_t[5][8]));
    memset(Z, 0, sizeof(uint64_t[5][8]));
    memset(ok, 0, 8);
}

void x25519_ifma_divide_8(uint64_t (*X)[5][8], const uint64_t (*Z)[5][8], uint64_t (*pre)[5][8], size_t count) {
    (void)X;
    (void)Z;
    (void)pre;
    (void)count;
}

#endif
