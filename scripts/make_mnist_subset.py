"""Write the MNIST subset the tests use: the first N training and first N test digits, as the four IDX .gz files.

    python scripts/make_mnist_subset.py /work/shared/data/mnist tests/data/mnist --count 1000

Plain byte slicing of the standard files (no TensorFlow): the IDX header gets the new count and the gzip stream a
fixed timestamp, so the same input gives byte-identical output. MNIST is freely redistributable
(Yann LeCun and Corinna Cortes, CC BY-SA 3.0).
"""

import argparse
import gzip
import pathlib

NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def subset(raw: bytes, count: int) -> bytes:
    """The IDX file raw with only its first `count` items (an IDX header: 0, 0, dtype, ndim, then ndim sizes)."""
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if count > dims[0]:
        raise SystemExit(f"asked for {count} items, the file holds {dims[0]}")
    item_size = 1
    for size in dims[1:]:
        item_size *= size
    header_end = 4 + 4 * ndim
    header = raw[:4] + count.to_bytes(4, "big") + raw[8:header_end]
    return header + raw[header_end : header_end + count * item_size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=pathlib.Path, help="folder with the four full MNIST IDX .gz files")
    p.add_argument("target", type=pathlib.Path, help="folder to write the subset into")
    p.add_argument("--count", type=int, default=1000, help="digits per split (default: %(default)s)")
    args = p.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        with gzip.open(args.source / name, "rb") as f:
            data = subset(f.read(), args.count)
        # mtime=0 and no file name in the header: the output depends on the input bytes only.
        with open(args.target / name, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9,
                                                                 mtime=0, filename="") as gz:
            gz.write(data)
        print(f"{args.target / name}: {(args.target / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
