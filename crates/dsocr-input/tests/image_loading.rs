//! Image loading: typed errors naming the file, the decompression-bomb guard, EXIF orientation.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use dsocr_input::{load_image, load_image_from_memory, load_image_with, LoadOptions, PromptError, RgbImage};
use dsocr_testkit::fixtures::tiled_planar_tiff;
use image::{DynamicImage, ImageFormat, Rgb};

fn fixture_image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny/images").join(name)
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsocr-input-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_names_file(err: &PromptError, file: &str) {
    assert!(err.to_string().contains(file), "error message does not name {file}: {err}");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image.clone()).write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
    bytes
}

#[test]
fn missing_file() {
    let err = load_image(Path::new("/nonexistent/dir/missing-page.png")).unwrap_err();
    assert!(matches!(err, PromptError::Io { .. }), "{err:?}");
    assert_names_file(&err, "missing-page.png");
}

#[test]
fn zero_byte_file() {
    let dir = scratch("empty");
    let path = write(&dir, "empty.png", b"");
    let err = load_image(&path).unwrap_err();
    assert!(matches!(err, PromptError::EmptyFile { .. }), "{err:?}");
    assert_names_file(&err, "empty.png");
}

#[test]
fn truncated_png() {
    let dir = scratch("truncated");
    let full = std::fs::read(fixture_image("small.png")).unwrap();
    for (name, len) in [("half.png", full.len() / 2), ("header-only.png", 40), ("sig-only.png", 8)] {
        let path = write(&dir, name, &full[..len]);
        let err = load_image(&path).unwrap_err();
        assert!(matches!(err, PromptError::Corrupt { .. }), "{name}: {err:?}");
        assert_names_file(&err, name);
    }
}

#[test]
fn text_file_renamed_png() {
    let dir = scratch("text");
    let path = write(&dir, "notes.png", b"this is just some text, not an image\n");
    let err = load_image(&path).unwrap_err();
    assert!(matches!(err, PromptError::UnknownFormat { .. }), "{err:?}");
    assert_names_file(&err, "notes.png");
}

#[test]
fn unsupported_format() {
    // A valid farbfeld image (2x2, 16-bit RGBA): recognised by its signature, but not a format
    // this build decodes (docs/cli.md lists those).
    let dir = scratch("unsupported");
    let mut ff = b"farbfeld".to_vec();
    ff.extend_from_slice(&2u32.to_be_bytes());
    ff.extend_from_slice(&2u32.to_be_bytes());
    ff.extend_from_slice(&[200; 32]);
    let path = write(&dir, "scan.ff", &ff);
    let err = load_image(&path).unwrap_err();
    assert!(matches!(err, PromptError::UnsupportedFormat { .. }), "{err:?}");
    assert_names_file(&err, "scan.ff");
}

#[test]
fn too_many_pixels_checked_from_header() {
    let dir = scratch("bomb");
    // A PNG header claiming 20000×20000 RGB (400 M pixels, 1.2 GB decoded) with a stub IDAT:
    // refused from the header alone, before any decoding or allocation.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9c]));
    png.extend(png_chunk(b"IEND", &[]));
    let path = write(&dir, "bomb.png", &png);
    let err = load_image(&path).unwrap_err();
    assert!(
        matches!(err, PromptError::TooManyPixels { width: 20_000, height: 20_000, limit: 178_956_970, .. }),
        "{err:?}"
    );
    assert_names_file(&err, "bomb.png");

    // Without the guard the same file gets as far as decoding and is found corrupt.
    let unguarded = LoadOptions { max_pixels: None, ..LoadOptions::default() };
    let err = load_image_with(&path, &unguarded).unwrap_err();
    assert!(matches!(err, PromptError::Corrupt { .. }), "{err:?}");

    // A configurable limit: small.png is 600×400 = 240,000 pixels.
    let strict = LoadOptions { max_pixels: Some(239_999), ..LoadOptions::default() };
    let err = load_image_with(&fixture_image("small.png"), &strict).unwrap_err();
    assert!(matches!(err, PromptError::TooManyPixels { width: 600, height: 400, .. }), "{err:?}");
    let exact = LoadOptions { max_pixels: Some(240_000), ..LoadOptions::default() };
    assert_eq!(load_image_with(&fixture_image("small.png"), &exact).unwrap().dimensions(), (600, 400));
}

#[test]
fn format_is_taken_from_content_not_extension() {
    let dir = scratch("extension");
    let img = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8, y as u8, 7]));
    let path = write(&dir, "really-a-png.jpg", &encode_png(&img));
    assert_eq!(load_image(&path).unwrap(), img);
}

#[test]
fn memory_errors_use_the_given_name() {
    let err = load_image_from_memory(b"", "upload-42").unwrap_err();
    assert!(matches!(err, PromptError::EmptyFile { .. }));
    assert_names_file(&err, "upload-42");
}

/// Pillow's `exif_transpose` methods, written out per output pixel for a `w × h` source:
/// 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270 (counter-
/// clockwise, i.e. 90° clockwise), 7 TRANSVERSE, 8 ROTATE_90 (counter-clockwise).
fn pillow_transpose(src: &RgbImage, orientation: u16) -> RgbImage {
    let (w, h) = src.dimensions();
    let swap = orientation >= 5;
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    RgbImage::from_fn(ow, oh, |x, y| {
        let (sx, sy) = match orientation {
            1 => (x, y),
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            8 => (w - 1 - y, x),
            _ => unreachable!(),
        };
        *src.get_pixel(sx, sy)
    })
}

/// EXIF block (big-endian TIFF structure) holding only the orientation tag.
fn exif_block(orientation: u16) -> Vec<u8> {
    let mut b = b"MM\0\x2a\0\0\0\x08".to_vec();
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&0x0112u16.to_be_bytes());
    b.extend_from_slice(&3u16.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&orientation.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    b
}

/// Inserts an `eXIf` chunk right after IHDR (before the image data, as the PNG spec wants).
fn with_exif(png: &[u8], exif: &[u8]) -> Vec<u8> {
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let mut out = png[..ihdr_end].to_vec();
    out.extend(png_chunk(b"eXIf", exif));
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

#[test]
fn exif_orientation_all_eight() {
    let src = RgbImage::from_fn(3, 2, |x, y| Rgb([10 * x as u8 + y as u8, 100, 200]));
    let png = encode_png(&src);
    for orientation in 1..=8u16 {
        let bytes = with_exif(&png, &exif_block(orientation));
        let got = load_image_from_memory(&bytes, "photo.png").unwrap();
        assert_eq!(got, pillow_transpose(&src, orientation), "orientation {orientation}");
        // The eval-batch path does not transpose.
        let raw = dsocr_input::load_image_from_memory_with(
            &bytes,
            "photo.png",
            &LoadOptions { exif_transpose: false, ..LoadOptions::default() },
        )
        .unwrap();
        assert_eq!(raw, src);
    }
    // Out-of-range values and broken EXIF are ignored.
    for exif in [exif_block(0), exif_block(9), b"MM\0\x2a\0\0\xff\xff".to_vec(), b"garbage".to_vec()] {
        let got = load_image_from_memory(&with_exif(&png, &exif), "photo.png").unwrap();
        assert_eq!(got, src);
    }
}

#[test]
fn zero_width_or_height() {
    // A GIF whose logical screen is 0×0 passes the decoder's header parsing and is refused by
    // our own check.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    gif.extend_from_slice(&[0x2c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0x44, 0x01, 0, 0x3b]);
    let dir = scratch("zero");
    let path = write(&dir, "zero.gif", &gif);
    let err = load_image(&path).unwrap_err();
    assert!(matches!(err, PromptError::ZeroSize { width: 0, height: 0, .. }), "{err:?}");
    assert_names_file(&err, "zero.gif");

    // A TIFF with width 0 is already rejected by the TIFF decoder (reported as corrupt).
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    let entries: [(u16, u16, u32, u32); 8] = [
        (256, 3, 1, 0),   // ImageWidth
        (257, 3, 1, 5),   // ImageLength
        (258, 3, 1, 8),   // BitsPerSample
        (259, 3, 1, 1),   // Compression: none
        (262, 3, 1, 1),   // Photometric: black is zero
        (273, 4, 1, 200), // StripOffsets
        (278, 3, 1, 5),   // RowsPerStrip
        (279, 4, 1, 0),   // StripByteCounts
    ];
    tiff.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&count.to_le_bytes());
        tiff.extend_from_slice(&value.to_le_bytes());
    }
    tiff.extend_from_slice(&[0; 4]);
    let path = write(&dir, "zero.tif", &tiff);
    let err = load_image(&path).unwrap_err();
    assert!(matches!(err, PromptError::Corrupt { .. }), "{err:?}");
    assert_names_file(&err, "zero.tif");
}

/// The common real-world case: a camera JPEG with an APP1 `Exif` segment.
#[test]
fn jpeg_exif_orientation() {
    // 32×16, left half black, right half white.
    let src = RgbImage::from_fn(32, 16, |x, _| Rgb([if x < 16 { 0 } else { 255 }; 3]));
    let mut jpeg = Vec::new();
    DynamicImage::ImageRgb8(src).write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
    let exif = exif_block(6);
    let mut app1 = vec![0xff, 0xe1];
    app1.extend_from_slice(&((2 + 6 + exif.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&exif);
    let mut with_app1 = jpeg[..2].to_vec(); // SOI
    with_app1.extend(app1);
    with_app1.extend_from_slice(&jpeg[2..]);

    let plain = load_image_from_memory(&jpeg, "photo.jpg").unwrap();
    assert_eq!(plain.dimensions(), (32, 16));
    // Orientation 6: rotate 90° clockwise → 16×32, the left (black) half ends up on top.
    let rotated = load_image_from_memory(&with_app1, "photo.jpg").unwrap();
    assert_eq!(rotated.dimensions(), (16, 32));
    assert!(rotated.get_pixel(8, 4).0[0] < 30, "{:?}", rotated.get_pixel(8, 4));
    assert!(rotated.get_pixel(8, 27).0[0] > 225, "{:?}", rotated.get_pixel(8, 27));
}

#[test]
fn a_decoder_panic_is_an_error_naming_the_file() {
    let dir = scratch("panic");
    // Whole tiles only: the `tiff` decoder reads this layout.
    let whole = write(&dir, "whole.tif", &tiled_planar_tiff(32, 32, 16));
    let image = load_image(&whole).expect("a tiled planar TIFF of whole tiles decodes");
    assert_eq!(&image.as_raw()[..3], &[0, 80, 160], "R, G, B from the first tile of each plane");
    // Partial tiles at the bottom: `tiff` 0.11.3 panics (an assertion on the planar tile
    // buffer). The panic must become an error naming the file, not end the process.
    let bytes = tiled_planar_tiff(40, 40, 16);
    let path = write(&dir, "planar.tif", &bytes);
    let err = load_image(&path).expect_err("the decoder panics on this file");
    assert!(matches!(err, PromptError::DecoderPanicked { .. }), "{err:?}");
    assert_names_file(&err, "planar.tif");
    assert!(err.to_string().contains("crashed"), "{err}");
    let err = load_image_from_memory(&bytes, "upload.tif").expect_err("the same from memory");
    assert!(matches!(err, PromptError::DecoderPanicked { .. }), "{err:?}");
    assert_names_file(&err, "upload.tif");
}

/// A lossless WebP whose header declares `width`×`height` (the pixel data is not valid).
fn webp_declaring(width: u32, height: u32) -> Vec<u8> {
    let bits: u32 = (width - 1) | ((height - 1) << 14);
    let mut vp8l = vec![0x2f];
    vp8l.extend_from_slice(&bits.to_le_bytes());
    vp8l.extend_from_slice(&[0u8; 16]);
    let mut riff = b"RIFF".to_vec();
    riff.extend_from_slice(&(12 + vp8l.len() as u32).to_le_bytes());
    riff.extend_from_slice(b"WEBPVP8L");
    riff.extend_from_slice(&(vp8l.len() as u32).to_le_bytes());
    riff.extend_from_slice(&vp8l);
    riff
}

#[test]
fn huge_declared_webp_is_refused_by_the_pixel_limit() {
    // The WebP decoder reports 0×0 for the format's largest canvas; the file is judged by the
    // size it declares (it used to be reported as having a zero width or height).
    for side in [16384, 16383] {
        let err = load_image_from_memory(&webp_declaring(side, side), "huge.webp").unwrap_err();
        assert!(
            matches!(err, PromptError::TooManyPixels { width, height, .. } if width == side && height == side),
            "{side}: {err:?}"
        );
        assert_names_file(&err, "huge.webp");
    }
    // Within the limit but undecodable: corrupt, not "zero size".
    let err = load_image_from_memory(&webp_declaring(100, 100), "small.webp").unwrap_err();
    assert!(matches!(err, PromptError::Corrupt { .. }), "{err:?}");
}

/// The everyday formats beyond the six main ones (PPM/PGM/PBM, TGA plain, RLE, with alpha and
/// grey, ICO), two hand-written GIFs whose only frame covers part of the screen (one with a
/// transparent index) and a hand-written 16-bit grey PNG with a tRNS chunk, each loaded exactly as Pillow's `Image.open(p).convert("RGB")` gives it: the
/// expected bytes were written by Pillow (`tests/fixtures/formats/make.py`, its README).
#[test]
fn everyday_formats_load_as_pillow_reads_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/formats");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 11, "{expected:?}");
    for (name, size) in expected {
        let path = dir.join(name);
        let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
        let got = load_image(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let size = (size["width"].as_u64().unwrap() as u32, size["height"].as_u64().unwrap() as u32);
        assert_eq!(got.dimensions(), size, "{name}");
        assert_eq!(got.as_raw(), &want, "{name}: pixels differ from Pillow's");
        // From memory, the name's extension stands in for the path's (TGA has no signature).
        let bytes = std::fs::read(&path).unwrap();
        let got = load_image_from_memory(&bytes, name).unwrap_or_else(|e| panic!("{name} from memory: {e}"));
        assert_eq!(got.as_raw(), &want, "{name} from memory");
    }
    // Without a .tga name the bytes of a TGA file are not guessed.
    let tga = std::fs::read(dir.join("rgb.tga")).unwrap();
    let err = load_image_from_memory(&tga, "upload.bin").unwrap_err();
    assert!(matches!(err, PromptError::UnknownFormat { .. }), "{err:?}");
}

/// PNM, TGA and ICO headers declaring more pixels than the limit are refused from the header,
/// before any pixel is read or allocated, like PNG's and WebP's.
#[test]
fn oversized_declared_dimensions_are_refused_in_the_new_formats() {
    let mut tga = vec![0u8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // uncompressed true-colour, no colour map
    tga.extend_from_slice(&60_000u16.to_le_bytes());
    tga.extend_from_slice(&60_000u16.to_le_bytes());
    tga.extend_from_slice(&[24, 0]);
    // An ICO directory of one 256×256 (0 = 256) PNG entry whose PNG header says 20000×20000
    // (with a stub IDAT: the ICO decoder reads the PNG's chunks before its size is known).
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));
    let mut ico = vec![0u8, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 32, 0];
    ico.extend_from_slice(&(png.len() as u32).to_le_bytes());
    ico.extend_from_slice(&22u32.to_le_bytes());
    ico.extend(png);
    for (name, bytes) in [("huge.ppm", b"P6\n30000 30000\n255\n".to_vec()), ("huge.tga", tga), ("huge.ico", ico)] {
        let err = load_image_from_memory(&bytes, name).unwrap_err();
        assert!(matches!(err, PromptError::TooManyPixels { width, .. } if width >= 20_000), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}
