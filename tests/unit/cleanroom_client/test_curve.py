import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client.curve import (
    _LOW_ORDER_U,
    CLEANROOM_DST,
    POINT_PROBLEMS,
    InvalidPointError,
    P,
    check_points,
    expand_message_xmd,
    hash_to_curve,
    hash_to_u,
    is_valid_point,
    validate_point,
)

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "vectors" / "rfc9380-curve25519-ro.json"
COPY = REPO / "tests" / "vectors" / "rfc9380-curve25519-ro.json"


def _vectors() -> dict:
    data = json.loads(COPY.read_text())
    if SHARED.exists():  # the published file is the authority; our copy must equal it
        assert json.loads(SHARED.read_text()) == data
    return data


def test_rfc9380_vectors_full_point():
    data = _vectors()
    assert data["suite"] == "curve25519_XMD:SHA-512_ELL2_RO_"
    assert len(data["vectors"]) >= 3
    for v in data["vectors"]:
        u, y = hash_to_curve(v["msg"].encode(), data["dst"].encode())
        assert format(int(u), "064x") == v["P_x"]
        assert format(int(y), "064x") == v["P_y"]


def test_rfc9380_vectors_u_only_path():
    data = _vectors()
    for v in data["vectors"]:
        assert hash_to_u(v["msg"].encode(), data["dst"].encode()) == bytes.fromhex(v["P_x"])[::-1]


@given(st.binary(max_size=200))
def test_project_dst_u_only_equals_full_point(msg):
    u, _ = hash_to_curve(msg, CLEANROOM_DST)
    out = hash_to_u(msg, CLEANROOM_DST)
    assert out == int(u).to_bytes(32, "little")
    validate_point(out)  # on the curve, not of low order


def test_expand_message_rejects_long_dst():
    with pytest.raises(ValueError, match="DST"):
        expand_message_xmd(b"", b"x" * 256, 32)


def _twist_point() -> bytes:
    for u in range(2, 1000):
        if not is_valid_point(u.to_bytes(32, "little")):
            return u.to_bytes(32, "little")
    raise AssertionError("no twist point found")


def test_validate_point_rejects_each_kind_of_bad_point():
    with pytest.raises(InvalidPointError, match="32 bytes"):
        validate_point(bytes(31))
    with pytest.raises(InvalidPointError, match="low order"):
        validate_point(bytes(32))
    with pytest.raises(InvalidPointError, match="low order"):
        validate_point((1).to_bytes(32, "little"))
    with pytest.raises(InvalidPointError, match="not reduced"):
        validate_point(int(P).to_bytes(32, "little"))
    with pytest.raises(InvalidPointError, match="twist"):
        validate_point(_twist_point())


def test_half_of_raw_hashes_would_lie_on_the_twist():
    # The reason for hash-to-curve: raw 32-byte values land on the twist about half the time.
    import hashlib

    on_curve = sum(
        is_valid_point(hashlib.sha256(bytes([i, j])).digest()[:31] + b"\0") for i in range(20) for j in range(20)
    )
    assert 120 < on_curve < 280


def test_x25519_public_key_is_valid_point():
    pub = X25519PrivateKey.generate().public_key()
    raw = pub.public_bytes_raw()
    validate_point(raw)
    assert X25519PublicKey.from_public_bytes(raw) is not None


def _single_code(point: bytes) -> int:
    try:
        validate_point(point)
    except InvalidPointError as exc:
        return POINT_PROBLEMS.index(str(exc))
    return 0


# Points of every kind: hashed (valid), arbitrary bytes (curve, twist, unreduced), low-order ones and values at p.
_EDGE = [int(u).to_bytes(32, "little") for u in _LOW_ORDER_U] + [
    int(P + d).to_bytes(32, "little") for d in (-2, -1, 0, 1, 18)
]
_POINTS = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=16).map(hash_to_u),
    st.sampled_from(_EDGE),
    st.integers(0, 2**256 - 1).map(lambda u: u.to_bytes(32, "little")),
)


@given(st.lists(_POINTS, max_size=20))
def test_check_points_agrees_with_validate_point_on_every_point(points):
    assert check_points(b"".join(points)).tolist() == [_single_code(p) for p in points]


def test_check_points_refuses_a_ragged_buffer():
    with pytest.raises(InvalidPointError, match="whole number"):
        check_points(bytes(33))


# The native hash to curve (cleanroom_client/_curve25519.c): built by the SDK's install where a C compiler exists,
# chosen automatically, equal to the Python path and to the RFC vectors; the Python path is the fallback.


def test_native_hash_to_curve_is_active_where_a_compiler_exists():
    import shutil

    from cleanroom_client import curve

    assert bool(shutil.which("cc") or shutil.which("gcc")) == curve.NATIVE


def test_native_batch_matches_the_rfc_vectors_including_the_held_back_file():
    from cleanroom_client.curve import hash_to_u_batch

    for source in [COPY, SHARED] if SHARED.exists() else [COPY]:  # the shared file is the authority (see above)
        data = json.loads(source.read_text())
        out = hash_to_u_batch([v["msg"].encode() for v in data["vectors"]], data["dst"].encode())
        assert out == b"".join(bytes.fromhex(v["P_x"])[::-1] for v in data["vectors"])


_RFC_DST = json.loads(COPY.read_text())["dst"].encode()


@given(
    st.lists(st.binary(max_size=300), max_size=12),
    st.sampled_from([CLEANROOM_DST, _RFC_DST, b"", b"x" * 255]),
)
def test_native_batch_equals_the_python_path(msgs, dst):
    from cleanroom_client.curve import _hash_to_u_python, hash_to_u_batch

    expected = b"".join(_hash_to_u_python(m, dst) for m in msgs)
    assert hash_to_u_batch(msgs, dst) == expected
    assert b"".join(hash_to_u(m, dst) for m in msgs) == expected


def test_batch_refuses_a_dst_longer_than_255_bytes():
    from cleanroom_client.curve import hash_to_u_batch

    with pytest.raises(ValueError, match="DST"):
        hash_to_u_batch([b"a"], b"x" * 256)


def test_without_the_extension_the_python_path_is_chosen_and_gives_the_same_points():
    import subprocess
    import sys

    data = _vectors()
    script = (
        "import json, sys\n"
        "sys.modules['cleanroom_client._curve25519'] = None  # as on a machine that could not compile it\n"
        "from cleanroom_client import curve\n"
        "data = json.loads(sys.stdin.read())\n"
        "msgs = (v['msg'].encode() for v in data['vectors'])  # one-shot: read once\n"
        "out = curve.hash_to_u_batch(msgs, data['dst'].encode())\n"
        "print(curve.NATIVE, out.hex())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(data), capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [
        "False",
        b"".join(bytes.fromhex(v["P_x"])[::-1] for v in data["vectors"]).hex(),
    ]


def test_points_the_native_path_leaves_are_computed_in_python(monkeypatch):
    # The native path hands back (index, message) when the two mapped points share u or the sum is the identity
    # (probability ~2^-250: no message known to reach it), so the hand-over is shown with the extension replaced.
    # Python finishes the lane from the message the batch read (its own tuple), not from the caller's list, which
    # may have changed since (another thread, a finalizer) or be a one-shot iterable.
    from cleanroom_client import curve

    def partial(msgs: list[bytes], dst: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
        read = list(msgs)
        msgs[1] = b"changed after the batch read it"
        return b"".join(curve._hash_to_u_python(m, dst) if i != 1 else bytes(32) for i, m in enumerate(read)), [
            (1, read[1])
        ]

    class Native:
        hash_to_u_batch = staticmethod(partial)

    monkeypatch.setattr(curve, "_native", Native)
    msgs = [b"a", b"b", b"c"]
    assert curve.hash_to_u_batch(msgs) == b"".join(curve._hash_to_u_python(m) for m in (b"a", b"b", b"c"))


# The native hash to curve runs eight messages at once with AVX-512 where the CPU has it (SHA-512 in _sha512_mb.h,
# Elligator 2, the sum and the division with IFMA in _h2c_ifma.h), else one at a time in C. Each path, forced, equals
# the Python path and the RFC vectors, on batches that cross the eight-lane groups and the 64-message blocks.


@pytest.mark.parametrize("path", ["avx512ifma", "portable"])
@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=140),
    st.sampled_from([CLEANROOM_DST, _RFC_DST, b"", b"x" * 255]),
)
def test_each_native_path_of_the_hash_equals_the_python_path(path, msgs, dst):
    from cleanroom_client import curve

    if path not in curve.X25519_PATHS:  # the paths the extension runs on this CPU (test_x25519.py checks which)
        assert path == "avx512ifma"
        return
    assert curve._native is not None
    packed, unfinished = curve._native.hash_to_u_batch(msgs, dst, path)
    assert unfinished == []
    assert packed == b"".join(curve._hash_to_u_python(m, dst) for m in msgs)


def test_each_native_path_of_the_hash_matches_the_rfc_vectors():
    from cleanroom_client import curve

    data = _vectors()
    msgs = [v["msg"].encode() for v in data["vectors"]] * 5  # 25 messages: three groups of eight and a tail
    expected = b"".join(bytes.fromhex(v["P_x"])[::-1] for v in data["vectors"]) * 5
    assert curve._native is not None
    for path in curve.X25519_PATHS:
        assert curve._native.hash_to_u_batch(msgs, data["dst"].encode(), path) == (expected, [])


@pytest.mark.parametrize("path", ["avx512ifma", "portable"])
@settings(max_examples=40, deadline=None)
@given(st.lists(_POINTS, max_size=20))
def test_each_native_path_of_the_curve_test_equals_the_legendre_symbol(path, points):
    # check_points' curve-or-twist test in C (Euler's criterion) against gmpy2's Legendre symbol, on the low 255
    # bits of any 32 bytes (the range check before it refuses the rest).
    import gmpy2

    from cleanroom_client import curve

    if path not in curve.X25519_PATHS:
        assert path == "avx512ifma"
        return
    assert curve._native is not None
    expected = []
    for p in points:
        u = int.from_bytes(p, "little") & (2**255 - 1)
        expected.append(int(gmpy2.legendre(u * (u * (u + 486662) + 1) % P, P) == 1))
    assert list(curve._native.on_curve_batch(b"".join(points), path)) == expected


@settings(max_examples=20, deadline=None)
@given(st.lists(_POINTS, max_size=20))
def test_check_points_without_the_extension_gives_the_same_codes(points):
    from cleanroom_client import curve

    packed = b"".join(points)
    native = check_points(packed).tolist()
    saved = curve._native
    curve._native = None  # as on a machine that could not compile it: gmpy2's Legendre symbol per point
    try:
        assert check_points(packed).tolist() == native
    finally:
        curve._native = saved


# expand_message_xmd's SHA-512 on the "avx512ifma" path hashes eight messages at once, one per 64-bit lane of a zmm
# register (AVX-512F/BW/VL, cleanroom_client/_sha512_mb.c); "portable" hashes one at a time. Both equal hashlib on
# batches whose lanes end in different blocks (lengths around the 111/112- and 128-byte padding edges), and the hash
# to curve built on them equals the Python path for messages and DSTs whose blocks differ from lane to lane.


def _native() -> ModuleType:
    from cleanroom_client import curve

    assert curve._native is not None
    return curve._native


@pytest.mark.parametrize("path", ["avx512ifma", "portable"])
@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=400), min_size=1, max_size=20))
def test_each_native_path_of_sha512_equals_hashlib(path, msgs):
    import hashlib

    if path not in _native().X25519_PATHS:  # the paths the extension runs on this CPU (test_x25519.py checks which)
        assert path == "avx512ifma"
        return
    assert _native().sha512_batch(msgs, path) == b"".join(hashlib.sha512(m).digest() for m in msgs)


def test_each_native_path_of_sha512_equals_hashlib_on_every_length_to_400_bytes():
    import hashlib

    data = bytes(range(256)) * 2
    for step in (1, 7):  # neighbouring lanes one byte apart, and seven apart (different block counts in a group)
        msgs = [data[: (i * step) % 401] for i in range(401)]
        expected = b"".join(hashlib.sha512(m).digest() for m in msgs)
        for path in _native().X25519_PATHS:
            assert _native().sha512_batch(msgs, path) == expected, path
    with pytest.raises(ValueError, match="path"):
        _native().sha512_batch([b""], "sse2")


@pytest.mark.parametrize("dst", [CLEANROOM_DST, b"", b"x" * 62, b"x" * 63, b"x" * 255])
def test_each_native_path_of_the_hash_equals_the_python_path_on_lanes_of_different_lengths(dst):
    from cleanroom_client import curve

    data = bytes(range(256))
    msgs = [data[: (i * 13) % 257] for i in range(40)]  # 0..256 bytes: b_0 ends in a different block per lane
    expected = b"".join(curve._hash_to_u_python(m, dst) for m in msgs)
    for path in _native().X25519_PATHS:
        assert _native().hash_to_u_batch(msgs, dst, path) == (expected, []), path


# Mnemonics (as objdump prints them) of instructions beyond the x86-64 baseline (SSE2) that GCC and Clang emit
# under a flag: VEX/EVEX (all begin with v), AVX-512's mask registers, BMI1/2, ADX, LZCNT/TZCNT/POPCNT, MOVBE,
# SSSE3 and SSE4.1/4.2. Not "v" alone: a build with -mbmi2 (say, from CFLAGS) puts mulx, shlx and rorx into fe_mul,
# sha512_block and py_hash_to_u_batch, which run on every CPU, and has no v instruction outside the marked functions.
_BEYOND_BASELINE = re.compile(
    r"v[a-z].*|k(add|and|andn|mov|not|or|ortest|shiftl|shiftr|test|unpck|xnor|xor)[bwdq]?.*"
    r"|mulx|shlx|shrx|sarx|rorx|andn|bextr|blsi|blsmsk|blsr|bzhi|pdep|pext|adcx|adox|lzcnt|tzcnt|popcnt|movbe"
    r"|crc32[bwlq]?|pshufb|palignr|ph(add|sub)[a-z]*|pmaddubsw|pmulhrsw|psign[bwd]|pabs[bwd]|pblend[a-z]*"
    r"|blendv?p[sd]|pmulld|pmuldq|pm(in|ax)(sb|sd|ud|uw)|ptest|pextr[bdq]|pinsr[bdq]|pmov[sz]x[a-z]*|packusdw"
    r"|pcmp(eq|gt)q|pcmp[ei]str[im]|round[sp][sd]|dpp[sd]|(insert|extract)ps|movntdqa|mpsadbw|phminposuw"
)
# The functions compiled with a target attribute (_x25519_ifma.c, _h2c_ifma.h, _sha512_mb.h), which run only after
# x25519_ifma_available() or sha512_mb_available() said yes, and their compiler clones (.cold, .constprop.0).
_MARKED = re.compile(
    r"(x25519_ifma_(ladder8|euler_8|h2c_8|divide_8)|fe8_[a-z0-9_]+|sha512_mb8|xmd96_mb8"
    r"|mb_(compress|load|absorb|store|xmd_block))(\.[a-z0-9_.]+)?"
)


def _functions_beyond_baseline(listing: str) -> set[str]:
    """The functions of an `objdump -d --no-show-raw-insn` listing with an instruction beyond the x86-64 baseline."""
    users, function = set(), ""
    for line in listing.splitlines():
        if header := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            function = header.group(1)
        elif (instruction := re.match(r"^\s+[0-9a-f]+:\s+([a-z0-9]+)", line)) and _BEYOND_BASELINE.fullmatch(
            instruction.group(1)
        ):
            users.add(function)
    return users


def test_the_disassembly_check_sees_every_kind_of_instruction_beyond_the_baseline():
    listing = "\n".join(
        f"000000000000{i:04x} <f{i}>:\n    {i:x}:\t{instruction}"
        for i, instruction in enumerate(
            [
                "vpaddq %zmm1,%zmm2,%zmm3",
                "kmovb  %k1,%eax",
                "mulx   %r8,%rax,%rdx",
                "shlx   %rax,%rcx,%rdx",
                "rorx   $0xe,%rax,%rdx",
                "adcx   %rax,%rdx",
                "popcnt %rax,%rax",
                "tzcnt  %rax,%rax",
                "pshufb %xmm1,%xmm0",
                "pinsrq $0x1,%rax,%xmm0",
                "pmulld %xmm1,%xmm0",
                "crc32q %rax,%rdx",
                # the baseline: SSE2 and plain x86-64, whatever their names share with the above
                "pandn  %xmm1,%xmm0",
                "andnps %xmm1,%xmm0",
                "pextrw $0x1,%xmm0,%eax",
                "pinsrw $0x1,%eax,%xmm0",
                "paddq  %xmm1,%xmm0",
                "mul    %rdx",
                "shl    %cl,%rax",
                "ror    $0xe,%rax",
                "movdqu (%rdi),%xmm0",
                "xgetbv",
            ]
        )
    )
    assert _functions_beyond_baseline(listing) == {f"f{i}" for i in range(12)}


def test_vector_instructions_are_only_in_the_functions_that_run_after_the_cpu_check():
    # One build for every x86-64 CPU: the AVX-512 code (the X25519 ladder, the hash to curve's SHA-512 and field work)
    # is compiled only into functions marked with a target attribute, which run only after the run-time check of the
    # CPU. An instruction beyond the baseline anywhere else (a flag like -march=native or -mbmi2, a target function
    # inlined into plain code) would crash an older CPU on the portable path. The build's disassembly shows where.
    import platform
    import shutil
    import subprocess

    assert shutil.which("objdump"), "binutils come with the C compiler that built the extension"
    build = _native().__file__
    assert build is not None
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", build], capture_output=True, text=True, check=True
    ).stdout
    users = _functions_beyond_baseline(listing)
    assert {name for name in users if not _MARKED.fullmatch(name)} == set()
    assert bool(users) == (platform.machine() == "x86_64")


# Valgrind runs programs on a virtual CPU without AVX-512 (its CPUID hides what it cannot run, and an instruction it
# does not know stops the program with SIGILL): the CPU the run-time check must send to the portable code.
_ON_A_CPU_WITHOUT_AVX512 = """
import hashlib
from cleanroom_client import _curve25519, curve

try:
    _curve25519.hash_to_u_batch([b"a"], b"dst", "avx512ifma")
    refused = False
except ValueError:
    refused = True
msgs = [bytes([i % 251]) * (i % 300) for i in range(70)]  # a block of 64 and a short one, lanes of every length
points = curve.hash_to_u_batch(msgs)
key = bytes(range(32))
print(
    curve.NATIVE,
    curve.X25519_NATIVE,
    curve.POINT_CHECK_NATIVE,
    "/".join(curve.X25519_PATHS),
    refused,
    points == b"".join(curve._hash_to_u_python(m) for m in msgs),
    _curve25519.sha512_batch(msgs) == b"".join(hashlib.sha512(m).digest() for m in msgs),
    curve.x25519_batch(key, points) == curve._x25519_cryptography(key, points),
    not curve.check_points(points).any(),
)
"""


def test_on_a_cpu_without_avx512_the_extension_chooses_and_runs_the_portable_code():
    # The same build under Valgrind: the paths on offer, the forced AVX-512 path refused, and the hash to curve, its
    # SHA-512, X25519 and the point checks giving the right bytes without a SIGILL.
    import shutil
    import subprocess
    import sys

    assert shutil.which("valgrind"), "installed with the build tools (test_x25519.py's constant-time check uses it)"
    done = subprocess.run(
        ["valgrind", "-q", "--tool=none", sys.executable, "-c", _ON_A_CPU_WITHOUT_AVX512],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["True", "None", "False", "portable"] + ["True"] * 5


# A program embedding the SDK may hand over a list that changes while the native batch runs: the batch allocates
# (its fallback list) after it has taken the list's items, and on Python 3.11 a GC allocation runs the collector,
# whose finalizers run arbitrary code. Here a finalizer empties the caller's list and refills it during the call:
# the batch must hash one state of the list, as passed or as the finalizer left it, never read the freed item
# array (it crashed with a segmentation fault or read a freed object: a use-after-free in h2c_messages; a copy made
# with PySequence_Tuple still crashed, since that allocates while it holds the array). In a child process, since
# the failure is a crash.
_MUTATING_FINALIZER = """
import gc, os, sys
from cleanroom_client import curve

native, path = curve._native, sys.argv[1]
msgs = [os.urandom(200) for _ in range(100)]
snapshot = list(msgs)


class Mutator:
    def __del__(self):
        msgs.clear()  # frees the item array and the messages the batch has not read yet
        msgs.extend(b"y" * 100_000 for _ in range(3))


gc.disable()
keep = [[] for _ in range(300)]  # empties the list free list: the batch's PyList_New goes to the collector
cycle = Mutator()
cycle.me = cycle
del cycle
gc.set_threshold(1)
gc.enable()
out, unfinished = native.hash_to_u_batch(msgs, b"dst", path)
changed_during_the_call = len(msgs) == 3
gc.set_threshold(700)
states = [b"".join(curve._hash_to_u_python(m, b"dst") for m in state) for state in (snapshot, msgs)]
print(changed_during_the_call or sys.version_info >= (3, 12), out in states, unfinished)
"""


@pytest.mark.parametrize("path", ["avx512ifma", "portable"])
def test_a_list_a_finalizer_changes_during_the_native_batch_is_hashed_as_it_was_passed(path):
    import subprocess
    import sys

    if path not in _native().X25519_PATHS:
        assert path == "avx512ifma"
        return
    done = subprocess.run([sys.executable, "-c", _MUTATING_FINALIZER, path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    # On 3.11 the finalizer provably ran inside the call (from 3.12 the collector runs only between bytecodes).
    assert done.stdout.split() == ["True", "True", "[]"]


# What a program passes that is not bytes is refused the same way with and without the extension: the native batch
# takes bytes objects only (a bytes subclass is bytes), and the Python path hashed any buffer (a bytearray, a
# memoryview) and keyed its DST cache by any hashable, so the same call worked on one machine and not on another.
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("bad", [bytearray(b"abc"), memoryview(b"abc"), "abc", 3, None])
def test_a_message_or_dst_that_is_not_bytes_is_refused_on_every_path(monkeypatch, native, bad):
    from cleanroom_client import curve

    if not native:
        monkeypatch.setattr(curve, "_native", None)  # as on a machine that could not compile the extension
    with pytest.raises(TypeError, match="bytes"):
        curve.hash_to_u_batch([b"a", bad])
    with pytest.raises(TypeError, match="bytes"):
        curve.hash_to_u_batch([b"a"], bad)

    class Subclass(bytes):
        pass

    assert curve.hash_to_u_batch([Subclass(b"abc")], Subclass(b"dst")) == curve._hash_to_u_python(b"abc", b"dst")
