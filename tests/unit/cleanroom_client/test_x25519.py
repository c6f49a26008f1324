"""The SDK's batched X25519 (`cleanroom_client.curve.x25519_batch`): every native path equals `cryptography`.

Native paths (cleanroom_client/_curve25519.c, _x25519_ifma.c): "avx512ifma" (eight ladders at once, where the CPU
has AVX-512 IFMA) and "portable" (any CPU with a compiler); `cryptography` is the fallback without the extension.
Each path is forced in turn and compared with `cryptography` on random keys and points, on the edges RFC 7748's
decoding defines (bit 255 set, u >= p, u = 0, points of low order, whose result is all zero) and on batch sizes
around the eight-lane groups, and with RFC 7748 section 5.2's vectors, the 1,000-iteration one included.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client import curve
from cleanroom_client.curve import _LOW_ORDER_U, X25519_NATIVE, X25519_PATHS, P, _x25519_cryptography, x25519_batch
from cleanroom_client.native import source_sha256

# Where a compiler exists the extension is built (test_curve.py checks that), so both C paths are here on a CPU
# with IFMA, the portable one elsewhere; `cryptography` always.
NATIVE_PATHS = ["avx512ifma", "portable"]


def _cpu_has_ifma() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx512ifma" in flags


def _encode(u: int) -> bytes:
    return u.to_bytes(32, "little")


# Inputs RFC 7748 decodes specially: u >= p (taken mod p), bit 255 set (masked), u = 0, and the points of low
# order in canonical and non-canonical form (their result is all zero).
_LOW = sorted(int(u) for u in _LOW_ORDER_U)
_EDGES = (
    [_encode(u) for u in _LOW]
    + [_encode(u + P) for u in _LOW if u + P < 2**255]
    + [_encode(u | 2**255) for u in _LOW]
    + [_encode(int(P) + d) for d in range(0, 19)]
    + [_encode(2**255 - 1), _encode(2**256 - 1), _encode(9), _encode(9 | 2**255)]
)
_POINT = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.sampled_from(_EDGES),
    st.integers(int(P), 2**256 - 1).map(_encode),
    st.binary(max_size=8).map(curve.hash_to_u),
)
_KEY = st.one_of(
    st.binary(min_size=32, max_size=32), st.sampled_from([bytes(32), b"\xff" * 32, b"\x80" * 32, b"\x01" * 32])
)


@pytest.mark.parametrize("path", NATIVE_PATHS)
@settings(max_examples=60, deadline=None)
@given(key=_KEY, points=st.lists(_POINT, max_size=17))
def test_each_native_path_equals_cryptography_on_any_key_and_point(path, key, points):
    if path not in X25519_PATHS:
        assert path == "avx512ifma"  # the only path a CPU may lack
        assert not _cpu_has_ifma()
        return
    packed = b"".join(points)
    assert x25519_batch(key, packed, path) == _x25519_cryptography(key, packed)


@pytest.mark.parametrize("path", NATIVE_PATHS)
@settings(max_examples=20, deadline=None)
@given(key=_KEY, groups=st.integers(0, 4), rest=st.integers(0, 7), data=st.data())
def test_batches_of_8k_plus_r_points_equal_cryptography(path, key, groups, rest, data):
    if path not in X25519_PATHS:
        assert path == "avx512ifma"
        assert not _cpu_has_ifma()
        return
    packed = b"".join(data.draw(st.lists(_POINT, min_size=8 * groups + rest, max_size=8 * groups + rest)))
    assert x25519_batch(key, packed, path) == _x25519_cryptography(key, packed)


def test_every_edge_point_in_every_lane_and_on_every_path():
    key = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    packed = b"".join(_EDGES)
    expected = _x25519_cryptography(key, packed)
    for low in _LOW:  # a point of low order gives all zero, which the callers treat as rejected
        assert expected[32 * _EDGES.index(_encode(low)) :][:32] == bytes(32)
    for path in X25519_PATHS:
        for shift in range(8):  # every edge point in every one of the eight lanes
            shifted = bytes(32 * shift) + packed
            assert x25519_batch(key, shifted, path)[32 * shift :] == expected, (path, shift)


# RFC 7748 section 5.2.
_RFC_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
_AFTER_1 = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
_AFTER_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


@pytest.mark.parametrize("path", [*X25519_PATHS, "cryptography"])
def test_rfc7748_vectors_including_1000_iterations(path):
    for key_hex, u_hex, out_hex in _RFC_VECTORS:
        assert x25519_batch(bytes.fromhex(key_hex), bytes.fromhex(u_hex), path).hex() == out_hex
    k = u = _encode(9)
    for i in range(1, 1001):  # k <- X25519(k, u), u <- the previous k
        k, u = x25519_batch(k, u, path), k
        if i == 1:
            assert k.hex() == _AFTER_1
    assert k.hex() == _AFTER_1000


def test_the_default_is_ifma_where_the_cpu_has_it_else_cryptography():
    # The portable C ladder is slower than `cryptography` (benchmarks/bench_x25519.py: 0.79x here), so a CPU without
    # IFMA keeps OpenSSL by default; "portable" stays available to force. The same for the point check's native
    # Euler criterion, slower than gmpy2's Legendre symbol without IFMA.
    expected = "avx512ifma" if _cpu_has_ifma() else None
    assert expected == X25519_NATIVE
    assert X25519_PATHS[0] == (X25519_NATIVE or "portable")
    assert "portable" in X25519_PATHS
    assert _cpu_has_ifma() == curve.POINT_CHECK_NATIVE


def test_bad_input_is_a_value_error_that_never_shows_the_key():
    key = bytes(range(1, 32))  # 31 bytes
    native = curve._native
    assert native is not None
    for call in (
        lambda: x25519_batch(key, bytes(32)),
        lambda: x25519_batch(bytes(range(32)), bytes(33)),
        lambda: x25519_batch(bytes(range(32)), bytes(32), "avx1024"),
        lambda: native.x25519_batch(key, bytes(32)),
        lambda: native.x25519_batch(bytes(range(32)), bytes(33)),
        lambda: native.x25519_batch(bytes(range(32)), bytes(32), "avx1024"),
    ):
        with pytest.raises(ValueError, match=r"32 bytes|whole number|path") as caught:
            call()
        message = str(caught.value)
        assert bytes(range(1, 32)).hex()[:16] not in message
        assert "\\x01\\x02" not in message
        assert len(message) < 120


def test_without_the_extension_cryptography_runs_and_gives_the_same_bytes():
    key, u, out = _RFC_VECTORS[0]
    script = (
        "import sys\n"
        "sys.modules['cleanroom_client._curve25519'] = None  # as on a machine that could not compile it\n"
        "from cleanroom_client import curve\n"
        f"out = curve.x25519_batch(bytes.fromhex('{key}'), bytes.fromhex('{u}') + bytes(32))\n"
        "print(curve.X25519_NATIVE, out.hex())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["None", out + "00" * 32]


def test_an_extension_built_from_an_older_source_is_not_used_and_the_user_is_told():
    # An editable install updated without rebuilding keeps the old compiled module, which lacks this version's
    # functions: the Python paths run, with a warning that says how to rebuild, instead of an AttributeError.
    key, u, out = _RFC_VECTORS[0]
    script = (
        "import sys, types, warnings\n"
        "stale = types.ModuleType('cleanroom_client._curve25519')\n"
        "stale.hash_to_u_batch = lambda msgs, dst: (b'', [])  # what the issue-33 first pass built\n"
        "sys.modules['cleanroom_client._curve25519'] = stale\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from cleanroom_client import curve\n"
        "print(curve.NATIVE, curve.X25519_NATIVE, [str(w.message) for w in caught])\n"
        f"print(curve.x25519_batch(bytes.fromhex('{key}'), bytes.fromhex('{u}')).hex(), curve.hash_to_u(b'a').hex())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second = done.stdout.splitlines()
    assert first.startswith("False None [")
    assert "rebuild it with `pip install -e clients/python`" in first
    assert second.split() == [out, curve._hash_to_u_python(b"a").hex()]


def test_the_batch_runs_without_the_gil():
    # While one thread computes a batch in C, this one keeps running Python: the kernel releases the GIL. With the
    # GIL held, this loop would stand still until the batch ended (a tick or two at its start).
    import threading
    import time

    key, points = bytes(range(32)), bytes(32 * 2000)
    path = X25519_PATHS[-1]  # the slowest native path, so the batch lasts long enough to count
    done = threading.Event()

    def batch() -> None:
        x25519_batch(key, points, path)
        done.set()

    ticks = 0
    worker = threading.Thread(target=batch)
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    worker.join()
    assert ticks > 50


# Constant time in the key, checked by machine for the portable ladder: Valgrind's memcheck treats memory marked
# undefined as secret and reports every conditional branch and every memory address computed from it (the
# "ctgrind" technique). The key is marked undefined before x25519_batch and its output defined after, so any
# report is a branch or an index on the key. Valgrind cannot run AVX-512, so the IFMA path is not checked this way:
# it is the same ladder with the same masked swaps (see _x25519_ifma.c).
_HARNESS = r"""
#include <stdio.h>
#include <valgrind/memcheck.h>
#include "_curve25519.c"
/* The control: one branch on a key bit, run when the harness gets an argument. */
static void leak(const uint8_t *k, uint8_t *o) { if (k[3] & 1) o[0] ^= 1; }
int main(int argc, char **argv) {
    (void)argv;
    uint8_t key[32], points[32 * 3] = {9}, out[32 * 3];
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)(37 * i + 11);
    points[32] = 0xe6; points[33] = 0xdb; points[64 + 31] = 0x7f;  /* three arbitrary u */
    VALGRIND_MAKE_MEM_UNDEFINED(key, sizeof key);
    x25519_batch(key, points, out, 3, PATH_PORTABLE);
    if (argc > 1) leak(key, out);
    VALGRIND_MAKE_MEM_DEFINED(out, sizeof out);
    unsigned acc = 0;
    for (int i = 0; i < (int)sizeof out; i++) acc += out[i];
    printf("%u\n", acc);
    return 0;
}
"""


def _build_harness(tmp_path: Path, name: str, text: str) -> Path:
    """Compile a C harness that includes _curve25519.c (and links _x25519_ifma.c) at -O3, as the extension is built:
    the optimiser must not have turned a masked swap into a branch. Returns the binary."""
    import shutil
    import sysconfig

    source = Path(curve.__file__).parent / "_curve25519.c"
    harness = tmp_path / f"{name}.c"
    harness.write_text(text)
    binary = tmp_path / name
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    subprocess.run(
        [
            shutil.which("cc") or "gcc",
            "-O3",
            f"-I{source.parent}",
            f"-I{sysconfig.get_paths()['include']}",
            str(harness),
            str(source.parent / "_x25519_ifma.c"),
            f"-L{libdir}",
            f"-Wl,-rpath,{libdir}",
            f"-lpython{sysconfig.get_config_var('VERSION')}",
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
    )
    return binary


def test_the_portable_ladder_never_branches_or_indexes_on_the_key(tmp_path):
    binary = _build_harness(tmp_path, "harness", _HARNESS)

    def memcheck(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["valgrind", "--error-exitcode=3", str(binary), *args], capture_output=True, text=True, timeout=120
        )

    clean = memcheck()
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "ERROR SUMMARY: 0 errors" in clean.stderr
    leaky = memcheck("leak")  # the check catches a branch on the key: the control is reported
    assert leaky.returncode == 3
    assert "depends on uninitialised value" in leaky.stderr


# Red team (issue 33's native X25519): a hostile peer's points anywhere in batches around the inversion block of
# 256, a point of low order (z = 0, masked in the block's product) at any position of a block, on every path.
_HOSTILE = [*_EDGES, _encode(1), _encode(int(P) - 1), b"\xff" * 32, _encode(0)]


@pytest.mark.parametrize("path", NATIVE_PATHS)
@settings(max_examples=40, deadline=None)
@given(
    key=_KEY,
    n=st.sampled_from([1, 8, 9, 255, 256, 257, 263, 264, 511, 512, 513]),
    seed=st.integers(0, 2**32),
    hostile=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(_HOSTILE)), max_size=12),
)
def test_hostile_points_anywhere_in_blocks_around_256_equal_cryptography(path, key, n, seed, hostile):
    if path not in X25519_PATHS:
        assert not _cpu_has_ifma()
        return
    import random

    rng = random.Random(seed)
    points = [curve.hash_to_u(rng.randbytes(4)) for _ in range(min(n, 16))]
    batch = [points[i % len(points)] for i in range(n)]
    for where, point in hostile:  # a hostile point at any index, the blocks' first and last included
        batch[int(where * n)] = point
    for first in range(0, n, 256):
        batch[first] = rng.choice(_HOSTILE)
        batch[min(first + 255, n - 1)] = rng.choice(_HOSTILE)
    packed = b"".join(batch)
    assert x25519_batch(key, packed, path) == _x25519_cryptography(key, packed)


def test_a_thread_with_the_smallest_stack_python_allows_runs_the_batches():
    # threading.stack_size's minimum is 32 KiB: the batch must not need more stack than that (a crash, not an
    # exception, if it does; with its 33 KB of block arrays on the stack it crashed at 32 and 40 KiB). Each native
    # path in a worker thread with that stack, against cryptography's result computed in the main thread.
    script = (
        "import os, threading\n"
        "from cleanroom_client import curve\n"
        "key, points = os.urandom(32), curve.hash_to_u_batch([i.to_bytes(2, 'little') for i in range(300)])\n"
        "expected = curve._x25519_cryptography(key, points)  # here: OpenSSL itself needs more than 32 KiB\n"
        "threading.stack_size(32768)\n"
        "messages = [i.to_bytes(2, 'little') for i in range(300)]\n"
        "def run():\n"
        "    for path in curve.X25519_PATHS:\n"
        "        print(path, curve.x25519_batch(key, points, path) == expected)\n"
        "    print('hash', curve.hash_to_u_batch(messages) == points)  # 45 KB of Elligator 2 states per block\n"
        "    print('check', not curve.check_points(points).any())\n"
        "worker = threading.Thread(target=run)\n"
        "worker.start()\n"
        "worker.join()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == [word for path in [*X25519_PATHS, "hash", "check"] for word in (path, "True")]


@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_a_buffer_another_thread_rewrites_during_the_batch_gives_one_state_or_the_other(path):
    # With the GIL released the kernel must read only its own copy of the key and points: a bytearray that another
    # thread rewrites meanwhile gives the result of one whole state, never a mix of the two.
    if path not in X25519_PATHS:
        assert not _cpu_has_ifma()
        return
    import threading

    n = 2000 if path == "portable" else 8000
    first = curve.hash_to_u_batch([b"a%d" % i for i in range(n)])
    second = curve.hash_to_u_batch([b"b%d" % i for i in range(n)])
    key = bytes(range(32))
    native = curve._native
    assert native is not None
    outcomes = {native.x25519_batch(key, first, path), native.x25519_batch(key, second, path)}
    buffer = bytearray(first)
    done = threading.Event()
    results: list[bytes] = []

    def batch() -> None:
        for _ in range(3):
            results.append(native.x25519_batch(key, buffer, path))
        done.set()

    worker = threading.Thread(target=batch)
    worker.start()
    flips = 0
    while not done.is_set():
        buffer[:] = second if flips % 2 == 0 else first
        flips += 1
    worker.join()
    assert flips > 10
    assert all(result in outcomes for result in results)


# The ladders' working values (which reveal the key's bits) must not stay on the stack once x25519_batch returns:
# the IFMA ladder's spilled zmm registers lie outside its wiped array. A harness zeroes the stack, runs the batch,
# then reads the dead stack below for any limb of the ladders' final x2, z2 (computed separately); the control, the
# IFMA ladder called alone with nothing wiping after it, must be caught when this CPU has IFMA.
# The two leak harnesses' common inputs: one clamped key and eight points (u = 9 + 256 l), as bytes and as limbs.
_EIGHT_POINTS = r"""
#include <stdio.h>
#include "_curve25519.c"
static uint8_t key[32], points[32 * 8], out[32 * 8];
static uint64_t u[5][8], rx[5][8], rz[5][8];
static void eight_points(void) {
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)(0xa5 ^ (37 * i + 11));
    key[0] &= 248; key[31] &= 127; key[31] |= 64;
    for (int l = 0; l < 8; l++) {
        fe f;
        points[32 * l] = 9; points[32 * l + 1] = (uint8_t)l;
        fe_frombytes(f, points + 32 * l);
        for (int j = 0; j < 5; j++) u[j][l] = f[j];
    }
}
"""
_SCAN_HARNESS = (
    _EIGHT_POINTS
    + r"""
static fe px[8], pz[8];
static void ladder_alone(int path) { (void)path; x25519_ifma_ladder8(key, (const uint64_t(*)[8])u, rx, rz); }
static void batch(int path) { x25519_batch(key, points, out, 8, (enum x25519_path)path); }
__attribute__((noinline, optimize("O0"))) static void padded(void (*f)(int), int a) {
    volatile uint8_t pad[2048]; pad[0] = 1; f(a); pad[1] = 2;
}
__attribute__((noinline, optimize("O0"))) static void clean(void) {
    volatile uint8_t stack[256 * 1024]; for (size_t i = 0; i < sizeof stack; i++) stack[i] = 0;
}
__attribute__((noinline, optimize("O0"))) static size_t scan(void) {
    volatile uint64_t stack[32 * 1024];
    size_t found = 0;
    for (size_t i = 0; i < sizeof stack / 8; i++)
        for (int l = 0; l < 8; l++)
            for (int j = 0; j < 5; j++)
                found += stack[i] && (stack[i] == rx[j][l] || stack[i] == rz[j][l] || stack[i] == px[l][j] ||
                                      stack[i] == pz[l][j]);
    return found;
}
int main(int argc, char **argv) {
    (void)argv;
    eight_points();
    for (int l = 0; l < 8; l++) {
        fe f;
        fe_frombytes(f, points + 32 * l);
        x25519_portable(px[l], pz[l], key, f);
    }
    int ifma = x25519_ifma_available();
    if (ifma) ladder_alone(0);
    if (argc > 1) { clean(); if (ifma) padded(ladder_alone, 0); printf("%zu\n", scan()); return 0; }
    clean(); padded(batch, PATH_PORTABLE); size_t portable = scan();
    size_t vector = 0;
    if (ifma) { clean(); padded(batch, PATH_IFMA); vector = scan(); }
    printf("%zu %zu\n", portable, vector);
    return 0;
}
"""
)


def test_no_ladder_value_is_left_on_the_stack_after_the_batch(tmp_path):
    binary = _build_harness(tmp_path, "scan", _SCAN_HARNESS)
    assert subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split() == ["0", "0"]
    control = int(subprocess.run([str(binary), "control"], capture_output=True, text=True, check=True).stdout)
    assert control > 0 or not _cpu_has_ifma()


# The IFMA ladder's last working values must not stay in the zmm registers either: zmm16..31 are touched only by
# AVX-512 code, so they would keep them long after the batch (found: 24 limbs of the final x2, z2 there). The
# harness reads all 32 registers right after x25519_batch; the control puts one limb in zmm20 and must be caught.
_REGISTER_HARNESS = (
    _EIGHT_POINTS
    + r"""
static uint64_t regs[32][8];
__attribute__((noinline, target("avx512f"))) static void dump(void) {
#define R(n) __asm__ __volatile__("vmovdqu64 %%zmm" #n ", %0" : "=m"(regs[n]));
    R(0) R(1) R(2) R(3) R(4) R(5) R(6) R(7) R(8) R(9) R(10) R(11) R(12) R(13) R(14) R(15)
    R(16) R(17) R(18) R(19) R(20) R(21) R(22) R(23) R(24) R(25) R(26) R(27) R(28) R(29) R(30) R(31)
}
__attribute__((noinline, target("avx512f"))) static void control(void) {
    __asm__ __volatile__("vmovdqu64 %0, %%zmm20" : : "m"(rx[2]) : "xmm20");
}
int main(int argc, char **argv) {
    (void)argv;
    eight_points();
    x25519_ifma_ladder8(key, (const uint64_t(*)[8])u, rx, rz);
    if (argc > 1) control(); else x25519_batch(key, points, out, 8, PATH_IFMA);
    dump();
    int found = 0;
    for (int r = 0; r < 32; r++)
        for (int l = 0; l < 8; l++)
            for (int a = 0; a < 5; a++)
                for (int b = 0; b < 8; b++) found += regs[r][l] && (regs[r][l] == rx[a][b] || regs[r][l] == rz[a][b]);
    printf("%d\n", found);
    return 0;
}
"""
)


def test_no_ladder_value_is_left_in_the_vector_registers_after_the_batch(tmp_path):
    if "avx512ifma" not in X25519_PATHS:
        assert not _cpu_has_ifma()
        return
    binary = _build_harness(tmp_path, "registers", _REGISTER_HARNESS)
    assert subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split() == ["0"]
    assert int(subprocess.run([str(binary), "control"], capture_output=True, text=True, check=True).stdout) > 0


def test_a_cpu_without_ifma_defaults_to_cryptography_and_gmpy2_with_the_same_results():
    # The extension as a CPU without AVX-512 IFMA sees it (X25519_PATHS is just "portable"): x25519_batch runs
    # `cryptography` by default (the portable ladder is slower), "portable" can still be forced, and check_points
    # uses gmpy2, not the extension's portable Euler criterion (slower too). Results equal the IFMA machine's.
    key, u, out = _RFC_VECTORS[0]
    script = (
        "import importlib, sys, types\n"
        "import cleanroom_client, cleanroom_client._curve25519 as real\n"
        "calls = []\n"
        "fake = types.ModuleType('cleanroom_client._curve25519')\n"
        "fake.hash_to_u_batch, fake.x25519_batch = real.hash_to_u_batch, real.x25519_batch\n"
        "fake.on_curve_batch = lambda *a: calls.append(1) or real.on_curve_batch(*a)\n"
        "fake.X25519_PATHS, fake.SOURCE_SHA256 = ('portable',), real.SOURCE_SHA256\n"
        "sys.modules.pop('cleanroom_client.curve', None)\n"
        "sys.modules['cleanroom_client._curve25519'] = fake\n"
        "cleanroom_client._curve25519 = fake\n"
        "curve = importlib.import_module('cleanroom_client.curve')\n"
        f"key, u = bytes.fromhex('{key}'), bytes.fromhex('{u}')\n"
        "codes = curve.check_points(u + bytes(32) + b'\\xff' * 32 + curve.hash_to_u(b'a'))\n"
        "print(curve.X25519_NATIVE, curve.POINT_CHECK_NATIVE, len(calls), list(codes))\n"
        "print(curve.x25519_batch(key, u).hex(), curve.x25519_batch(key, u, 'portable').hex())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second = done.stdout.splitlines()
    codes = list(curve.check_points(bytes.fromhex(u) + bytes(32) + b"\xff" * 32 + curve.hash_to_u(b"a")))
    assert first == f"None False 0 {codes}"
    assert second.split() == [out, out]


def test_an_extension_built_from_other_sources_with_the_same_functions_is_not_used():
    # An editable install updated without rebuilding, where the old module already has every function (built before
    # a fix to the C, say the wipes): it must not run silently. The extension carries the SHA-256 of the C sources
    # it was built from; where they lie beside curve.py (editable installs, wheels), a mismatch means the Python
    # paths run, with a warning saying how to rebuild. The built module here matches its sources.
    native = curve._native
    assert native is not None
    assert source_sha256(Path(curve.__file__).parent, curve._C_SOURCES) == native.SOURCE_SHA256
    key, u, out = _RFC_VECTORS[0]
    script = (
        "import sys, types, warnings\n"
        "import cleanroom_client, cleanroom_client._curve25519 as real\n"
        "stale = types.ModuleType('cleanroom_client._curve25519')\n"
        "for name in ('hash_to_u_batch', 'on_curve_batch', 'x25519_batch', 'X25519_PATHS'):\n"
        "    setattr(stale, name, getattr(real, name))\n"
        "stale.SOURCE_SHA256 = '0' * 64  # built from other sources\n"
        "sys.modules['cleanroom_client._curve25519'] = stale\n"
        "cleanroom_client._curve25519 = stale\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from cleanroom_client import curve\n"
        "print(curve.NATIVE, curve.X25519_NATIVE, [str(w.message) for w in caught])\n"
        f"print(curve.x25519_batch(bytes.fromhex('{key}'), bytes.fromhex('{u}')).hex())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second = done.stdout.splitlines()
    assert first.startswith("False None [")
    assert "built from other sources" in first
    assert "rebuild it with `pip install -e clients/python`" in first
    assert second == out
