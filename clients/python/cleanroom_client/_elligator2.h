/*
 * RFC 9380 hash to curve for curve25519_XMD:SHA-512_ELL2_RO_, one message: expand_message_xmd with the scalar
 * SHA-512 (_sha512_mb.h has it for eight messages at once), hash_to_field and Elligator 2 (appendix G.2.1) split
 * around its one exponentiation, the sum and the cofactor clearing. Public inputs only (see _curve25519.c):
 * variable time where simpler.
 *
 * Part of the SDK's extension: included once, by _curve25519.c (static functions, one translation unit).
 */
#ifndef CLEANROOM_ELLIGATOR2_H
#define CLEANROOM_ELLIGATOR2_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_fe25519.h"
#include "_sha512.h"

static fe SQRT_M1; /* c3 of RFC 9380 G.2.1: sqrt(-1) */
static fe C2;      /* c2: 2^((p + 3) / 8) */
static const uint64_t J = 486662;

static const uint8_t SQRT_M1_BYTES[32] = {
    0xb0, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};
static const uint8_t C2_BYTES[32] = {
    0xb1, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};

/* RFC 9380 appendix G.2.1, map_to_curve_elligator2_curve25519, in two halves around its one exponentiation so
   that a batch can raise all its inputs at once (eight at a time with AVX-512 IFMA): `elligator2_start` computes
   everything up to tv2, the value raised to (p - 5) / 8; `elligator2_finish` takes tv2^((p - 5) / 8) and gives the
   point (xn / xd, y). */
typedef struct {
    fe u, tv1, xd, x1n, gxd, gx1, tv3, tv2;
} ell2_state;

static void elligator2_start(ell2_state *e, const fe u) {
    fe one, tv2;
    fe_copy(e->u, u);
    fe_sq(e->tv1, u);
    fe_add(e->tv1, e->tv1, e->tv1); /* 2 u^2 */
    fe_set_small(one, 1);
    fe_add(e->xd, e->tv1, one); /* nonzero: -1/2 is not a square */
    fe_set_small(e->x1n, J);
    fe_neg(e->x1n, e->x1n);
    fe_sq(tv2, e->xd);
    fe_mul(e->gxd, tv2, e->xd);
    fe_mul_small(e->gx1, e->tv1, J);
    fe_mul(e->gx1, e->gx1, e->x1n);
    fe_add(e->gx1, e->gx1, tv2);
    fe_mul(e->gx1, e->gx1, e->x1n);
    fe_sq(e->tv3, e->gxd);
    fe_sq(tv2, e->tv3);
    fe_mul(e->tv3, e->tv3, e->gxd);
    fe_mul(e->tv3, e->tv3, e->gx1);
    fe_mul(e->tv2, tv2, e->tv3);
}

/* RFC 9380's steps from y11 on, with its three square tests folded into two comparisons and the second candidate
   computed only when it is chosen (variable time: public inputs). y12 = y11 sqrt(-1) squares to -y11^2, so with
   t = y11^2 gxd: e1 is t = gx1, and e3 (y1^2 gxd = gx1, y1 = y11 or y12 by e1) is e1 or t = -gx1. When e3 holds the
   RFC's x2n and y2 are computed and dropped; here they are skipped. Same values as the RFC's constant-time steps. */
static void elligator2_finish(fe xn, fe xd, fe y, const ell2_state *e, const fe tv2_pow) {
    fe y11, t;
    fe_mul(y11, tv2_pow, e->tv3);
    fe_sq(t, y11);
    fe_mul(t, t, e->gxd);
    int e1 = fe_equal(t, e->gx1);
    int e3 = e1 || fe_equal_neg(t, e->gx1);
    fe_copy(xd, e->xd);
    if (e3) {
        fe_copy(xn, e->x1n);
        if (e1)
            fe_copy(y, y11);
        else
            fe_mul(y, y11, SQRT_M1);
    } else {
        fe y21, gx2;
        fe_mul(xn, e->x1n, e->tv1);
        fe_mul(y21, y11, e->u);
        fe_mul(y21, y21, C2);
        fe_mul(gx2, e->gx1, e->tv1);
        fe_sq(t, y21);
        fe_mul(t, t, e->gxd);
        if (fe_equal(t, gx2))
            fe_copy(y, y21);
        else
            fe_mul(y, y21, SQRT_M1);
    }
    if (e3 ^ fe_isodd(y)) fe_neg(y, y);
}

/* b_i = H(in || I2OSP(i, 1) || DST_prime): a block of expand_message_xmd after b_0 (in is b_0, or b_0 xor b_(i-1)). */
static void xmd_block(uint8_t out[64], const uint8_t in[64], uint8_t i, const uint8_t *dst_prime,
                      size_t dst_prime_len) {
    sha512_ctx c;
    sha512_init(&c);
    sha512_update(&c, in, 64);
    sha512_update(&c, &i, 1);
    sha512_update(&c, dst_prime, dst_prime_len);
    sha512_final(&c, out);
}

/* uniform = expand_message_xmd(msg, dst, 96), one message with the scalar SHA-512; `zpad` has absorbed Z_pad. The
   two field elements of hash_to_field are fe_from48_be of its two halves. */
static void expand_xmd96(uint8_t uniform[96], const sha512_ctx *zpad, const uint8_t *msg, size_t msg_len,
                         const uint8_t *dst_prime, size_t dst_prime_len) {
    static const uint8_t b0_tail[3] = {0x00, 0x60, 0x00}; /* I2OSP(96, 2) || I2OSP(0, 1) */
    uint8_t b0[64], b1[64], b2[64], x[64];
    sha512_ctx c = *zpad;
    sha512_update(&c, msg, msg_len);
    sha512_update(&c, b0_tail, 3);
    sha512_update(&c, dst_prime, dst_prime_len);
    sha512_final(&c, b0);
    xmd_block(b1, b0, 1, dst_prime, dst_prime_len);
    for (int i = 0; i < 64; i++) x[i] = b0[i] ^ b1[i];
    xmd_block(b2, x, 2, dst_prime, dst_prime_len);
    memcpy(uniform, b1, 64);
    memcpy(uniform + 64, b2, 32);
}

/* hash_to_curve's u as a fraction X / Z from the two mapped points (xn1 / xd1, y1) and (xn2 / xd2, y2); returns
   0 when the native path does not apply (see the top comment). */
static int hash_to_uz(fe X, fe Z, const fe xn1, const fe xd1, const fe y1, const fe xn2, const fe xd2,
                      const fe y2) {
    fe D, E, t, s, dy;
    /* x2 - x1 = D / E; u3 = lam^2 - A - x1 - x2 with lam = dy E / D gives
       X = dy^2 E^3 - (A E + xn1 xd2 + xn2 xd1) D^2 and Z = E D^2. */
    fe a, b;
    fe_mul(a, xn2, xd1);
    fe_mul(b, xn1, xd2);
    fe_sub(D, a, b);
    if (fe_iszero(D)) return 0;
    fe_mul(E, xd1, xd2);
    fe_sub(dy, y2, y1);
    fe_add(s, a, b);
    fe_mul_small(t, E, J);
    fe_add(s, s, t); /* A E + xn1 xd2 + xn2 xd1 */
    fe D2;
    fe_sq(D2, D);
    fe_mul(s, s, D2);
    fe E3;
    fe_sq(E3, E);
    fe_mul(E3, E3, E);
    fe_sq(t, dy);
    fe_mul(t, t, E3);
    fe_sub(X, t, s);
    fe_mul(Z, E, D2);
    for (int i = 0; i < 3; i++) { /* clear_cofactor, h_eff = 8: x' = (xx - zz)^2, z' = 4 xz (xx + A xz + zz) */
        fe xx, zz, xz, w;
        fe_sq(xx, X);
        fe_sq(zz, Z);
        fe_mul(xz, X, Z);
        fe_sub(w, xx, zz);
        fe_sq(X, w);
        fe_mul_small(w, xz, J);
        fe_add(w, w, xx);
        fe_add(w, w, zz);
        fe_mul(w, w, xz);
        fe_mul_small(Z, w, 4);
    }
    return !fe_iszero(Z);
}


#endif /* CLEANROOM_ELLIGATOR2_H */
