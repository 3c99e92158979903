"""Bytes from outside, read before anything is decoded: what a file says it is, and what it declares.

Every reader of brainseg (seg-run's, seg-eval's, seg-serve's, training's) hands the bytes of an
image or a volume to this package first. Each parser here reads a header and walks the file's
structure as the library that will decode it does (libpng's chunks, libjpeg's markers, libtiff's
directory, nibabel's header and extensions), and either returns what the file declares (its size,
what decoding it will allocate, the bytes to give the decoder) or raises `FormatError` with a
one-line reason. A file that declares more than a limit allows raises `LimitExceeded`. Decoders
therefore never see a length, a tile or a dimension that the file cannot back with its own bytes.

- `limits`: the size limits every command shares (--max-pixels, --max-voxels) and their refusals.
- `inflate`: gzip streams, inflated up to a bound in time linear in the input.
- `nifti`: NIfTI-1 and NIfTI-2 headers and their extensions.
- `images`: PNG, JPEG, TIFF and BMP (`inspect_image`), one module each (`png`, `jpeg`, `tiff`,
  `bmp`) returning the `ImageHeader` of `image_header`.

Standard library and numpy only; nothing here decodes pixels or voxels. Fuzzed in
`tests/test_fuzz.py` and `benchmarks/fuzz.py` (docs/security.md).
"""
