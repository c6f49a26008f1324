/*
 * The native hash to curve's field work for eight messages at once with AVX-512 IFMA, one message per 64-bit lane:
 * Elligator 2 on both field elements of each message (RFC 9380 appendix G.2.1, its two exponentiations for eight
 * messages interleaved as sixteen lanes), the sum of the two points and the cofactor clearing (as fractions X / Z),
 * and the batch's division u = X / Z with one inversion. The eight-lane twin of _elligator2.h, step for step the
 * same values: the RFC's square tests and sign choice are made per lane with masks instead of branches. Used by
 * hash_to_u_batch in _curve25519.c on the "avx512ifma" path (after the eight-lane SHA-512 of _sha512_mb.h); the
 * portable path runs _elligator2.h. Tested equal to the Python path and the RFC vectors, per path, in
 * tests/unit/cleanroom_client/test_curve.py.
 *
 * Public inputs only (the member's RFC 9380 messages, see _curve25519.c): no constant-time promise.
 *
 * Part of the SDK's extension: included once, by _x25519_ifma.c, inside its x86-64 part after the fe8 field code
 * (fe8, fe8_add, fe8_sub, fe8_mul, fe8_sq, fe8_mul_small, fe8_pow_2_250_1, the IFMA target attributes), so that
 * the field code stays in one place.
 */
#ifndef CLEANROOM_H2C_IFMA_H
#define CLEANROOM_H2C_IFMA_H

/* Two independent exponentiations interleaved, op by op: two chains of squarings give the multiply pipes the one's
   work while the other waits on a product's latency. */
IFMA_INLINE void fe8_sqn_x2(fe8 h[2], const fe8 f[2], int n) {
    fe8_sq(&h[0], &f[0]);
    fe8_sq(&h[1], &f[1]);
    for (int i = 1; i < n; i++) {
        fe8_sq(&h[0], &h[0]);
        fe8_sq(&h[1], &h[1]);
    }
}

IFMA_INLINE void fe8_mul_x2(fe8 h[2], const fe8 f[2], const fe8 g[2]) {
    fe8_mul(&h[0], &f[0], &g[0]);
    fe8_mul(&h[1], &f[1], &g[1]);
}

/* out = a^(2^n) b for both halves (out may alias a or b). */
IFMA_INLINE void fe8_sqn_mul_x2(fe8 out[2], const fe8 a[2], int n, const fe8 b[2]) {
    fe8 t[2];
    fe8_sqn_x2(t, a, n);
    fe8_mul_x2(out, t, b);
}

/* out = z^((p - 5) / 8) = z^(2^252 - 3) for sixteen values (two groups of eight, interleaved), with the addition
   chain of fe_pow22523 in _fe25519.h: Elligator 2's exponentiation (public values). */
static IFMA void fe8_pow22523_x2(fe8 out[2], const fe8 z[2]) {
    fe8 z2[2], z9[2], z11[2], t0[2], t1[2];
    fe8_sqn_x2(z2, z, 1);
    fe8_sqn_x2(t1, z2, 2);
    fe8_mul_x2(z9, t1, z);
    fe8_mul_x2(z11, z9, z2);
    fe8_sqn_x2(t0, z11, 1);
    fe8_mul_x2(t0, t0, z9);          /* 2^5 - 1 */
    fe8_sqn_mul_x2(t0, t0, 5, t0);   /* 2^10 - 1 */
    fe8_sqn_mul_x2(t1, t0, 10, t0);  /* 2^20 - 1 */
    fe8_sqn_mul_x2(t1, t1, 20, t1);  /* 2^40 - 1 */
    fe8_sqn_mul_x2(t0, t1, 10, t0);  /* 2^50 - 1 */
    fe8_sqn_mul_x2(t1, t0, 50, t0);  /* 2^100 - 1 */
    fe8_sqn_mul_x2(t1, t1, 100, t1); /* 2^200 - 1 */
    fe8_sqn_mul_x2(t1, t1, 50, t0);  /* 2^250 - 1 */
    fe8_sqn_mul_x2(out, t1, 2, z);   /* 2^252 - 3 */
}

IFMA_INLINE void fe8_set(fe8 *h, const uint64_t limbs[5]) {
    for (int i = 0; i < 5; i++) h->v[i] = _mm512_set1_epi64((long long)limbs[i]);
}

/* t = f with limbs 0..3 carried into the next and the top carry folded back as 19, twice: every limb below 2^51
   and the value below 2^255 (as fe_carry twice in _fe25519.h). */
IFMA_INLINE void fe8_carry2(__m512i t[5], const fe8 *f) {
    const __m512i mask = _mm512_set1_epi64((1LL << 51) - 1);
    for (int i = 0; i < 5; i++) t[i] = f->v[i];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 4; i++) {
            t[i + 1] = ADD(t[i + 1], SHR(t[i], 51));
            t[i] = _mm512_and_si512(t[i], mask);
        }
        __m512i top = SHR(t[4], 51);
        t[4] = _mm512_and_si512(t[4], mask);
        t[0] = ADD(t[0], times19(top));
    }
}

/* The lanes where f is 0 mod p: after two carries, 0 itself or p (limbs 2^51 - 19, 2^51 - 1, ...). */
IFMA_INLINE __mmask8 fe8_zero_lanes(const fe8 *f) {
    const __m512i top = _mm512_set1_epi64((1LL << 51) - 1), zero = _mm512_setzero_si512();
    __m512i t[5];
    fe8_carry2(t, f);
    __m512i any = _mm512_or_si512(_mm512_or_si512(t[0], t[1]), _mm512_or_si512(_mm512_or_si512(t[2], t[3]), t[4]));
    __m512i all = _mm512_and_si512(_mm512_and_si512(t[1], t[2]), _mm512_and_si512(t[3], t[4]));
    return _mm512_cmpeq_epi64_mask(any, zero) |
           (_mm512_cmpeq_epi64_mask(t[0], _mm512_set1_epi64((1LL << 51) - 19)) & _mm512_cmpeq_epi64_mask(all, top));
}

/* The lanes where f's canonical value is odd (RFC 9380's sgn0): fe_canonical of _fe25519.h in eight lanes. */
IFMA_INLINE __mmask8 fe8_odd_lanes(const fe8 *f) {
    const __m512i mask = _mm512_set1_epi64((1LL << 51) - 1), one = _mm512_set1_epi64(1);
    __m512i t[5];
    fe8_carry2(t, f);
    t[0] = ADD(t[0], _mm512_set1_epi64(19)); /* passes 2^255 exactly when the value is at least p */
    for (int i = 0; i < 4; i++) {
        t[i + 1] = ADD(t[i + 1], SHR(t[i], 51));
        t[i] = _mm512_and_si512(t[i], mask);
    }
    t[0] = ADD(t[0], times19(SHR(t[4], 51))); /* what passed 2^255 comes back as 19 */
    /* fe_canonical then adds 2^255 - 19 (2^51 - 19 to limb 0, 2^51 - 1 to the others) and drops 2^255: only limb 0's
       low bit is read here, and nothing added to the other limbs reaches it. */
    t[0] = ADD(t[0], _mm512_set1_epi64((1LL << 51) - 19));
    return _mm512_test_epi64_mask(t[0], one);
}

/* Elligator 2's values before the exponentiation (elligator2_start in _elligator2.h), eight lanes. */
typedef struct {
    fe8 u, tv1, xd, gxd, gx1, tv3, tv2;
} ell2_8;

static const uint64_t ELL2_J = 486662;
/* -J mod p as limbs: p - J (J < 2^51 - 19, so only limb 0 differs from p's). */
static const uint64_t ELL2_MINUS_J[5] = {(1ULL << 51) - 19 - 486662, (1ULL << 51) - 1, (1ULL << 51) - 1,
                                         (1ULL << 51) - 1, (1ULL << 51) - 1};

IFMA_INLINE void ell2_8_start(ell2_8 *e, const fe8 *x1n) {
    static const uint64_t one_limbs[5] = {1, 0, 0, 0, 0};
    fe8 one, tv2;
    fe8_set(&one, one_limbs);
    fe8_sq(&e->tv1, &e->u);
    fe8_add(&e->tv1, &e->tv1, &e->tv1); /* 2 u^2 */
    fe8_add(&e->xd, &e->tv1, &one);
    fe8_sq(&tv2, &e->xd);
    fe8_mul(&e->gxd, &tv2, &e->xd);
    fe8_mul_small(&e->gx1, &e->tv1, ELL2_J);
    fe8_mul(&e->gx1, &e->gx1, x1n);
    fe8_add(&e->gx1, &e->gx1, &tv2);
    fe8_mul(&e->gx1, &e->gx1, x1n);
    fe8_sq(&e->tv3, &e->gxd);
    fe8_sq(&tv2, &e->tv3);
    fe8_mul(&e->tv3, &e->tv3, &e->gxd);
    fe8_mul(&e->tv3, &e->tv3, &e->gx1);
    fe8_mul(&e->tv2, &tv2, &e->tv3);
}

IFMA_INLINE void fe8_blend(fe8 *h, __mmask8 take_g, const fe8 *f, const fe8 *g) {
    for (int i = 0; i < 5; i++) h->v[i] = _mm512_mask_blend_epi64(take_g, f->v[i], g->v[i]);
}

/* The point (xn / xd, y) of each lane from tv2^((p - 5) / 8) (elligator2_finish in _elligator2.h, every candidate
   computed and the RFC's choices made per lane with masks). */
IFMA_INLINE void ell2_8_finish(fe8 *xn, fe8 *y, const ell2_8 *e, const fe8 *pow, const fe8 *x1n, const fe8 *sqrt_m1,
                               const fe8 *c2) {
    fe8 y11, y12, t, s, y21, y22, gx2, x2n, y1, y2, neg;
    fe8_mul(&y11, pow, &e->tv3);
    fe8_sq(&t, &y11);
    fe8_mul(&t, &t, &e->gxd);
    fe8_sub(&s, &t, &e->gx1);
    __mmask8 e1 = fe8_zero_lanes(&s);
    fe8_add(&s, &t, &e->gx1);
    __mmask8 e3 = e1 | fe8_zero_lanes(&s);
    fe8_mul(&y12, &y11, sqrt_m1);
    fe8_blend(&y1, e1, &y12, &y11);
    fe8_mul(&x2n, x1n, &e->tv1);
    fe8_mul(&y21, &y11, &e->u);
    fe8_mul(&y21, &y21, c2);
    fe8_mul(&y22, &y21, sqrt_m1);
    fe8_mul(&gx2, &e->gx1, &e->tv1);
    fe8_sq(&t, &y21);
    fe8_mul(&t, &t, &e->gxd);
    fe8_sub(&s, &t, &gx2);
    fe8_blend(&y2, fe8_zero_lanes(&s), &y22, &y21);
    fe8_blend(xn, e3, &x2n, x1n);
    fe8_blend(y, e3, &y2, &y1);
    fe8 zero = {{_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                 _mm512_setzero_si512()}};
    fe8_sub(&neg, &zero, y);
    fe8_blend(y, e3 ^ fe8_odd_lanes(y), y, &neg);
}

/* hash_to_uz of _elligator2.h in eight lanes: the sum of the two points as X / Z and the cofactor cleared by three
   doublings; returns the lanes it finished (D and Z nonzero), where the others get Z = 1 for the batch's inversion. */
IFMA_INLINE __mmask8 h2c8_sum(fe8 *X, fe8 *Z, const fe8 *xn1, const fe8 *xd1, const fe8 *y1, const fe8 *xn2,
                              const fe8 *xd2, const fe8 *y2) {
    fe8 a, b, D, E, dy, s, t, D2, E3;
    fe8_mul(&a, xn2, xd1);
    fe8_mul(&b, xn1, xd2);
    fe8_sub(&D, &a, &b);
    __mmask8 bad = fe8_zero_lanes(&D);
    fe8_mul(&E, xd1, xd2);
    fe8_sub(&dy, y2, y1);
    fe8_add(&s, &a, &b);
    fe8_mul_small(&t, &E, ELL2_J);
    fe8_add(&s, &s, &t);
    fe8_sq(&D2, &D);
    fe8_mul(&s, &s, &D2);
    fe8_sq(&E3, &E);
    fe8_mul(&E3, &E3, &E);
    fe8_sq(&t, &dy);
    fe8_mul(&t, &t, &E3);
    fe8_sub(X, &t, &s);
    fe8_mul(Z, &E, &D2);
    for (int i = 0; i < 3; i++) {
        fe8 xx, zz, xz, w;
        fe8_sq(&xx, X);
        fe8_sq(&zz, Z);
        fe8_mul(&xz, X, Z);
        fe8_sub(&w, &xx, &zz);
        fe8_sq(X, &w);
        fe8_mul_small(&w, &xz, ELL2_J);
        fe8_add(&w, &w, &xx);
        fe8_add(&w, &w, &zz);
        fe8_mul(&w, &w, &xz);
        fe8_mul_small(Z, &w, 4);
    }
    bad |= fe8_zero_lanes(Z);
    Z->v[0] = _mm512_mask_blend_epi64(bad, Z->v[0], _mm512_set1_epi64(1));
    for (int i = 1; i < 5; i++) Z->v[i] = _mm512_mask_blend_epi64(bad, Z->v[i], _mm512_setzero_si512());
    return (__mmask8)~bad;
}

/* Elligator 2 on both field elements of eight messages (u[0] and u[1], limbs per lane), their sum and the cofactor
   clearing: X and Z per lane (u = X / Z), and ok[lane] 1 where finished (else Z = 1; see hash_to_uz). sqrt_m1 and
   c2 are RFC 9380's c3 and c2 as limbs. Public values. */
void IFMA x25519_ifma_h2c_8(const uint64_t u[2][5][8], const uint64_t sqrt_m1[5], const uint64_t c2[5],
                            uint64_t X[5][8], uint64_t Z[5][8], uint8_t ok[8]) {
    ell2_8 e[2];
    fe8 x1n, s, c, tv2[2], pow[2], xn[2], y[2], xd[2], x, z;
    fe8_set(&x1n, ELL2_MINUS_J);
    fe8_set(&s, sqrt_m1);
    fe8_set(&c, c2);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 5; i++) e[k].u.v[i] = _mm512_loadu_si512((const void *)u[k][i]);
        ell2_8_start(&e[k], &x1n);
        tv2[k] = e[k].tv2;
    }
    fe8_pow22523_x2(pow, tv2);
    for (int k = 0; k < 2; k++) {
        ell2_8_finish(&xn[k], &y[k], &e[k], &pow[k], &x1n, &s, &c);
        xd[k] = e[k].xd;
    }
    __mmask8 done = h2c8_sum(&x, &z, &xn[0], &xd[0], &y[0], &xn[1], &xd[1], &y[1]);
    for (int i = 0; i < 5; i++) {
        _mm512_storeu_si512((void *)X[i], x.v[i]);
        _mm512_storeu_si512((void *)Z[i], z.v[i]);
    }
    for (int lane = 0; lane < 8; lane++) ok[lane] = (done >> lane) & 1;
}

/* X[g] = X[g] / Z[g] in every lane of groups g < count, with one inversion (eight lanes wide) for all: prefix
   products per lane into pre[g], 1 / the total, and the walk back (Montgomery's trick). Every Z nonzero. */
void IFMA x25519_ifma_divide_8(uint64_t (*X)[5][8], const uint64_t (*Z)[5][8], uint64_t (*pre)[5][8], size_t count) {
    static const uint64_t one_limbs[5] = {1, 0, 0, 0, 0};
    fe8 acc, inv, t, z, z11;
    fe8_set(&acc, one_limbs);
    for (size_t g = 0; g < count; g++) {
        for (int i = 0; i < 5; i++) {
            _mm512_storeu_si512((void *)pre[g][i], acc.v[i]);
            z.v[i] = _mm512_loadu_si512((const void *)Z[g][i]);
        }
        fe8_mul(&acc, &acc, &z);
    }
    fe8_pow_2_250_1(&t, &z11, &acc);
    fe8_sqn_mul(&inv, &t, 5, &z11); /* acc^(p - 2) */
    for (size_t g = count; g-- > 0;) {
        fe8 p, x;
        for (int i = 0; i < 5; i++) {
            p.v[i] = _mm512_loadu_si512((const void *)pre[g][i]);
            z.v[i] = _mm512_loadu_si512((const void *)Z[g][i]);
            x.v[i] = _mm512_loadu_si512((const void *)X[g][i]);
        }
        fe8_mul(&p, &inv, &p); /* 1 / Z[g] */
        fe8_mul(&inv, &inv, &z);
        fe8_mul(&x, &x, &p);
        for (int i = 0; i < 5; i++) _mm512_storeu_si512((void *)X[g][i], x.v[i]);
    }
}

#endif /* CLEANROOM_H2C_IFMA_H */
