/*
 * Field arithmetic mod p = 2^255 - 19 in radix 2^51: five 64-bit limbs, products in unsigned __int128. No
 * function branches on a limb's value except the comparisons named as variable time (fe_iszero, fe_equal,
 * fe_isodd: used on public values only).
 *
 * Part of the SDK's extension: included once, by _curve25519.c (static functions, one translation unit).
 */
#ifndef CLEANROOM_FE25519_H
#define CLEANROOM_FE25519_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- GF(2^255 - 19), radix 2^51 */

typedef uint64_t fe[5];
typedef unsigned __int128 u128;
#define MASK51 0x7ffffffffffffULL

static void fe_copy(fe h, const fe f) { memcpy(h, f, sizeof(fe)); }

static void fe_set_small(fe h, uint64_t v) {
    h[0] = v;
    h[1] = h[2] = h[3] = h[4] = 0;
}

/* Carries limbs 0..3 each into the next, every limb left below 2^51; returns what stood above bit 51 of limb 4
   (the multiple of 2^255 it cleared). */
static uint64_t fe_carry_chain(uint64_t t[5]) {
    for (int i = 0; i < 4; i++) {
        t[i + 1] += t[i] >> 51;
        t[i] &= MASK51;
    }
    uint64_t top = t[4] >> 51;
    t[4] &= MASK51;
    return top;
}

/* Limbs below 2^51 plus a little; the value unchanged mod p (2^255 = 19). */
static void fe_carry(fe h) { h[0] += 19 * fe_carry_chain(h); }

static void fe_add(fe h, const fe f, const fe g) {
    for (int i = 0; i < 5; i++) h[i] = f[i] + g[i];
    fe_carry(h);
}

/* f - g, for carried inputs (limbs below 2^52): adds 4p first so no limb goes negative. */
static void fe_sub(fe h, const fe f, const fe g) {
    h[0] = f[0] + 0x1fffffffffffb4ULL - g[0];
    for (int i = 1; i < 5; i++) h[i] = f[i] + 0x1ffffffffffffcULL - g[i];
    fe_carry(h);
}

static void fe_neg(fe h, const fe f) {
    fe zero = {0, 0, 0, 0, 0};
    fe_sub(h, zero, f);
}

/* h = r[0] + r[1] 2^51 + ... + r[4] 2^204 mod p, from a product's 128-bit column sums (fe_mul's and fe_sq's
   common end): each column carried into the next, the top carry folded back as 19, limbs left below 2^51 + 2^13. */
static void fe_from_columns(fe h, u128 r[5]) {
    for (int i = 0; i < 4; i++) {
        r[i + 1] += (uint64_t)(r[i] >> 51);
        h[i] = (uint64_t)r[i] & MASK51;
    }
    h[4] = (uint64_t)r[4] & MASK51;
    h[0] += 19 * (uint64_t)(r[4] >> 51);
    h[1] += h[0] >> 51;
    h[0] &= MASK51;
}

static void fe_mul(fe h, const fe f, const fe g) {
    uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    uint64_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4];
    uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    u128 r0 = (u128)f0 * g0 + (u128)f1 * g4_19 + (u128)f2 * g3_19 + (u128)f3 * g2_19 + (u128)f4 * g1_19;
    u128 r1 = (u128)f0 * g1 + (u128)f1 * g0 + (u128)f2 * g4_19 + (u128)f3 * g3_19 + (u128)f4 * g2_19;
    u128 r2 = (u128)f0 * g2 + (u128)f1 * g1 + (u128)f2 * g0 + (u128)f3 * g4_19 + (u128)f4 * g3_19;
    u128 r3 = (u128)f0 * g3 + (u128)f1 * g2 + (u128)f2 * g1 + (u128)f3 * g0 + (u128)f4 * g4_19;
    u128 r4 = (u128)f0 * g4 + (u128)f1 * g3 + (u128)f2 * g2 + (u128)f3 * g1 + (u128)f4 * g0;
    fe_from_columns(h, (u128[5]){r0, r1, r2, r3, r4});
}

static void fe_sq(fe h, const fe f) {
    uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    uint64_t d0 = 2 * f0, d1 = 2 * f1, d2 = 2 * f2;
    uint64_t f3_19 = 19 * f3, f4_19 = 19 * f4;
    u128 r0 = (u128)f0 * f0 + (u128)d1 * f4_19 + (u128)d2 * f3_19;
    u128 r1 = (u128)d0 * f1 + (u128)d2 * f4_19 + (u128)f3 * f3_19;
    u128 r2 = (u128)d0 * f2 + (u128)f1 * f1 + (u128)(2 * f3) * f4_19;
    u128 r3 = (u128)d0 * f3 + (u128)d1 * f2 + (u128)f4 * f4_19;
    u128 r4 = (u128)d0 * f4 + (u128)d1 * f3 + (u128)f2 * f2;
    fe_from_columns(h, (u128[5]){r0, r1, r2, r3, r4});
}

static void fe_sqn(fe h, const fe f, int n) {
    fe_sq(h, f);
    for (int i = 1; i < n; i++) fe_sq(h, h);
}

static void fe_mul_small(fe h, const fe f, uint64_t s) {
    u128 c = 0;
    for (int i = 0; i < 5; i++) {
        c += (u128)f[i] * s;
        h[i] = (uint64_t)c & MASK51;
        c >>= 51;
    }
    h[0] += 19 * (uint64_t)c;
    fe_carry(h);
}

/* f's canonical limbs (value below p, each limb below 2^51): fe_tobytes's reduction, without the bytes. */
static void fe_canonical(uint64_t t[5], const fe f) {
    memcpy(t, f, sizeof(fe));
    fe_carry(t);
    fe_carry(t); /* now below 2^255, each limb below 2^51 */
    t[0] += 19;  /* wraps past 2^255 exactly when the value is at least p */
    fe_carry(t);
    t[0] += 0x8000000000000ULL - 19;
    for (int i = 1; i < 5; i++) t[i] += 0x8000000000000ULL - 1;
    fe_carry_chain(t); /* what passes 2^255 is the 2^255 added above: dropped */
}

/* The 32 little-endian bytes of f's canonical value (below p). */
static void fe_tobytes(uint8_t out[32], const fe f) {
    uint64_t t[5];
    fe_canonical(t, f);
    uint64_t w[4] = {t[0] | (t[1] << 51), (t[1] >> 13) | (t[2] << 38), (t[2] >> 26) | (t[3] << 25),
                     (t[3] >> 39) | (t[4] << 12)};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) out[8 * i + j] = (uint8_t)(w[i] >> (8 * j));
}

static uint64_t load64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* The low 255 bits of 32 little-endian bytes; returns bit 255. */
static uint64_t fe_frombytes(fe h, const uint8_t in[32]) {
    uint64_t w0 = load64_le(in), w1 = load64_le(in + 8), w2 = load64_le(in + 16), w3 = load64_le(in + 24);
    h[0] = w0 & MASK51;
    h[1] = ((w0 >> 51) | (w1 << 13)) & MASK51;
    h[2] = ((w1 >> 38) | (w2 << 26)) & MASK51;
    h[3] = ((w2 >> 25) | (w3 << 39)) & MASK51;
    h[4] = (w3 >> 12) & MASK51;
    return w3 >> 63;
}

/* A 48-byte big-endian integer mod p (hash_to_field's OS2IP then mod p): v = H 2^256 + L = L + 38 H (mod p). */
static void fe_from48_be(fe h, const uint8_t in[48]) {
    uint8_t low_le[32];
    for (int i = 0; i < 32; i++) low_le[i] = in[47 - i];
    uint64_t top = fe_frombytes(h, low_le);
    uint64_t hi = load64_be(in), lo = load64_be(in + 8); /* H = hi 2^64 + lo, 128 bits */
    h[0] += 19 * top + 38 * (lo & MASK51);
    h[1] += 38 * (((lo >> 51) | (hi << 13)) & MASK51);
    h[2] += 38 * (hi >> 38);
    fe_carry(h);
}

/* Whether f is 0 mod p. After two carries f is below 2^255 with every limb below 2^51, so it is 0 mod p only as
   0 or as p itself (limbs 2^51 - 19, 2^51 - 1, ...): two limb tests instead of a full reduction. */
static int fe_iszero(const fe f) {
    uint64_t t[5];
    memcpy(t, f, sizeof t);
    fe_carry(t);
    fe_carry(t);
    if ((t[0] | t[1] | t[2] | t[3] | t[4]) == 0) return 1;
    return t[0] == MASK51 - 18 && (t[1] & t[2] & t[3] & t[4]) == MASK51;
}

/* f = g mod p (for carried inputs, as fe_sub takes them). */
static int fe_equal(const fe f, const fe g) {
    fe d;
    fe_sub(d, f, g);
    return fe_iszero(d);
}

/* f = -g mod p (for carried inputs). */
static int fe_equal_neg(const fe f, const fe g) {
    fe s;
    fe_add(s, f, g);
    return fe_iszero(s);
}

/* The parity of f's canonical value: RFC 9380's sgn0. */
static int fe_isodd(const fe f) {
    uint64_t t[5];
    fe_canonical(t, f);
    return (int)(t[0] & 1);
}

/* out = a^(2^n) b: one step of an addition chain (out may be a or b). */
static void fe_sqn_mul(fe out, const fe a, int n, const fe b) {
    fe t;
    fe_sqn(t, a, n);
    fe_mul(out, t, b);
}

/* z^(2^250 - 1) into t250 and z^11 into z11: the shared start of inversion and the square-root exponent. */
static void fe_pow_2_250_1(fe t250, fe z11, const fe z) {
    fe z2, z9, t0, t1;
    fe_sq(z2, z);
    fe_sqn(t1, z2, 2);    /* z^8 */
    fe_mul(z9, t1, z);    /* z^9 */
    fe_mul(z11, z9, z2);  /* z^11 */
    fe_sq(t0, z11);       /* z^22 */
    fe_mul(t0, t0, z9);   /* z^31 = z^(2^5 - 1) */
    fe_sqn_mul(t0, t0, 5, t0);    /* 2^10 - 1 */
    fe_sqn_mul(t1, t0, 10, t0);   /* 2^20 - 1 */
    fe_sqn_mul(t1, t1, 20, t1);   /* 2^40 - 1 */
    fe_sqn_mul(t0, t1, 10, t0);   /* 2^50 - 1 */
    fe_sqn_mul(t1, t0, 50, t0);   /* 2^100 - 1 */
    fe_sqn_mul(t1, t1, 100, t1);  /* 2^200 - 1 */
    fe_sqn_mul(t250, t1, 50, t0); /* 2^250 - 1 */
}

/* z^(p - 2) = z^(2^255 - 21): 1/z for nonzero z. */
static void fe_invert(fe out, const fe z) {
    fe t, z11;
    fe_pow_2_250_1(t, z11, z);
    fe_sqn_mul(out, t, 5, z11); /* 2^255 - 32, times z^11 */
}

/* z^((p - 5) / 8) = z^(2^252 - 3). */
static void fe_pow22523(fe out, const fe z) {
    fe t, z11;
    fe_pow_2_250_1(t, z11, z);
    fe_sqn_mul(out, t, 2, z); /* 2^252 - 4, times z */
}


#endif /* CLEANROOM_FE25519_H */
