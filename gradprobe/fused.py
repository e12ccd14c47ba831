"""One-pass CPU kernels for the probe's statistics (fused.c), built with the machine's C compiler on first use.

Eager PyTorch reads a buffer once per statistic and costs a few microseconds per call even when the data
is small; a logging step of a 20-layer MLP was ~250 such calls over ~5 MB, a third of the step. These
kernels read each buffer once for all of its statistics, a whole list of tensors per call (README,
Performance). They are used only for contiguous float32 tensors on the CPU. Everything else, every
machine without a C compiler and every process with GPL_FUSED=0 takes the eager path in stats.py, which
is also what the tests check these against.

The library is compiled once per source, flags, compiler and machine type (~1 s) into the user's cache
directory (GPL_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /gradient-pathology-lab) and shared by every
process: parallel study workers each build into a temporary file and rename it into place. Only a library
this user built is loaded (README, Security): the folder must be the user's and writable by no one else
(otherwise, or where it cannot be made, a fresh private temporary folder is built into, with a warning),
folders are made 0700 and files 0600 whatever the umask, and the library's SHA-256, written beside it,
is checked before ctypes loads it; a damaged or foreign library is rebuilt, with one warning.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from gradprobe.activations import ACTIVATIONS

ENV = "GPL_FUSED"  # "0": eager statistics only
SOURCE = Path(__file__).with_name("fused.c")
# No -ffast-math: -fno-math-errno/-fno-trapping-math are enough for the reductions to vectorize, and NaN
# and inf keep their IEEE meaning. -fopenmp shares the buffers out among PyTorch's OpenMP threads; the
# serial build (-fopenmp-simd: the same vector code, no runtime) is for compilers without OpenMP and for
# a torch whose OpenMP runtime is not the libgomp.so.1 that the library would load (`_openmp_runtimes`).
FLAGS = ("-O3", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math")
THREADING = {"openmp": ("-fopenmp",), "serial": ("-fopenmp-simd",)}
# Saturation as fused.c's `kind` argument, from the activation registry; an activation without a kind
# (GELU: φ' needs z) is eager only.
KINDS = {name: act.fused_kind for name, act in ACTIVATIONS.items() if act.fused_kind is not None}

_P = ctypes.c_void_p
_SIGNATURES = {  # name: (argument types, result type)
    "gpl_norms": ([ctypes.c_int64, _P, _P, _P], None),
    "gpl_grad_rows": ([ctypes.c_int64, _P, _P, ctypes.c_double, _P, _P, _P], ctypes.c_int64),
    "gpl_update_ratios": ([ctypes.c_int64, _P, _P, _P, ctypes.c_int32, _P], None),
    "gpl_act_rows": (
        [ctypes.c_int64, _P, _P, ctypes.c_int32, ctypes.c_float, ctypes.c_double, _P, _P, _P],
        ctypes.c_int64,
    ),
}


def cache_dir() -> Path:
    """Where the built library is kept."""
    if explicit := os.environ.get("GPL_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradient-pathology-lab"


def compiler() -> str | None:
    """The C compiler to build with: $CC, else `cc` or `gcc` on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(threading: str = "openmp", directory: Path | None = None) -> Path:
    """Compile fused.c with `THREADING[threading]` (unless built already) and return its path; raises on failure."""
    compiler_path = compiler()
    if not compiler_path:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    flags = (*FLAGS, *THREADING[threading])
    key = b"\0".join(
        [SOURCE.read_bytes(), " ".join(flags).encode(), compiler_path.encode(), platform.machine().encode()]
    )
    target = _private_folder(directory or cache_dir()) / f"fused-{threading}-{hashlib.sha256(key).hexdigest()[:16]}.so"
    problem = _problem(target)
    if problem is None:
        return target
    if target.exists() or target.is_symlink():
        warnings.warn(f"kernel library {target} not loaded ({problem}): rebuilding it", RuntimeWarning, stacklevel=2)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # mkdtemp: 0700
        built = Path(tmp) / target.name
        done = subprocess.run([compiler_path, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise RuntimeError(f"{compiler_path} failed: {last[0]}")
        os.chmod(built, 0o600)  # the compiler's mode follows the umask
        digest = Path(tmp) / _digest_path(target).name
        digest.write_text(_sha256(built))
        os.chmod(digest, 0o600)
        # Digest first: a worker that sees the new library sees its digest (renames are atomic and ordered).
        os.replace(digest, _digest_path(target))
        os.replace(built, target)  # atomic: a worker building at the same time finds a whole library
    return target


def _owned_privately(info: os.stat_result) -> bool:
    """Whether the file or folder `info` describes is this user's and writable by no one else."""
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _make_private(directory: Path) -> None:
    """Make `directory` and its missing parents with mode 0700, whatever the umask."""
    for folder in reversed([p for p in (directory, *directory.parents) if not p.exists()]):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # a parallel worker made it first
            continue
        os.chmod(folder, 0o700)


def _private_folder(directory: Path) -> Path:
    """`directory`, made if missing, when it is this user's alone; else a fresh private temporary folder."""
    try:
        _make_private(directory)
        if directory.is_dir() and _owned_privately(directory.stat()):  # a link to a private folder is fine
            return directory
        reason = "not a folder of this user's alone"
    except OSError as err:  # e.g. a read-only home
        reason = err.strerror or str(err)
    fresh = Path(tempfile.mkdtemp(prefix="gradient-pathology-lab-"))  # unpredictable name, 0700
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)  # a loaded library stays mapped once unlinked
    warnings.warn(f"kernel cache {directory} not used ({reason}): building into {fresh}", RuntimeWarning, stacklevel=3)
    return fresh


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _problem(library: Path) -> str | None:
    """Why `library` must not be loaded (missing, foreign, damaged), or None when it is the one this user built."""
    digest = _digest_path(library)
    try:
        if not library.is_file() or library.is_symlink():
            return "missing or not a file"
        if not digest.is_file() or digest.is_symlink():
            return "no digest beside it"
        if not (_owned_privately(library.lstat()) and _owned_privately(digest.lstat())):
            return "owned by another user or writable by others"
        if _sha256(library) != digest.read_text().strip():
            return "its SHA-256 is not the one written when it was built"
    except OSError as err:
        return err.strerror or str(err)
    return None


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtime libraries mapped into this process (Linux; empty where /proc is not)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if re.search(r"/lib(g|i)?omp[^/]*\.so", line)}


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib, errors = None, []
    for threading in THREADING:
        try:
            before = _openmp_runtimes()
            lib = ctypes.CDLL(str(build(threading)))
        except (OSError, RuntimeError) as err:
            errors.append(f"{threading}: {err}")
            continue
        if threading == "openmp" and len(_openmp_runtimes()) > max(len(before), 1):
            errors.append("openmp: not torch's OpenMP runtime")  # loaded, never called: its pool never starts
            lib = None
            continue
        break
    if lib is None:
        warnings.warn(
            f"fused statistics unavailable, using eager PyTorch (slower logging steps): {'; '.join(errors)}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    for name, (argtypes, restype) in _SIGNATURES.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, restype
    return lib


def enabled() -> bool:
    """Whether the fused kernels are switched on (GPL_FUSED is not 0) and built."""
    return os.environ.get(ENV, "1") != "0" and _library() is not None


def usable(tensors: Sequence[Tensor]) -> bool:
    """Whether the kernels can read these tensors as they are: contiguous float32 on the CPU, and built."""
    return (
        bool(tensors)
        and all(t.is_cpu and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
        and enabled()
    )


def _pointers(tensors: Sequence[Tensor]) -> tuple[ctypes.Array, ctypes.Array]:
    return (_P * len(tensors))(*[t.data_ptr() for t in tensors]), (ctypes.c_int64 * len(tensors))(
        *[t.numel() for t in tensors]
    )


def norms(tensors: Sequence[Tensor]) -> Tensor:
    """(k,) float32: the L2 norm of each tensor (squares summed in double); inf only beyond float32's range."""
    out = torch.empty(len(tensors), dtype=torch.float32)
    _library().gpl_norms(len(tensors), *_pointers(tensors), out.data_ptr())
    return out


def _rows(count: int, flags: Tensor, rows: Tensor) -> tuple[Tensor, list[int]] | None:
    if count < 0:
        return None
    return rows, (flags[0].nonzero().flatten().tolist() if count else [])


def grad_rows(tensors: Sequence[Tensor], limit: float) -> tuple[Tensor, list[int]] | None:
    """(k, 5) float32 rows l2, rms, absmax, mean, std, and the rows whose one-pass std needs two passes
    (mean square > `limit` × variance); None if a tensor holds NaN or inf."""
    rows, flags = torch.empty(len(tensors), 5), torch.empty(2, len(tensors), dtype=torch.int32)
    count = _library().gpl_grad_rows(
        len(tensors), *_pointers(tensors), limit, rows.data_ptr(), flags[0].data_ptr(), flags[1].data_ptr()
    )
    return _rows(count, flags, rows)


def update_ratios(a: Sequence[Tensor], b: Sequence[Tensor], refresh: bool = False) -> Tensor:
    """(k,) float32: ‖a − b‖ / ‖b‖ of each pair (the difference in float32); then b = a if `refresh`."""
    out = torch.empty(len(a))
    pa, lengths = _pointers(a)
    _library().gpl_update_ratios(len(a), pa, _pointers(b)[0], lengths, int(refresh), out.data_ptr())
    return out


def act_rows(tensors: Sequence[Tensor], kind: int, threshold: float, limit: float) -> tuple[Tensor, list[int]] | None:
    """(k, 3) float32 rows mean, std, saturation (`KINDS`: φ' below `threshold`), as `grad_rows` returns them."""
    rows, flags = torch.empty(len(tensors), 3), torch.empty(2, len(tensors), dtype=torch.int32)
    count = _library().gpl_act_rows(
        len(tensors),
        *_pointers(tensors),
        kind,
        threshold,
        limit,
        rows.data_ptr(),
        flags[0].data_ptr(),
        flags[1].data_ptr(),
    )
    return _rows(count, flags, rows)
