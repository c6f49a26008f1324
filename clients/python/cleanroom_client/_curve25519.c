/*
 * Native curve25519 for the SDK over whole batches: RFC 9380 hash to curve (suite curve25519_XMD:SHA-512_ELL2_RO_,
 * the compiled twin of cleanroom_client/curve.py, which stays as the fallback and the reference), the point checks
 * and X25519 with the member's key.
 *
 * What it computes (tested equal to the Python code and to the RFC vectors in
 * tests/unit/cleanroom_client/test_curve.py):
 *   hash_to_u_batch(msgs, dst, path=None) -> (bytes, list[int])
 *       For each message: expand_message_xmd with SHA-512 (96 bytes), two field elements, Elligator 2 on each (RFC 9380
 *       appendix G.2.1, one exponentiation per map; the exponentiations of a block of 64 messages run together, eight
 *       at a time on the AVX-512 IFMA path of _x25519_ifma.c, else one by one), the sum of the two points as a
 *       fraction, the cofactor cleared by three doublings on the u-line, and u = X / Z with one inversion for the whole
 *       batch (Montgomery's trick). Output: 32 bytes little-endian per message, packed. The second item lists the
 *       indices the native path did not finish (the two mapped points share u, or the result is the identity:
 *       probability about 2^-250 per message); their 32 bytes are zero and the caller computes them in Python.
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
 * Field arithmetic mod p = 2^255 - 19 in radix 2^51 (five 64-bit limbs, products in unsigned __int128); SHA-512 is
 * the FIPS 180-4 algorithm written out below, so the extension needs nothing beyond a C compiler and Python's
 * headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- SHA-512 (FIPS 180-4) */

typedef struct {
    uint64_t h[8];
    uint8_t buf[128];
    size_t buflen;
    uint64_t total; /* bytes absorbed; messages here are far below 2^61 bytes */
} sha512_ctx;

static const uint64_t K512[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

static uint64_t load64_be(const uint8_t *p) {
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) | ((uint64_t)p[3] << 32) |
           ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) | ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static void store64_be(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static void sha512_block(uint64_t h[8], const uint8_t *block) {
    uint64_t w[80];
    for (int i = 0; i < 16; i++) w[i] = load64_be(block + 8 * i);
    for (int i = 16; i < 80; i++) {
        uint64_t s0 = ROTR64(w[i - 15], 1) ^ ROTR64(w[i - 15], 8) ^ (w[i - 15] >> 7);
        uint64_t s1 = ROTR64(w[i - 2], 19) ^ ROTR64(w[i - 2], 61) ^ (w[i - 2] >> 6);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint64_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 80; i++) {
        uint64_t S1 = ROTR64(e, 14) ^ ROTR64(e, 18) ^ ROTR64(e, 41);
        uint64_t ch = (e & f) ^ (~e & g);
        uint64_t t1 = hh + S1 + ch + K512[i] + w[i];
        uint64_t S0 = ROTR64(a, 28) ^ ROTR64(a, 34) ^ ROTR64(a, 39);
        uint64_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint64_t t2 = S0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

static void sha512_init(sha512_ctx *c) {
    static const uint64_t iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
    };
    memcpy(c->h, iv, sizeof iv);
    c->buflen = 0;
    c->total = 0;
}

static void sha512_update(sha512_ctx *c, const uint8_t *data, size_t len) {
    c->total += len;
    if (c->buflen) {
        size_t take = 128 - c->buflen < len ? 128 - c->buflen : len;
        memcpy(c->buf + c->buflen, data, take);
        c->buflen += take;
        data += take;
        len -= take;
        if (c->buflen == 128) {
            sha512_block(c->h, c->buf);
            c->buflen = 0;
        }
    }
    while (len >= 128) {
        sha512_block(c->h, data);
        data += 128;
        len -= 128;
    }
    if (len) {
        memcpy(c->buf, data, len);
        c->buflen = len;
    }
}

static void sha512_final(sha512_ctx *c, uint8_t out[64]) {
    uint64_t bits = c->total * 8;
    c->buf[c->buflen++] = 0x80;
    if (c->buflen > 112) {
        memset(c->buf + c->buflen, 0, 128 - c->buflen);
        sha512_block(c->h, c->buf);
        c->buflen = 0;
    }
    memset(c->buf + c->buflen, 0, 120 - c->buflen);
    store64_be(c->buf + 120, bits); /* the upper 64 bits of the 128-bit length are zero */
    sha512_block(c->h, c->buf);
    for (int i = 0; i < 8; i++) store64_be(out + 8 * i, c->h[i]);
}

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

/* The 32 little-endian bytes of f's canonical value (below p). */
static void fe_tobytes(uint8_t out[32], const fe f) {
    uint64_t t[5];
    memcpy(t, f, sizeof t);
    fe_carry(t);
    fe_carry(t); /* now below 2^255, each limb below 2^51 */
    t[0] += 19;  /* wraps past 2^255 exactly when the value is at least p */
    fe_carry(t);
    t[0] += 0x8000000000000ULL - 19;
    for (int i = 1; i < 5; i++) t[i] += 0x8000000000000ULL - 1;
    fe_carry_chain(t); /* what passes 2^255 is the 2^255 added above: dropped */
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

static int fe_iszero(const fe f) {
    uint8_t b[32];
    fe_tobytes(b, f);
    uint8_t acc = 0;
    for (int i = 0; i < 32; i++) acc |= b[i];
    return acc == 0;
}

static int fe_equal(const fe f, const fe g) {
    uint8_t a[32], b[32];
    fe_tobytes(a, f);
    fe_tobytes(b, g);
    return memcmp(a, b, 32) == 0;
}

static int fe_isodd(const fe f) {
    uint8_t b[32];
    fe_tobytes(b, f);
    return b[0] & 1;
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

static fe SQRT_M1; /* c3 of RFC 9380 G.2.1: sqrt(-1) */
static fe C2;      /* c2: 2^((p + 3) / 8) */
static const uint64_t J = 486662;

static const uint8_t SQRT_M1_BYTES[32] = {
    0xb0, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};
static const uint8_t C2_BYTES[32] = {
    0xb1, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b};

/* Whether y^2 = gx / gxd, i.e. y is a square root of the fraction (RFC 9380's is_square tests, variable time: the
   inputs here are public). */
static int fe_is_root(const fe y, const fe gxd, const fe gx) {
    fe t;
    fe_sq(t, y);
    fe_mul(t, t, gxd);
    return fe_equal(t, gx);
}

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

static void elligator2_finish(fe xn, fe xd, fe y, const ell2_state *e, const fe tv2_pow) {
    fe y11, y12, y21, y22, y1, y2, x2n, gx2;
    fe_mul(y11, tv2_pow, e->tv3);
    fe_mul(y12, y11, SQRT_M1);
    fe_copy(y1, fe_is_root(y11, e->gxd, e->gx1) ? y11 : y12);
    fe_mul(x2n, e->x1n, e->tv1);
    fe_mul(y21, y11, e->u);
    fe_mul(y21, y21, C2);
    fe_mul(y22, y21, SQRT_M1);
    fe_mul(gx2, e->gx1, e->tv1);
    fe_copy(y2, fe_is_root(y21, e->gxd, gx2) ? y21 : y22);
    int e3 = fe_is_root(y1, e->gxd, e->gx1);
    fe_copy(xd, e->xd);
    if (e3) {
        fe_copy(xn, e->x1n);
        fe_copy(y, y1);
    } else {
        fe_copy(xn, x2n);
        fe_copy(y, y2);
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

/* expand_message_xmd(msg, dst, 96) and the two field elements of hash_to_field; `zpad` has absorbed Z_pad. */
static void hash_to_field2(fe u0, fe u1, const sha512_ctx *zpad, const uint8_t *msg, size_t msg_len,
                           const uint8_t *dst_prime, size_t dst_prime_len) {
    static const uint8_t b0_tail[3] = {0x00, 0x60, 0x00}; /* I2OSP(96, 2) || I2OSP(0, 1) */
    uint8_t b0[64], b1[64], b2[64], x[64], uniform[128];
    sha512_ctx c = *zpad;
    sha512_update(&c, msg, msg_len);
    sha512_update(&c, b0_tail, 3);
    sha512_update(&c, dst_prime, dst_prime_len);
    sha512_final(&c, b0);
    xmd_block(b1, b0, 1, dst_prime, dst_prime_len);
    for (int i = 0; i < 64; i++) x[i] = b0[i] ^ b1[i];
    xmd_block(b2, x, 2, dst_prime, dst_prime_len);
    memcpy(uniform, b1, 64);
    memcpy(uniform + 64, b2, 64);
    fe_from48_be(u0, uniform);
    fe_from48_be(u1, uniform + 48);
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

/* ---------------------------------------------------------------- X25519 over a batch, one secret scalar */

/* Defined in _x25519_ifma.c: eight ladders at once with AVX-512 IFMA (x86-64 only; reports 0 elsewhere). */
int x25519_ifma_available(void);
void x25519_ifma_ladder8(const uint8_t scalar[32], const uint64_t u[5][8], uint64_t x2[5][8], uint64_t z2[5][8]);
void x25519_ifma_pow22523_8(const uint64_t in[5][8], uint64_t out[5][8]);
void x25519_ifma_euler_8(const uint64_t in[5][8], uint64_t out[5][8]);

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
static int ifma_ok; /* set once at import: the CPU and the OS run AVX-512 IFMA */

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

/* Messages per block of the batch: their 2 x 64 Elligator 2 exponentiations run together (16 groups of eight on
   the IFMA path), with the block's intermediates (about 40 KB) in cache. */
#define H2C_BLOCK 64

/* out[i] = in[i]^((p - 5) / 8) for i < count: eight at a time with IFMA (a short group padded with 1 and the
   filler dropped), else one by one. Public values: no constant-time need. */
static void pow22523_many(fe *out, ell2_state *const *in, size_t count, enum x25519_path path) {
    if (path != PATH_IFMA) {
        for (size_t i = 0; i < count; i++) fe_pow22523(out[i], in[i]->tv2);
        return;
    }
    uint64_t a[5][8], r[5][8];
    for (size_t start = 0; start < count; start += 8) {
        for (size_t lane = 0; lane < 8; lane++) {
            fe f;
            if (start + lane < count)
                fe_copy(f, in[start + lane]->tv2);
            else
                fe_set_small(f, 1);
            for (int i = 0; i < 5; i++) a[i][lane] = f[i];
        }
        x25519_ifma_pow22523_8((const uint64_t(*)[8])a, r);
        for (size_t lane = 0; lane < 8 && start + lane < count; lane++)
            for (int i = 0; i < 5; i++) out[start + lane][i] = r[i][lane];
    }
}

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

static PyObject *py_hash_to_u_batch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *msgs;
    Py_buffer dst;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "Oy*|z", &msgs, &dst, &name)) return NULL;
    PyObject *result = NULL, *seq = NULL, *fallback = NULL, *out = NULL;
    fe *xs = NULL, *zs = NULL, *powers = NULL;
    uint8_t *ok = NULL;
    /* A block's Elligator 2 states (about 45 KB): on the heap, so that a thread with a small stack (32 KiB is
       Python's minimum) runs the batch. */
    ell2_state *maps = NULL, **inputs = NULL;
    enum x25519_path path;
    if (dst.len > 255) {
        PyErr_SetString(PyExc_ValueError, "DST longer than 255 bytes");
        goto done;
    }
    if (choose_path(name, &path) < 0) goto done;
    seq = PySequence_Fast(msgs, "hash_to_u_batch takes a sequence of bytes");
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
    xs = PyMem_Malloc(sizeof(fe) * (size_t)(n ? n : 1));
    zs = PyMem_Malloc(sizeof(fe) * (size_t)(n ? n : 1));
    ok = PyMem_Malloc((size_t)(n ? n : 1));
    out = PyBytes_FromStringAndSize(NULL, 32 * n);
    fallback = PyList_New(0);
    maps = PyMem_Malloc(sizeof(ell2_state) * 2 * H2C_BLOCK);
    inputs = PyMem_Malloc(sizeof(ell2_state *) * 2 * H2C_BLOCK);
    powers = PyMem_Malloc(sizeof(fe) * 2 * H2C_BLOCK);
    if (!xs || !zs || !ok || !out || !fallback || !maps || !inputs || !powers) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t start = 0; start < n; start += H2C_BLOCK) {
        Py_ssize_t count = n - start < H2C_BLOCK ? n - start : H2C_BLOCK;
        for (Py_ssize_t j = 0; j < count; j++) {
            char *data;
            Py_ssize_t len;
            fe r0, r1;
            if (PyBytes_AsStringAndSize(items[start + j], &data, &len) < 0) goto done;
            hash_to_field2(r0, r1, &zpad, (const uint8_t *)data, (size_t)len, dst_prime, dst_prime_len);
            elligator2_start(&maps[2 * j], r0);
            elligator2_start(&maps[2 * j + 1], r1);
            inputs[2 * j] = &maps[2 * j];
            inputs[2 * j + 1] = &maps[2 * j + 1];
        }
        pow22523_many(powers, inputs, (size_t)(2 * count), path);
        for (Py_ssize_t j = 0; j < count; j++) {
            Py_ssize_t i = start + j;
            fe xn1, xd1, y1, xn2, xd2, y2;
            elligator2_finish(xn1, xd1, y1, &maps[2 * j], powers[2 * j]);
            elligator2_finish(xn2, xd2, y2, &maps[2 * j + 1], powers[2 * j + 1]);
            ok[i] = (uint8_t)hash_to_uz(xs[i], zs[i], xn1, xd1, y1, xn2, xd2, y2);
            if (!ok[i]) fe_set_small(zs[i], 1);
        }
    }
    /* One inversion for the batch: prefix products, invert the total, walk back. */
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    if (n > 0) {
        fe acc, inv, tmp;
        fe *pre = PyMem_Malloc(sizeof(fe) * (size_t)n);
        if (!pre) {
            PyErr_NoMemory();
            goto done;
        }
        fe_set_small(acc, 1);
        for (Py_ssize_t i = 0; i < n; i++) {
            fe_copy(pre[i], acc); /* product of zs[0..i-1] */
            fe_mul(acc, acc, zs[i]);
        }
        fe_invert(inv, acc); /* 1 / (z_0 ... z_{n-1}) */
        for (Py_ssize_t i = n - 1; i >= 0; i--) {
            fe zi_inv;
            fe_mul(zi_inv, inv, pre[i]); /* 1 / z_i */
            fe_mul(inv, inv, zs[i]);
            fe_mul(tmp, xs[i], zi_inv);
            if (ok[i])
                fe_tobytes(o + 32 * i, tmp);
            else
                memset(o + 32 * i, 0, 32);
        }
        PyMem_Free(pre);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!ok[i]) {
            PyObject *index = PyLong_FromSsize_t(i);
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
    PyMem_Free(ok);
    PyMem_Free(maps);
    PyMem_Free(inputs);
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

static PyMethodDef methods[] = {
    {"hash_to_u_batch", py_hash_to_u_batch, METH_VARARGS,
     "hash_to_u_batch(msgs, dst, path=None) -> (packed 32-byte u per message, indices left to the Python path); "
     "path 'avx512ifma' or 'portable' forces how Elligator 2's exponentiations run"},
    {"on_curve_batch", py_on_curve_batch, METH_VARARGS,
     "on_curve_batch(points, path=None) -> one byte per packed 32-byte u: 1 when u^3 + A u^2 + u is a nonzero "
     "square (on curve25519, not the twist), else 0"},
    {"x25519_batch", py_x25519_batch, METH_VARARGS,
     "x25519_batch(key, points, path=None) -> RFC 7748 X25519(key, u) for each packed 32-byte u, packed; path "
     "'avx512ifma' or 'portable' forces one (default: the fastest this CPU runs)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_curve25519", "Native RFC 9380 hash to curve, point checks and batched X25519.", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__curve25519(void) {
    fe_frombytes(SQRT_M1, SQRT_M1_BYTES);
    fe_frombytes(C2, C2_BYTES);
    ifma_ok = x25519_ifma_available();
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
