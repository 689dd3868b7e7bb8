//! Image loading with the semantics of the reference (spec §3.1):
//! `PIL.Image.open` → `ImageOps.exif_transpose` → `.convert("RGB")`.
//!
//! - Formats: PNG, JPEG, WebP, TIFF, BMP, GIF (the first frame on its logical screen, transparent
//!   and uncovered pixels through the palette as Pillow reads them), recognised from the file content
//!   (the extension is ignored).
//! - A decompression-bomb guard checks `width × height` from the header before any pixel is
//!   decoded (Pillow refuses images above `2 × MAX_IMAGE_PIXELS`, see [`DEFAULT_MAX_PIXELS`]).
//! - EXIF orientation (all 8 values) is applied like `exif_transpose`; broken EXIF is ignored.
//! - Conversion to 8-bit RGB follows Pillow's `convert("RGB")`: alpha is dropped (no compositing),
//!   grey is replicated, 16-bit colour takes the high byte (Pillow unpacks `RGB;16B` that way),
//!   16-bit grey (`I;16`, with or without a PNG `tRNS` chunk) is clipped to 255 (Pillow's `I16_RGB`).
//!
//! Known differences from Pillow: JPEG pixels come from zune-jpeg, not libjpeg-turbo (IDCT and
//! chroma upsampling may differ by a few levels); orientation found only in XMP, or in a PNG `eXIf` chunk placed after
//! the image data, is not applied.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::error::{ImageFormatHint, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Rgb, RgbImage};

use crate::error::{panic_message, PromptError, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (89,478,485) × 2: above this Pillow raises
/// `DecompressionBombError` instead of warning.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// How images are loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse images with more than this many pixels (checked from the header, before decoding).
    /// `None` disables the guard (what the official PDF script does).
    pub max_pixels: Option<u64>,
    /// Apply the EXIF orientation (`ImageOps.exif_transpose`). The HF path and the official vLLM
    /// image script do; the official eval-batch script does not.
    pub exif_transpose: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_pixels: Some(DEFAULT_MAX_PIXELS), exif_transpose: true }
    }
}

/// Loads an image file as 8-bit RGB with the default [`LoadOptions`].
pub fn load_image(path: &Path) -> Result<RgbImage> {
    load_image_with(path, &LoadOptions::default())
}

/// Loads an image file as 8-bit RGB.
pub fn load_image_with(path: &Path, options: &LoadOptions) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| PromptError::Io { path: path.to_path_buf(), source })?;
    decode(&bytes, path.to_path_buf(), options)
}

/// Decodes an in-memory image file as 8-bit RGB with the default [`LoadOptions`]; `name` (a file
/// name or URL) is only used in error messages.
pub fn load_image_from_memory(bytes: &[u8], name: &str) -> Result<RgbImage> {
    load_image_from_memory_with(bytes, name, &LoadOptions::default())
}

/// Decodes an in-memory image file as 8-bit RGB; `name` is only used in error messages.
pub fn load_image_from_memory_with(bytes: &[u8], name: &str, options: &LoadOptions) -> Result<RgbImage> {
    decode(bytes, PathBuf::from(name), options)
}

/// Decodes with every panic of the decoders caught: a file that crashes a decoder (the `tiff`
/// crate panics on tiled planar-configuration TIFFs, for one) is an error naming the file, and
/// a folder run goes on with the next one.
fn decode(bytes: &[u8], path: PathBuf, options: &LoadOptions) -> Result<RgbImage> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_unguarded(bytes, path.clone(), options))) {
        Ok(result) => result,
        Err(payload) => Err(PromptError::DecoderPanicked { path, message: panic_message(payload.as_ref()) }),
    }
}

fn decode_unguarded(bytes: &[u8], path: PathBuf, options: &LoadOptions) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(PromptError::EmptyFile { path });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PromptError::Corrupt { path: path.clone(), message: e.to_string() })?;
    // TGA has no signature: a file the bytes do not identify is read as TGA by its extension,
    // as Pillow does.
    if reader.format().is_none() && ImageFormat::from_path(&path).ok() == Some(ImageFormat::Tga) {
        reader.set_format(ImageFormat::Tga);
    }
    let Some(format) = reader.format() else {
        return Err(PromptError::UnknownFormat { path });
    };
    // Our own pixel guard replaces the decoder's allocation limit (512 MiB by default, which would
    // refuse legitimate images below Pillow's limit, e.g. 16-bit scans).
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, &path))?;

    let (mut width, mut height) = decoder.dimensions();
    if (width == 0 || height == 0) && format == ImageFormat::WebP {
        // The WebP decoder reports 0×0 for some valid headers (a 16384×16384 canvas, the
        // format's largest): judge the file by the size it declares.
        if let Some((w, h)) = webp_declared_size(bytes).filter(|&(w, h)| w > 0 && h > 0) {
            (width, height) = (w, h);
            let over = options.max_pixels.is_some_and(|limit| u64::from(w) * u64::from(h) > limit);
            if !over {
                return Err(PromptError::Corrupt {
                    path,
                    message: format!("the WebP decoder cannot read this {w}x{h} image"),
                });
            }
        }
    }
    if width == 0 || height == 0 {
        return Err(PromptError::ZeroSize { path, width, height });
    }
    if let Some(limit) = options.max_pixels {
        if u64::from(width) * u64::from(height) > limit {
            return Err(PromptError::TooManyPixels { path, width, height, limit });
        }
    }

    let orientation =
        if options.exif_transpose { exif_orientation(&mut decoder, format) } else { Orientation::NoTransforms };
    let mut rgb = if format == ImageFormat::Gif {
        gif_first_frame_like_pillow(bytes).map_err(|message| PromptError::Corrupt { path: path.clone(), message })?
    } else {
        let image = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, &path))?;
        // A 16-bit grey PNG with a tRNS chunk decodes with an alpha channel here, but Pillow
        // opens it as `I;16` (the transparency kept aside in `info`), which converts by clipping.
        let image = match image {
            DynamicImage::ImageLumaA16(buf) if format == ImageFormat::Png && png_is_grey16(bytes) => {
                DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(buf.width(), buf.height(), |x, y| {
                    image::Luma([buf.get_pixel(x, y).0[0]])
                }))
            }
            other => other,
        };
        to_rgb8_like_pillow(image)
    };
    if orientation != Orientation::NoTransforms {
        let mut dynamic = DynamicImage::ImageRgb8(rgb);
        dynamic.apply_orientation(orientation);
        rgb = dynamic.into_rgb8();
    }
    Ok(rgb)
}

/// The canvas size a WebP file declares in its first chunk (`VP8X`, `VP8L` or `VP8 `), read
/// from the bytes without decoding.
fn webp_declared_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 30 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return None;
    }
    let chunk = &bytes[12..16];
    let data = &bytes[20..];
    let le24 = |b: &[u8]| u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
    match chunk {
        // Flags (4 bytes), then canvas width − 1 and height − 1 in 24 bits each.
        b"VP8X" => Some((le24(&data[4..7]) + 1, le24(&data[7..10]) + 1)),
        // Signature 0x2f, then width − 1 and height − 1 in 14 bits each.
        b"VP8L" if data[0] == 0x2f => {
            let bits = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height (2 scale bits).
        b"VP8 " if data[3..6] == [0x9d, 0x01, 0x2a] => Some((
            u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3fff),
            u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3fff),
        )),
        _ => None,
    }
}

/// Maps a decoder error to the typed error kinds.
fn classify(error: ImageError, path: &Path) -> PromptError {
    let path = path.to_path_buf();
    match error {
        ImageError::Unsupported(e) => {
            let what = match e.kind() {
                UnsupportedErrorKind::Format(ImageFormatHint::Exact(format)) => {
                    format!("{format:?} images cannot be decoded by this build")
                }
                _ => e.to_string(),
            };
            PromptError::UnsupportedFormat { path, what }
        }
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            PromptError::Corrupt { path, message: "unexpected end of file".to_string() }
        }
        other => PromptError::Corrupt { path, message: other.to_string() },
    }
}

/// The EXIF orientation as `ImageOps.exif_transpose` reads it: tag 0x0112 of IFD0; values
/// outside 1..=8 and unreadable EXIF mean "leave the image as it is".
fn exif_orientation(decoder: &mut impl ImageDecoder, format: ImageFormat) -> Orientation {
    if format == ImageFormat::Tiff {
        // The tag lives in the TIFF's own first IFD.
        return decoder.orientation().unwrap_or(Orientation::NoTransforms);
    }
    let Ok(Some(chunk)) = decoder.exif_metadata() else {
        return Orientation::NoTransforms;
    };
    orientation_from_exif_chunk(chunk)
}

/// Parses the orientation out of a raw EXIF block (a TIFF structure, optionally prefixed with
/// `Exif\0\0` like Pillow accepts).
fn orientation_from_exif_chunk(mut chunk: Vec<u8>) -> Orientation {
    if chunk.starts_with(b"Exif\0\0") {
        chunk.drain(..6);
    }
    let Ok(exif) = exif::Reader::new().read_raw(chunk) else {
        return Orientation::NoTransforms;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|field| field.value.get_uint(0))
        .and_then(|v| u8::try_from(v).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

/// Pillow's `convert("RGB")` for every pixel layout the decoders produce.
/// Whether a PNG's header says 16-bit greyscale without alpha (colour type 0).
fn png_is_grey16(bytes: &[u8]) -> bool {
    // Signature (8), IHDR length and type (8), width and height (8), then bit depth and colour type.
    bytes.get(12..16) == Some(b"IHDR") && bytes.get(24..26) == Some(&[16, 0])
}

/// A GIF's first frame as Pillow's `Image.open(p).convert("RGB")` gives it: the logical screen,
/// filled with the frame's transparent index (palette index 0 without one) where the frame does
/// not cover it, the frame's indices pasted at its offset (transparent ones included), every
/// index mapped through the frame's palette (the global one without a local one; indices past
/// its end are black). A frame reaching past the screen is cut at its edge. The `image` crate
/// composites onto transparent black instead, which `convert("RGB")` would not show.
fn gif_first_frame_like_pillow(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    // The caller's pixel guard has checked the screen size already.
    options.set_memory_limit(gif::MemoryLimit::Unlimited);
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder.read_next_frame().map_err(|e| e.to_string())?.ok_or("the GIF holds no image")?;
    let palette = frame.palette.as_deref().or(global.as_deref()).unwrap_or(&[]);
    let colour = |index: u8| {
        let i = usize::from(index) * 3;
        palette.get(i..i + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]])
    };
    let mut indices = vec![frame.transparent.unwrap_or(0); width as usize * height as usize];
    let (left, top, fw) = (usize::from(frame.left), usize::from(frame.top), usize::from(frame.width));
    for (row, line) in frame.buffer.chunks_exact(fw.max(1)).enumerate().take(usize::from(frame.height)) {
        let y = top + row;
        if y >= height as usize || left >= width as usize {
            continue;
        }
        let n = fw.min(width as usize - left);
        indices[y * width as usize + left..][..n].copy_from_slice(&line[..n]);
    }
    let rgb: Vec<u8> = indices.into_iter().flat_map(colour).collect();
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "GIF screen size overflows".to_string())
}

fn to_rgb8_like_pillow(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let high_byte = |v: u16| (v >> 8) as u8;
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Alpha is dropped, not composited; grey is replicated.
        DynamicImage::ImageRgba8(_) | DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) => image.to_rgb8(),
        // 16-bit colour and grey+alpha: Pillow unpacks the big-endian high byte.
        DynamicImage::ImageRgb16(buf) => RgbImage::from_fn(w, h, |x, y| Rgb(buf.get_pixel(x, y).0.map(high_byte))),
        DynamicImage::ImageRgba16(buf) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, _] = buf.get_pixel(x, y).0;
            Rgb([r, g, b].map(high_byte))
        }),
        DynamicImage::ImageLumaA16(buf) => {
            RgbImage::from_fn(w, h, |x, y| Rgb([high_byte(buf.get_pixel(x, y).0[0]); 3]))
        }
        // 16-bit grey is Pillow mode `I;16`, whose conversion to RGB clips at 255.
        DynamicImage::ImageLuma16(buf) => {
            RgbImage::from_fn(w, h, |x, y| Rgb([buf.get_pixel(x, y).0[0].min(255) as u8; 3]))
        }
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(image: &DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).expect("encode png");
        bytes
    }

    #[test]
    fn rgba_drops_alpha_without_compositing() {
        let rgba = image::RgbaImage::from_pixel(2, 1, image::Rgba([10, 20, 30, 0]));
        let bytes = encode_png(&DynamicImage::ImageRgba8(rgba));
        let rgb = load_image_from_memory(&bytes, "a.png").unwrap();
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }

    #[test]
    fn grey_is_replicated_and_grey_alpha_drops_alpha() {
        let la = image::GrayAlphaImage::from_fn(2, 1, |x, _| image::LumaA([[30, 220][x as usize], 0]));
        let rgb = load_image_from_memory(&encode_png(&DynamicImage::ImageLumaA8(la)), "la.png").unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [30; 3]);
        assert_eq!(rgb.get_pixel(1, 0).0, [220; 3]);
        let la16 = image::ImageBuffer::<image::LumaA<u16>, _>::from_pixel(1, 1, image::LumaA([0xab12, 0]));
        let rgb = load_image_from_memory(&encode_png(&DynamicImage::ImageLumaA16(la16)), "la16.png").unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0xab; 3]);
    }

    #[test]
    fn sixteen_bit_conversions_follow_pillow() {
        let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(1, 1, image::Rgb([0x12ff, 0xab01, 0x00ff]));
        let rgb = load_image_from_memory(&encode_png(&DynamicImage::ImageRgb16(rgb16)), "c.png").unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [0x12, 0xab, 0x00]);

        let grey16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(3, 1, |x, _| {
            image::Luma([[200, 255, 4000][x as usize]])
        });
        let rgb = load_image_from_memory(&encode_png(&DynamicImage::ImageLuma16(grey16)), "g.png").unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [200; 3]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255; 3]);
        assert_eq!(rgb.get_pixel(2, 0).0, [255; 3]);
    }

    /// A minimal big-endian EXIF block with only the orientation tag.
    fn exif_block(orientation: u16) -> Vec<u8> {
        let mut b = b"MM\0\x2a\0\0\0\x08".to_vec();
        b.extend_from_slice(&1u16.to_be_bytes()); // one entry
        b.extend_from_slice(&0x0112u16.to_be_bytes());
        b.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&orientation.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        b
    }

    #[test]
    fn exif_orientation_parsing() {
        for v in 1..=8u16 {
            let o = orientation_from_exif_chunk(exif_block(v));
            assert_eq!(o.to_exif(), v as u8);
        }
        let mut prefixed = b"Exif\0\0".to_vec();
        prefixed.extend(exif_block(6));
        assert_eq!(orientation_from_exif_chunk(prefixed), Orientation::Rotate90);
        assert_eq!(orientation_from_exif_chunk(exif_block(0)), Orientation::NoTransforms);
        assert_eq!(orientation_from_exif_chunk(exif_block(9)), Orientation::NoTransforms);
        assert_eq!(orientation_from_exif_chunk(b"MM\0\x2a\0\0\xff\xff".to_vec()), Orientation::NoTransforms);
        assert_eq!(orientation_from_exif_chunk(vec![1, 2, 3]), Orientation::NoTransforms);
    }

    /// Orientation 6 ("rotate 90° clockwise to display") applied to a 2×1 image [A B]
    /// gives a 1×2 image with A on top (PIL `Transpose.ROTATE_270`).
    #[test]
    fn exif_orientation_applied_to_pixels() {
        let src = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 100, 0, 0]));
        let mut dynamic = DynamicImage::ImageRgb8(src);
        dynamic.apply_orientation(orientation_from_exif_chunk(exif_block(6)));
        let out = dynamic.into_rgb8();
        assert_eq!(out.dimensions(), (1, 2));
        assert_eq!(out.get_pixel(0, 0).0[0], 0);
        assert_eq!(out.get_pixel(0, 1).0[0], 100);
    }
}
