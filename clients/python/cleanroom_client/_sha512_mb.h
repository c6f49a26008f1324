/*
 * SHA-512 (FIPS 180-4) of eight messages at once with AVX-512: one message per 64-bit lane of a zmm register
 * (vprorq for the rotations, vpternlogq for Ch, Maj and the three-way XORs, vpaddq), for RFC 9380's
 * expand_message_xmd on the "avx512ifma" path of the native hash to curve. It is the multi-buffer twin of the
 * scalar _sha512.h, which stays as the portable path and the fallback; both give the same bytes (tested against
 * hashlib and through the hash to curve against the Python path in tests/unit/cleanroom_client/test_curve.py).
 *
 * What it computes:
 * - sha512_mb8 hashes up to eight messages of any lengths: each lane pads its own message, the lanes run block by
 *   block together, and a lane whose message has fewer blocks keeps its state from the block where it ended (the
 *   compressions after that are computed and dropped), so lanes of different lengths cost the longest one's blocks.
 * - xmd96_mb8 is expand_message_xmd(msg, DST, 96) with SHA-512 for up to eight messages: b_0 as above from the state
 *   after Z_pad; then b_1 and b_2 in registers (their messages are the previous 64-byte value followed by the same
 *   bytes in every lane: I2OSP(i, 1) || DST' and the padding, broadcast as constants).
 *
 * Public inputs only (the member's RFC 9380 messages, see _curve25519.c): nothing here needs to be constant time,
 * though nothing branches on a message's bytes either (only on its length).
 *
 * Functions carry __attribute__((target(...))) so the extension builds with plain -O3 for any x86-64, and run only
 * where sha512_mb_available() says the CPU and OS support AVX-512F, BW and VL. Elsewhere (and on other
 * architectures, where this compiles to a stub reporting "not available") the scalar SHA-512 runs.
 *
 * Part of the SDK's extension: included once, by _curve25519.c (static functions, one translation unit).
 */
#ifndef CLEANROOM_SHA512_MB_H
#define CLEANROOM_SHA512_MB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_sha512.h"

/* Longest suffix a lane appends to its message: expand_message_xmd's I2OSP(96, 2) || I2OSP(0, 1) || DST'. */
#define SHA512_MB_SUFFIX_MAX (3 + 256)
/* Bytes of a lane's last blocks: its message's last partial block (< 128), the suffix, 0x80 and the 16-byte
   length, in whole blocks: 127 + 259 + 17 = 403 bytes, four blocks. */
#define SHA512_MB_TAIL (4 * 128)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MB_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#define MB_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl")))

static int sha512_mb_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

#define MB_ADD(a, b) _mm512_add_epi64((a), (b))
#define MB_ROR(x, n) _mm512_ror_epi64((x), (n))
#define MB_XOR3(a, b, c) _mm512_ternarylogic_epi64((a), (b), (c), 0x96)

/* One round of FIPS 180-4 section 6.4.2 in every lane, kw = K_t + W_t: d += T1 and h = T1 + T2; the caller rotates
   the names (the new a is in h, the new e in d). Ch(e, f, g) = e ? f : g is ternary-logic table 0xCA, Maj 0xE8. */
#define MB_ROUND(a, b, c, d, e, f, g, h, kw)                                                                         \
    do {                                                                                                             \
        __m512i t1_ = MB_ADD(MB_ADD(h, MB_XOR3(MB_ROR(e, 14), MB_ROR(e, 18), MB_ROR(e, 41))),                       \
                             MB_ADD(_mm512_ternarylogic_epi64(e, f, g, 0xCA), kw));                                  \
        __m512i t2_ = MB_ADD(MB_XOR3(MB_ROR(a, 28), MB_ROR(a, 34), MB_ROR(a, 39)),                                   \
                             _mm512_ternarylogic_epi64(a, b, c, 0xE8));                                              \
        d = MB_ADD(d, t1_);                                                                                          \
        h = MB_ADD(t1_, t2_);                                                                                        \
    } while (0)

#define MB_KW(t) MB_ADD(w[(t) & 15], _mm512_set1_epi64((long long)K512[(t)]))

/* Eight rounds from round t on: after eight the names are back in place. */
#define MB_ROUNDS8(t)                                      \
    do {                                                   \
        MB_ROUND(a, b, c, d, e, f, g, h, MB_KW((t) + 0)); \
        MB_ROUND(h, a, b, c, d, e, f, g, MB_KW((t) + 1)); \
        MB_ROUND(g, h, a, b, c, d, e, f, MB_KW((t) + 2)); \
        MB_ROUND(f, g, h, a, b, c, d, e, MB_KW((t) + 3)); \
        MB_ROUND(e, f, g, h, a, b, c, d, MB_KW((t) + 4)); \
        MB_ROUND(d, e, f, g, h, a, b, c, MB_KW((t) + 5)); \
        MB_ROUND(c, d, e, f, g, h, a, b, MB_KW((t) + 6)); \
        MB_ROUND(b, c, d, e, f, g, h, a, MB_KW((t) + 7)); \
    } while (0)

/* state += the compression of one block per lane, given as its sixteen big-endian words (block[j], lane i: word j
   of lane i's block). The schedule rolls through sixteen registers: W_t replaces W_(t-16), computed in place. */
MB_INLINE void mb_compress(__m512i state[8], const __m512i block[16]) {
    __m512i w[16];
    for (int j = 0; j < 16; j++) w[j] = block[j];
    __m512i a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6],
            h = state[7];
    for (int t = 0; t < 80; t += 16) {
        if (t)
            for (int j = 0; j < 16; j++) {
                __m512i x = w[(j + 1) & 15], y = w[(j + 14) & 15];
                __m512i s0 = MB_XOR3(MB_ROR(x, 1), MB_ROR(x, 8), _mm512_srli_epi64(x, 7));
                __m512i s1 = MB_XOR3(MB_ROR(y, 19), MB_ROR(y, 61), _mm512_srli_epi64(y, 6));
                w[j] = MB_ADD(MB_ADD(w[j], s0), MB_ADD(w[(j + 9) & 15], s1));
            }
        MB_ROUNDS8(t);
        MB_ROUNDS8(t + 8);
    }
    state[0] = MB_ADD(state[0], a);
    state[1] = MB_ADD(state[1], b);
    state[2] = MB_ADD(state[2], c);
    state[3] = MB_ADD(state[3], d);
    state[4] = MB_ADD(state[4], e);
    state[5] = MB_ADD(state[5], f);
    state[6] = MB_ADD(state[6], g);
    state[7] = MB_ADD(state[7], h);
}

/* The sixteen big-endian words of the 128-byte block at ptr[i] for each lane i: gathers, then a byte swap. */
MB_INLINE void mb_load(__m512i block[16], const uint8_t *const ptr[8]) {
    const __m512i bswap = _mm512_broadcast_i32x4(_mm_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m512i base = _mm512_loadu_si512((const void *)ptr);
    for (int j = 0; j < 16; j++) {
        __m512i words = _mm512_i64gather_epi64(MB_ADD(base, _mm512_set1_epi64(8 * j)), (const void *)0, 1);
        block[j] = _mm512_shuffle_epi8(words, bswap);
    }
}

/* state = the SHA-512 state after prefix || msg[i] || suffix in each lane (padding included: the state is the
   digest's words), where `init` is the state after the prefix, prefix_len bytes (a multiple of 128). `tail` is
   the caller's scratch for the lanes' last blocks. */
MB_INLINE void mb_absorb(__m512i state[8], const uint64_t init[8], uint64_t prefix_len, const uint8_t *const msg[8],
                         const size_t len[8], const uint8_t *suffix, size_t suffix_len,
                         uint8_t tail[8][SHA512_MB_TAIL]) {
    size_t full[8], blocks[8], most = 0;
    for (int i = 0; i < 8; i++) {
        full[i] = len[i] / 128;
        size_t rem = len[i] % 128, used = rem + suffix_len;
        size_t tail_blocks = (used + 1 + 16 + 127) / 128;
        memcpy(tail[i], msg[i] + 128 * full[i], rem);
        memcpy(tail[i] + rem, suffix, suffix_len);
        tail[i][used] = 0x80;
        memset(tail[i] + used + 1, 0, 128 * tail_blocks - used - 1);
        store64_be(tail[i] + 128 * tail_blocks - 8, (prefix_len + len[i] + suffix_len) * 8);
        blocks[i] = full[i] + tail_blocks;
        if (blocks[i] > most) most = blocks[i];
    }
    __m512i h[8], block[16];
    for (int j = 0; j < 8; j++) state[j] = h[j] = _mm512_set1_epi64((long long)init[j]);
    const __m512i count = _mm512_loadu_si512((const void *)blocks);
    for (size_t k = 0; k < most; k++) {
        const uint8_t *ptr[8];
        for (int i = 0; i < 8; i++) {
            if (k < full[i])
                ptr[i] = msg[i] + 128 * k;
            else if (k < blocks[i])
                ptr[i] = tail[i] + 128 * (k - full[i]);
            else
                ptr[i] = tail[i]; /* this lane has ended: computed and dropped */
        }
        mb_load(block, ptr);
        mb_compress(h, block);
        __mmask8 ended = _mm512_cmpeq_epi64_mask(count, _mm512_set1_epi64((long long)(k + 1)));
        for (int j = 0; j < 8; j++) state[j] = _mm512_mask_mov_epi64(state[j], ended, h[j]);
    }
}

/* Lane i's digest (the state's words, big-endian) into out + i * stride for i < lanes. */
MB_INLINE void mb_store(uint8_t *out, size_t stride, const __m512i state[8], size_t lanes) {
    uint64_t words[8][8];
    for (int j = 0; j < 8; j++) _mm512_storeu_si512((void *)words[j], state[j]);
    for (size_t i = 0; i < lanes; i++)
        for (int j = 0; j < 8; j++) store64_be(out + i * stride + 8 * j, words[j][i]);
}

/* The message arrays for eight lanes from `lanes` (1..8) messages: the missing lanes hash the empty message. */
static void mb_lanes(const uint8_t *msg8[8], size_t len8[8], const uint8_t *const *msg, const size_t *len,
                     size_t lanes) {
    static const uint8_t empty[1] = {0};
    for (size_t i = 0; i < 8; i++) {
        msg8[i] = i < lanes ? msg[i] : empty;
        len8[i] = i < lanes ? len[i] : 0;
    }
}

/* out + 64 i = SHA-512(msg[i]) for i < lanes (1..8). */
static MB_TARGET void sha512_mb8(uint8_t *out, const uint8_t *const *msg, const size_t *len, size_t lanes) {
    static const uint64_t iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
    };
    const uint8_t *msg8[8];
    size_t len8[8];
    uint8_t tail[8][SHA512_MB_TAIL];
    __m512i state[8];
    mb_lanes(msg8, len8, msg, len, lanes);
    mb_absorb(state, iv, 0, msg8, len8, (const uint8_t *)"", 0, tail);
    mb_store(out, 64, state, lanes);
}

/* b = SHA-512(prev || I2OSP(i, 1) || DST') in every lane, where prev is each lane's 64-byte value (as state words)
   and the rest is the same bytes in every lane: `rest` holds them padded, words 8..15 of its first block and every
   word of its `nblocks` - 1 further blocks. */
MB_INLINE void mb_xmd_block(__m512i b[8], const __m512i prev[8], const uint64_t *rest, size_t nblocks) {
    static const uint64_t iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
    };
    __m512i block[16];
    for (int j = 0; j < 8; j++) {
        b[j] = _mm512_set1_epi64((long long)iv[j]);
        block[j] = prev[j];
        block[j + 8] = _mm512_set1_epi64((long long)rest[j + 8]);
    }
    mb_compress(b, block);
    for (size_t k = 1; k < nblocks; k++) {
        for (int j = 0; j < 16; j++) block[j] = _mm512_set1_epi64((long long)rest[16 * k + j]);
        mb_compress(b, block);
    }
}

/* uniform + 96 i = expand_message_xmd(msg[i], DST, 96) with SHA-512 for i < lanes (1..8): `zpad` is the state after
   Z_pad (128 zero bytes), dst_prime is DST || I2OSP(len(DST), 1), at most 256 bytes. */
static MB_TARGET void xmd96_mb8(uint8_t *uniform, const uint64_t zpad[8], const uint8_t *const *msg, const size_t *len,
                                size_t lanes, const uint8_t *dst_prime, size_t dst_prime_len) {
    const uint8_t *msg8[8];
    size_t len8[8];
    uint8_t tail[8][SHA512_MB_TAIL];
    uint8_t suffix[SHA512_MB_SUFFIX_MAX] = {0x00, 0x60, 0x00}; /* I2OSP(96, 2) || I2OSP(0, 1) || DST' */
    memcpy(suffix + 3, dst_prime, dst_prime_len);
    __m512i b0[8], b1[8], b2[8], x[8];
    mb_lanes(msg8, len8, msg, len, lanes);
    mb_absorb(b0, zpad, 128, msg8, len8, suffix, 3 + dst_prime_len, tail);

    /* The bytes after b_0 (or b_0 xor b_1) in b_1's and b_2's messages, padded: at most 65 + 256 + 17 bytes. */
    uint8_t rest[3 * 128];
    uint64_t words[2][3 * 16];
    size_t used = 64 + 1 + dst_prime_len, nblocks = (used + 1 + 16 + 127) / 128;
    memset(rest, 0, sizeof rest);
    memcpy(rest + 65, dst_prime, dst_prime_len);
    rest[used] = 0x80;
    store64_be(rest + 128 * nblocks - 8, (uint64_t)used * 8);
    for (int i = 0; i < 2; i++) {
        rest[64] = (uint8_t)(i + 1);
        for (size_t j = 0; j < 16 * nblocks; j++) words[i][j] = load64_be(rest + 8 * j);
    }
    mb_xmd_block(b1, b0, words[0], nblocks);
    for (int j = 0; j < 8; j++) x[j] = _mm512_xor_si512(b0[j], b1[j]);
    mb_xmd_block(b2, x, words[1], nblocks);

    uint8_t out[8][128];
    mb_store(&out[0][0], 128, b1, lanes);
    mb_store(&out[0][64], 128, b2, lanes);
    for (size_t i = 0; i < lanes; i++) memcpy(uniform + 96 * i, out[i], 96);
}

#else /* not x86-64: the scalar SHA-512 runs */

static int sha512_mb_available(void) { return 0; }

static void sha512_mb8(uint8_t *out, const uint8_t *const *msg, const size_t *len, size_t lanes) {
    (void)msg;
    (void)len;
    memset(out, 0, 64 * lanes);
}

static void xmd96_mb8(uint8_t *uniform, const uint64_t zpad[8], const uint8_t *const *msg, const size_t *len,
                      size_t lanes, const uint8_t *dst_prime, size_t dst_prime_len) {
    (void)zpad;
    (void)msg;
    (void)len;
    (void)dst_prime;
    (void)dst_prime_len;
    memset(uniform, 0, 96 * lanes);
}

#endif

#endif /* CLEANROOM_SHA512_MB_H */
