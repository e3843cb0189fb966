"""Upload bytes -> 8-bit grayscale pixels, with memory and time bounded before anything is decoded.

Bounds checked on what a file declares, before its pixels are decoded (each a 4xx naming it):
- its size: at most `max_pixels` as decoded (a baseline JPEG after its 1/2-1/8 draft), sides within `max_aspect`;
- JPEG: a progressive or multi-scan JPEG keeps every DCT coefficient of the full-size image whatever the draft
  scale (2 bytes a coefficient): at most `max_buffer_bytes`; at most `max_jpeg_scans` scans (each one walks every
  block of the image, however little data it holds);
- TIFF: one tile or strip (libtiff's buffer, however small the image): at most `max_buffer_bytes` and `max_pixels`;
- BMP: RLE compression is decoded by Pillow in pure Python (~100 ns a pixel): at most `max_rle_pixels`;
- animations and multi-page files: only the first frame is ever read or decoded (an animation's canvas is the size
  checked above; Pillow checks a GIF, APNG or WebP frame against it).
service.api.v1.decode_pool runs this in worker processes whose memory and CPU time the OS caps, the backstop for what
these checks do not foresee."""

import io
import re
import struct
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

WORK_SIDE = 1024  # uploads are shrunk to fit WORK_SIDE x WORK_SIDE right after decoding: 4 MB as float32 at most


class ImageError(ValueError):
    """An upload that cannot become a model input; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodeLimits:
    """What an upload may be: its format (Pillow's names), its decoded size and its shape."""

    formats: tuple[str, ...]
    max_pixels: int
    max_aspect: float
    max_buffer_bytes: int = 64 * 2**20  # a progressive JPEG's coefficients, a TIFF tile or strip
    max_jpeg_scans: int = 100  # libjpeg's own progressive scripts use 6 to 10; mozjpeg's optimised ones about 20
    max_rle_pixels: int = 1_000_000  # ~0.1 s of Pillow's pure-Python RLE decoder
    memory_limit: str = "the memory available"  # how a MemoryError's 413 names the bound that was hit


def decode_gray(data: bytes, name: str, limits: DecodeLimits) -> Image.Image:
    """The upload's first frame as 8-bit grayscale, its longer side at most WORK_SIDE.

    Memory is bounded before anything is decoded: only the allowed formats' parsers see the bytes, the declared size
    is checked (after a JPEG's draft, which decodes at 1/2 to 1/8 scale), and the decoded image is shrunk before any
    copy (grayscale, alpha, arrays) is made. Every failure is an ImageError: Pillow's decoders raise many types
    (ValueError, SyntaxError, struct.error, NotImplementedError, IndexError...) on malformed files."""
    if not data:
        raise ImageError(f"file {name!r} is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=limits.formats)  # reads the header only
    except Image.DecompressionBombError as err:
        raise ImageError(f"file {name!r} is a decompression bomb: {err}", 413) from None
    except UnidentifiedImageError:  # the error text only repeats this, naming a BytesIO object
        raise ImageError(_unidentified(data, name, limits.formats)) from None
    except MemoryError:
        raise _out_of_memory(name, "image", limits) from None
    except Exception as err:
        raise ImageError(f"file {name!r} has a malformed {_sniff(data) or 'image'} header: {_describe(err)}") from None
    kind = image.format or "image"
    try:
        width, height = image.size
        if min(width, height) < 1 or max(width, height) > limits.max_aspect * min(width, height):
            raise ImageError(f"file {name!r} ({kind}) is {width}x{height} pixels: the longer side may be at most "
                             f"{limits.max_aspect:g} times the shorter")
        image.draft("L", (WORK_SIDE // 4, WORK_SIDE // 4))  # JPEG only: a 12 MP photo decodes at 1/8 scale
        if image.width * image.height > limits.max_pixels:
            raise ImageError(f"file {name!r} ({kind}) is {width}x{height} pixels, over the limit of "
                             f"{limits.max_pixels} (VAE_MAX_IMAGE_PIXELS)", 413)
        check_declared_work(image, data, name, limits)
        image.seek(0)  # first frame of an animation
        image.load()
        if max(image.size) > WORK_SIDE:
            image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
        return _grayscale(image)
    except ImageError:
        raise
    except MemoryError:
        raise _out_of_memory(name, kind, limits) from None
    except Exception as err:
        if isinstance(err, OSError) and str(err) == "decoder error -9":  # Pillow's IMAGING_CODEC_MEMORY
            raise _out_of_memory(name, kind, limits) from None
        raise ImageError(f"file {name!r} ({kind}) could not be decoded: {_describe(err)}") from None


def _out_of_memory(name: str, kind: str, limits: DecodeLimits) -> ImageError:
    return ImageError(f"file {name!r} ({kind}) needs more memory to decode than {limits.memory_limit}", 413)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


# Magic numbers of the formats Pillow reads (and a few it does not), for clearer messages; checked in order.
_MAGIC: tuple[tuple[str, re.Pattern[bytes]], ...] = tuple((name, re.compile(pattern, re.DOTALL)) for name, pattern in (
    ("PNG", rb"\x89PNG\r\n\x1a\n"), ("JPEG", rb"\xff\xd8\xff"), ("GIF", rb"GIF8[79]a"), ("BMP", rb"BM"),
    ("TIFF", rb"II\*\x00|MM\x00\*"), ("WEBP", rb"RIFF....WEBP"), ("PPM", rb"P[1-7][\s#]"), ("PSD", rb"8BPS"),
    ("ICO", rb"\x00\x00\x01\x00"), ("CUR", rb"\x00\x00\x02\x00"), ("ICNS", rb"icns"), ("DDS", rb"DDS "),
    ("EPS", rb"%!PS|\xc5\xd0\xd3\xc6"), ("SGI", rb"\x01\xda"), ("XBM", rb"\s*#define"), ("QOI", rb"qoif"),
    ("JPEG2000", rb"\x00\x00\x00\x0cjP  \r\n\x87\n|\xff\x4f\xff\x51"), ("IM", rb"Image type"),
    ("AVIF", rb"....ftypavi[fs]"), ("HEIF", rb"....ftyp(heic|heix|mif1)"), ("PDF", rb"%PDF-"),
    ("PCX", rb"\x0a[\x00-\x05]\x01[\x01\x02\x04\x08]"), ("FLI", rb"....\x11\xaf|....\x12\xaf"),
))


def _sniff(data: bytes) -> str | None:
    """The format named by the file's magic number, accepted or not (for a clearer message), or None."""
    prefix = data[:32]
    return next((name for name, magic in _MAGIC if magic.match(prefix)), None)


def _unidentified(data: bytes, name: str, formats: tuple[str, ...]) -> str:
    accepted = ", ".join(formats)
    sniffed = _sniff(data)
    if sniffed is not None and sniffed not in formats:
        return f"file {name!r} is a {sniffed} image; the accepted formats are {accepted} (VAE_IMAGE_FORMATS)"
    if sniffed is not None:
        return f"file {name!r} looks like {sniffed} but its header is malformed"
    return f"file {name!r} is not an image in an accepted format ({accepted})"


# Worker time per decoded pixel and per file byte, roughly the slowest measured (a 4 MP PNG or TIFF with its
# preprocessing, Pillow's pure-Python RLE decoder per pixel): used to order the decode queue, not to refuse anything.
_SECONDS_PER_PIXEL = {"RLE": 4e-7, None: 1e-7}
_SECONDS_PER_BYTE = 1e-8
_SECONDS_PER_FILE = 5e-4  # a 28x28 PNG's decoding and preprocessing
_MAX_SNIFF_STEPS = 1_000


def estimated_seconds(data: bytes, limits: DecodeLimits) -> float:
    """A cheap guess of the worker time a file will take, from the size its header declares, read without Pillow
    (microseconds, on the event loop). A header it cannot read quickly is guessed the costliest a file may be."""
    try:
        pixels, kind = _declared(data)
    except (ValueError, struct.error, IndexError):
        pixels, kind = None, None
    if pixels is None or pixels > limits.max_pixels * 64:
        pixels, kind = limits.max_pixels, None
    if kind == "JPEG":  # decoded at 1/8 scale or so by its draft (a progressive one still walks every block)
        pixels, kind = pixels // 16, None
    return (_SECONDS_PER_FILE + pixels * _SECONDS_PER_PIXEL.get(kind, _SECONDS_PER_PIXEL[None])
            + len(data) * _SECONDS_PER_BYTE)


def _declared(data: bytes) -> tuple[int | None, str | None]:
    """(width x height the header declares, a cost class) for the formats the service accepts by default."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", data, 16)
        return width * height, None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_pixels(data), None
    if data.startswith(b"BM"):
        if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 1.x header
            width, height = struct.unpack_from("<HH", data, 18)
            return width * height, None
        width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
        return abs(width) * abs(height), "RLE" if compression in (1, 2) else None
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        chunk = data[12:16]
        if chunk == b"VP8X":
            width, height = (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
        elif chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif chunk == b"VP8 ":
            width, height = struct.unpack_from("<HH", data, 26)
            width, height = width & 0x3FFF, height & 0x3FFF
        else:
            return None, None
        return width * height, None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_pixels(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_pixels(data), None
    return None, None


def _gif_pixels(data: bytes) -> int | None:
    """The larger of the logical screen and the first image's extent (Pillow grows the image to hold the frame)."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    for _ in range(_MAX_SNIFF_STEPS):
        if data[at] == 0x2C:  # image descriptor
            left, top, frame_width, frame_height = struct.unpack_from("<HHHH", data, at + 1)
            return max(width, left + frame_width) * max(height, top + frame_height)
        if data[at] != 0x21:  # not an extension either
            return None
        at += 2
        while data[at]:  # sub-blocks
            at += data[at] + 1
        at += 1
    return None


def _jpeg_pixels(data: bytes) -> tuple[int | None, str | None]:
    at = 2
    for _ in range(_MAX_SNIFF_STEPS):
        marker = data[at + 1]
        if data[at] != 0xFF or marker == 0xDA:
            return None, None
        if marker in _SOF:
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width * height, None if marker in _PROGRESSIVE else "JPEG"
        at += 2 if marker in _STANDALONE or marker == 0xFF else 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None, None


def _tiff_pixels(data: bytes) -> int | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    size = {}
    for index in range(min(count, _MAX_SNIFF_STEPS)):
        tag, kind, _ = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * index)
        if tag in (256, 257):
            size[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, ifd + 10 + 12 * index)[0]
    return size[256] * size[257] if len(size) == 2 else None


def check_declared_work(image: Image.Image, data: bytes, name: str, limits: DecodeLimits) -> None:
    """413 (or 422 for a JPEG's scan count) when what the file declares would take more memory or time to decode
    than its pixel count suggests: see the module docstring."""
    if image.format == "JPEG":
        _check_jpeg(data, name, limits)
    elif image.format == "TIFF":
        _check_tiff(image, name, limits)
    elif image.format == "BMP" and image.info.get("compression") in (1, 2):  # BI_RLE8, BI_RLE4
        pixels = image.width * image.height
        if pixels > limits.max_rle_pixels:
            raise ImageError(f"file {name!r} (BMP) is an RLE-compressed {image.width}x{image.height} image: RLE BMPs "
                             f"may have at most {limits.max_rle_pixels} pixels (decoding them is slow)", 413)


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame, every coding process
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})  # TEM, RSTn, SOI, EOI: no length field
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data: 0xFF00 is a stuffed byte
_MAX_SEGMENTS = 20_000


@dataclass(frozen=True)
class JpegLayout:
    """What a JPEG declares: its frame's process (SOFn marker), size and components (sampling factors), and scans."""

    marker: int
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]
    scans: int
    first_scan_components: int

    @property
    def multi_scan(self) -> bool:
        """Whether libjpeg keeps the whole image's coefficients (jdcoefct.c: progressive, or several scans)."""
        return self.marker in _PROGRESSIVE or self.scans > 1 or self.first_scan_components < len(self.sampling)

    def coefficient_bytes(self) -> int:
        """Bytes of libjpeg's whole-image coefficient arrays: 64 coefficients of 2 bytes per 8x8 block, per
        component, padded to whole MCUs (jdcoefct.c allocates them at full size whatever the output scale)."""
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        mcu_cols, mcu_rows = -(-self.width // (8 * h_max)), -(-self.height // (8 * v_max))
        return sum(mcu_cols * h * mcu_rows * v for h, v in self.sampling) * 128


def jpeg_layout(data: bytes, max_scans: int) -> JpegLayout:
    """Walks a JPEG's markers (not its entropy-coded data's bytes one by one), counting scans up to max_scans + 1.
    ValueError if the structure is broken before the first scan."""
    at, frame, scans, first_scan_components, segments = 2, None, 0, 0, 0
    while at + 4 <= len(data) and scans <= max_scans:
        segments += 1
        if segments > _MAX_SEGMENTS:
            raise ValueError(f"more than {_MAX_SEGMENTS} marker segments")
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE:
            at += 2
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _SOF and frame is None:
            if length < 8 or at + 2 + length > len(data):
                raise ValueError("truncated frame header")
            height, width, count = struct.unpack_from(">HHB", data, at + 5)
            sampling = tuple((data[at + 11 + 3 * i] >> 4, data[at + 11 + 3 * i] & 15) for i in range(count)
                             if at + 11 + 3 * i < len(data))
            if not sampling or any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in sampling):
                raise ValueError("bad sampling factors")
            frame = (marker, width, height, sampling)
        at += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next marker
            scans += 1
            if scans == 1:
                first_scan_components = data[at - length + 2] if length >= 3 else 0
            found = _NEXT_MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
    if frame is None:
        raise ValueError("no frame header")
    return JpegLayout(*frame, scans, first_scan_components)


def _check_jpeg(data: bytes, name: str, limits: DecodeLimits) -> None:
    try:
        layout = jpeg_layout(data, limits.max_jpeg_scans)
    except (ValueError, struct.error, IndexError) as err:
        raise ImageError(f"file {name!r} (JPEG) has a malformed structure: {_describe(err)}") from None
    if layout.scans > limits.max_jpeg_scans:
        raise ImageError(f"file {name!r} (JPEG) has more than {limits.max_jpeg_scans} scans, the limit (each scan "
                         f"walks the whole image)", 422)
    if layout.multi_scan and layout.coefficient_bytes() > limits.max_buffer_bytes:
        kind = "progressive" if layout.marker in _PROGRESSIVE else "multi-scan"
        raise ImageError(f"file {name!r} (JPEG) is a {kind} {layout.width}x{layout.height} image: decoding it keeps "
                         f"{layout.coefficient_bytes() / 2**20:.0f} MB of coefficients, over the limit of "
                         f"{limits.max_buffer_bytes / 2**20:.0f} MB (a {kind} JPEG is not decoded at reduced "
                         f"size)", 413)


def _check_tiff(image: Image.Image, name: str, limits: DecodeLimits) -> None:
    tags = image.tag_v2  # TiffImageFile's public tag directory (the first page's: no other page is read)
    width, height = image.size
    samples = int(tags.get(277, 1) or 1)
    bits = tags.get(258, (8,))
    bits = max(bits) if isinstance(bits, tuple) and bits else int(bits or 8)
    if tags.get(284, 1) == 2:  # planar: one sample per tile or strip
        samples = 1
    if 322 in tags or 323 in tags:
        kind, block_width, block_height = "tile", int(tags.get(322, 0) or 0), int(tags.get(323, 0) or 0)
    else:  # libtiff reads at most the image's rows into a strip
        kind, block_width, block_height = "strip", width, min(int(tags.get(278, height) or height), height)
    pixels = block_width * block_height
    size = pixels * samples * bits // 8
    if pixels > limits.max_pixels or size > limits.max_buffer_bytes:
        raise ImageError(f"file {name!r} (TIFF) is {width}x{height} pixels but declares a {block_width}x{block_height}"
                         f" {kind} of {size / 2**20:.0f} MB: a {kind} may have at most {limits.max_pixels} pixels "
                         f"and {limits.max_buffer_bytes / 2**20:.0f} MB", 413)


def _grayscale(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white paper, so dark strokes on a transparent canvas read as ink.
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return image.convert("L")


