"""The native hash to curve's exceptional cases, lane by lane, and the RFC vectors whose messages span blocks.

No known message makes the two mapped points share u or sums them to a point of low order (probability ~2^-250),
so hash_to_u_batch's hand-over of such messages to the Python path cannot be reached through messages. A C harness
built from the extension's sources feeds its Elligator 2, sum, cofactor clearing and division chosen field
elements instead, on both paths: the eight-lane IFMA code must finish and refuse exactly the lanes the portable code
does, with the same u, and those u must equal the Python path's (`curve._u_of_field_elements`).

The same harness puts each lane's message against an unreadable page, after its end and before its start, and runs
the eight-lane SHA-512 and expand_message_xmd on it: AddressSanitizer does not see the AVX-512 gathers that load
the message blocks, a guard page does (a read past either end is a SIGSEGV).
"""

import random
import shutil
import subprocess
import sysconfig
from pathlib import Path

import gmpy2
import pytest
from gmpy2 import mpz

from cleanroom_client import curve

# Prime order of the curve's large subgroup: [L] of a random point lies in the 8-torsion.
_ORDER = 2**252 + 27742317777372353535851937790883648493

_HARNESS = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include "_curve25519.c"
/* "guard": each of eight lanes' messages (0..1200 bytes, lanes of different lengths) ends where an unreadable page
   begins, then starts where one ends; sha512_mb8 and xmd96_mb8 (DSTs of 0..255 bytes) must equal the scalar code.
   stdout: "checked N bad M", or "no avx512" where the CPU cannot run them. */
static int guard(void) {
    if (!sha512_mb_available()) return puts("no avx512") < 0;
    long page = sysconf(_SC_PAGESIZE);
    enum { MAXLEN = 1200 };
    size_t span = ((MAXLEN + (size_t)page - 1) / (size_t)page) * (size_t)page;
    uint8_t *region[8], dst_prime[256];
    for (int i = 0; i < 8; i++) {
        region[i] = mmap(NULL, span + 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region[i] == MAP_FAILED || mprotect(region[i], (size_t)page, PROT_NONE) ||
            mprotect(region[i] + page + span, (size_t)page, PROT_NONE))
            return 1;
        for (size_t j = 0; j < span; j++) region[i][page + j] = (uint8_t)(j * 131 + (size_t)i);
    }
    sha512_ctx zpad;
    uint8_t zeros[128] = {0};
    sha512_init(&zpad);
    sha512_update(&zpad, zeros, 128);
    long checked = 0, bad = 0;
    for (int at_start = 0; at_start < 2; at_start++)
        for (size_t base = 0; base <= MAXLEN; base += base < 300 ? 1 : 37)
            for (size_t lanes = 1; lanes <= 8; lanes += 7) {
                const uint8_t *msg[8];
                size_t len[8], dst_len = base % 256;
                uint8_t digests[8 * 64], want[96], uniform[8 * 96];
                for (size_t i = 0; i < 8; i++) {
                    len[i] = (base + 13 * i * (base % 5)) % (MAXLEN + 1);
                    msg[i] = region[i] + page + (at_start ? 0 : span - len[i]);
                }
                for (size_t i = 0; i < dst_len; i++) dst_prime[i] = (uint8_t)(base + i);
                dst_prime[dst_len] = (uint8_t)dst_len;
                sha512_mb8(digests, msg, len, lanes);
                xmd96_mb8(uniform, zpad.h, msg, len, lanes, dst_prime, dst_len + 1);
                for (size_t i = 0; i < lanes; i++, checked += 2) {
                    sha512_ctx c;
                    sha512_init(&c);
                    sha512_update(&c, msg[i], len[i]);
                    sha512_final(&c, want);
                    bad += memcmp(want, digests + 64 * i, 64) != 0;
                    expand_xmd96(want, &zpad, msg[i], len[i], dst_prime, dst_len + 1);
                    bad += memcmp(want, uniform + 96 * i, 96) != 0;
                }
            }
    printf("checked %ld bad %ld\n", checked, bad);
    return 0;
}

/* Otherwise: stdin, lines of two 96-digit hex numbers, the halves of expand_message_xmd's output (any 384-bit
   values); stdout, a line each: ok and u (hex, little-endian) from the portable code, then from the eight-lane IFMA
   code (-1 where this CPU has no IFMA), each lane's u as hash_to_u_batch computes it (all zero where not finished). */
enum { MAX = 1024 };
static uint8_t uniform[MAX][96], ok_p[MAX], ok_i[MAX];
static fe xs[MAX], zs[MAX], powers[2 * H2C_BLOCK];
static ell2_state maps[2 * H2C_BLOCK];
static uint64_t x8[MAX / 8][5][8], z8[MAX / 8][5][8], pre8[MAX / 8][5][8];
static void put(int ok, const fe u) {
    uint8_t b[32] = {0};
    if (ok) fe_tobytes(b, u);
    printf(" %d ", ok);
    for (int j = 0; j < 32; j++) printf("%02x", b[j]);
}
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "guard") == 0) return guard();
    fe_frombytes(SQRT_M1, SQRT_M1_BYTES);
    fe_frombytes(C2, C2_BYTES);
    char hex[2][200];
    size_t n = 0;
    while (n < MAX && scanf("%199s %199s", hex[0], hex[1]) == 2) {
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < 48; i++) sscanf(hex[k] + 2 * i, "%2hhx", &uniform[n][48 * k + i]);
        n++;
    }
    for (size_t s = 0; s < n; s += H2C_BLOCK)
        h2c_block_portable(xs + s, zs + s, ok_p + s, maps, powers, uniform + s, n - s < H2C_BLOCK ? n - s : H2C_BLOCK);
    int ifma = x25519_ifma_available();
    for (size_t g = 0; ifma && 8 * g < n; g++) {
        uint64_t u[2][5][8] = {{{0}}};
        for (size_t lane = 0; lane < 8 && 8 * g + lane < n; lane++)
            for (int k = 0; k < 2; k++) {
                fe r;
                fe_from48_be(r, uniform[8 * g + lane] + 48 * k);
                for (int i = 0; i < 5; i++) u[k][i][lane] = r[i];
            }
        x25519_ifma_h2c_8((const uint64_t(*)[5][8])u, SQRT_M1, C2, x8[g], z8[g], ok_i + 8 * g);
    }
    if (ifma) x25519_ifma_divide_8(x8, (const uint64_t(*)[5][8])z8, pre8, (n + 7) / 8);
    for (size_t i = 0; i < n; i++) {
        fe inv, u;
        fe_invert(inv, zs[i]);
        fe_mul(u, xs[i], inv);
        put(ok_p[i], u);
        for (int k = 0; k < 5; k++) u[k] = x8[i / 8][k][i % 8];
        if (ifma)
            put(ok_i[i], u);
        else
            printf(" -1 -");
        printf("\n");
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harness at -O3 with the extension's two sources, as setup.py builds them (once: about two seconds)."""
    tmp_path = tmp_path_factory.mktemp("lanes")
    source = Path(curve.__file__).parent
    (tmp_path / "lanes.c").write_text(_HARNESS)
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "the extension was built here, so a C compiler is installed"
    subprocess.run(
        [
            compiler,
            "-O3",
            f"-I{source}",
            f"-I{sysconfig.get_paths()['include']}",
            str(tmp_path / "lanes.c"),
            str(source / "_x25519_ifma.c"),
            f"-L{libdir}",
            f"-Wl,-rpath,{libdir}",
            f"-lpython{sysconfig.get_config_var('VERSION')}",
            "-o",
            str(tmp_path / "lanes"),
        ],
        check=True,
        capture_output=True,
    )
    return tmp_path / "lanes"


def _mul(k: int, point: tuple[mpz, mpz] | None) -> tuple[mpz, mpz] | None:
    result = None
    while k:
        if k & 1:
            result = curve._add(result, point)
        point = curve._add(point, point)
        k >>= 1
    return result


def _preimage(point: tuple[mpz, mpz] | None) -> mpz | None:
    """A field element that Elligator 2 maps to `point`, or None: the first candidate x1 = -J / (1 + 2 u^2) gives
    the odd y, the second (-x1 - J, where x1's curve value is not a square) the even one."""
    if point is None:
        return None
    x, y = point
    x1 = x if y % 2 == 1 else (-x - curve.A) % curve.P
    if x1 == 0 or (y % 2 == 0 and gmpy2.legendre(curve._curve_rhs(x1), curve.P) >= 0):
        return None
    u = curve._sqrt((-curve.A * gmpy2.invert(x1, curve.P) - 1) * gmpy2.invert(2, curve.P) % curve.P)
    if u is not None:
        assert curve.map_to_curve_elligator2(u) == point
    return u


def _crafted_pairs(rng: random.Random) -> dict[str, list[tuple[int, int]]]:
    """Field element pairs (as 384-bit integers, the form expand_message_xmd gives) for each case."""
    p = int(curve.P)
    wide = [0, 1, p - 1, p, p + 1, 2 * p, 2**255 - 1, 2**255, 2**383, 2**384 - 1, (p - 1) // 2]
    cases: dict[str, list[tuple[int, int]]] = {
        "random": [(rng.randrange(2**384), rng.randrange(2**384)) for _ in range(40)],
        "edge values": [(v, rng.randrange(2**384)) for v in wide] + [(v, v) for v in wide],
        "equal": [(r, r + p * rng.randrange(2**128)) for r in (rng.randrange(p) for _ in range(20))],
        "opposite": [(r, p - r) for r in (rng.randrange(1, p) for _ in range(20))],
        "sum of low order": [],  # Q0 + Q1 = T for a torsion point T != O: u shares nothing, Z = 0 after clearing
        "sum is the identity": [],  # Q1 = -Q0: the same u, y of opposite sign
    }
    torsion: set[tuple[mpz, mpz] | None] = set()
    while len(torsion) < 8:
        x = mpz(rng.randrange(p))
        y = curve._sqrt(curve._curve_rhs(x))
        if y is not None:
            torsion.add(_mul(_ORDER, (x, y)))
    while min(len(cases["sum of low order"]), len(cases["sum is the identity"])) < 24:
        r0 = mpz(rng.randrange(p))
        x0, y0 = curve.map_to_curve_elligator2(r0)
        for t in torsion:
            r1 = _preimage(curve._add(t, (x0, (-y0) % curve.P)))
            if r1 is not None:
                cases["sum of low order" if t else "sum is the identity"].append((int(r0), int(r1) + p))
    return cases


def test_each_native_path_finishes_and_hands_back_the_same_lanes_as_the_python_path(harness):
    ifma = "avx512ifma" in curve.X25519_PATHS
    rng = random.Random(9380)
    cases = _crafted_pairs(rng)
    pairs = [(kind, pair) for kind, kind_pairs in cases.items() for pair in kind_pairs]
    rng.shuffle(pairs)  # every case in every lane of a group of eight, beside the others
    text = "".join(f"{a:096x} {b:096x}\n" for _, (a, b) in pairs)
    lines = subprocess.run([str(harness)], input=text, capture_output=True, text=True, check=True).stdout
    finished = {kind: 0 for kind in cases}
    for (kind, (a, b)), line in zip(pairs, lines.splitlines(), strict=True):
        ok_p, u_p, ok_i, u_i = line.split()
        assert (ok_i, u_i) == ((ok_p, u_p) if ifma else ("-1", "-")), (kind, a, b)
        r0, r1 = mpz(a) % curve.P, mpz(b) % curve.P
        try:
            expected: bytes | None = curve._u_of_field_elements(r0, r1)
        except ArithmeticError:  # the identity: the Python path refuses it too
            expected = None
        same_u = curve._elligator2(r0)[0] == curve._elligator2(r1)[0]
        if ok_p == "1":
            finished[kind] += 1
            assert bytes.fromhex(u_p) == expected, (kind, a, b)
        else:  # handed to the Python path only where the RFC's sum needs its general case, or gives the identity
            assert same_u or expected is None, (kind, a, b)
            assert u_p == "00" * 32
    assert finished["random"] == len(cases["random"])
    assert finished["equal"] == finished["opposite"] == finished["sum is the identity"] == 0
    assert finished["sum of low order"] == 0


def test_the_eight_lane_sha512_reads_no_byte_outside_any_lane_s_message(harness):
    done = subprocess.run([str(harness), "guard"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -11: a read crossed into a guard page
    if "avx512ifma" not in curve.X25519_PATHS and done.stdout.split() == ["no", "avx512"]:
        return  # the eight-lane SHA-512 never runs on this CPU (test_curve.py checks the portable code)
    assert done.stdout.split() == ["checked", "11700", "bad", "0"]


@pytest.mark.parametrize("path", ["avx512ifma", "portable"])
def test_each_native_path_matches_the_rfc_vectors_of_one_and_five_blocks(path):
    # RFC 9380 appendix J.4.1's two long messages (the shared vector file has the three short ones): b_0's input
    # after Z_pad is 133 + 54 and 517 + 54 bytes, two and five blocks, beside short lanes in one group of eight.
    if path not in curve.X25519_PATHS:
        assert path == "avx512ifma"
        return
    native = curve._native
    assert native is not None
    dst = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_RO_"
    vectors = {
        b"q128_" + b"q" * 128: "096e9c8bae6c06b554c1ee69383bb0e82267e064236b3a30608d4ed20b73ac5a",
        b"a512_" + b"a" * 512: "1bc61845a138e912f047b5e70ba9606ba2a447a4dade024c8ef3dd42b7bbc5fe",
        b"abc": "2b4419f1f2d48f5872de692b0aca72cc7b0a60915dd70bde432e826b6abc526d",
    }
    msgs = [*vectors] * 3  # nine: a full group and a group of one
    out, unfinished = native.hash_to_u_batch(msgs, dst, path)
    assert unfinished == []
    assert [out[32 * i : 32 * i + 32][::-1].hex() for i in range(len(msgs))] == [vectors[m] for m in msgs]
