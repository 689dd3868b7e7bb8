//! Test inputs: the repository's tiny reference fixture (`tests/fixtures/reference-tiny`: the
//! upstream code's outputs for random weights) and small PDFs written by hand, so tests need no
//! files from outside the repository.

use std::path::{Path, PathBuf};

/// `tests/fixtures/reference-tiny` of this workspace: a model folder (config.json,
/// model.safetensors, tokenizer.json) with `cases.json`, `images/` and `golden.safetensors`.
pub fn reference_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

/// One of the fixture's images (`page.png` 1280×800, `small.png` 600×400).
pub fn fixture_image(name: &str) -> PathBuf {
    reference_tiny().join("images").join(name)
}

/// The `generated_text` the upstream code produced for a case of the fixture's `cases.json`.
pub fn golden_text(case: &str) -> Option<String> {
    let text = std::fs::read_to_string(reference_tiny().join("cases.json")).ok()?;
    let cases: serde_json::Value = serde_json::from_str(&text).ok()?;
    let case = cases["cases"].as_array()?.iter().find(|c| c["name"] == case)?;
    case["generated_text"].as_str().map(str::to_string)
}

/// A PDF of `pages.len()` pages of `width × height` points, each with a line of Helvetica text
/// and a filled rectangle (hand-written objects and cross-reference table).
pub fn make_pdf(pages: &[&str], width: u32, height: u32) -> Vec<u8> {
    let pages: Vec<Option<&str>> = pages.iter().map(|p| Some(*p)).collect();
    make_pdf_ext(&pages, width, height, false)
}

/// Like [`make_pdf`]; a `None` page has a content stream that cannot be decoded (an
/// `/ASCIIHexDecode` filter over non-hex data), and `encrypted` adds a standard security
/// handler whose user password is not empty (the file cannot be opened).
pub fn make_pdf_ext(pages: &[Option<&str>], width: u32, height: u32, encrypted: bool) -> Vec<u8> {
    let n = pages.len();
    let mut objects: Vec<Vec<u8>> = Vec::new();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 2 * i)).collect();
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes());
    let font = 3 + 2 * n;
    for (i, text) in pages.iter().enumerate() {
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] \
                 /Resources << /Font << /F1 {font} 0 R >> >> /Contents {} 0 R >>",
                4 + 2 * i
            )
            .into_bytes(),
        );
        let (content, filter) = match text {
            Some(text) => (
                format!(
                    "BT /F1 18 Tf 20 {} Td ({text}) Tj ET 0 0 1 rg 20 20 {} {} re f",
                    height.saturating_sub(40),
                    width / 3,
                    height / 4
                ),
                "",
            ),
            None => ("ZZ-not-hex".to_string(), " /Filter /ASCIIHexDecode"),
        };
        let mut stream = format!("<< /Length {}{filter} >>\nstream\n", content.len()).into_bytes();
        stream.extend_from_slice(content.as_bytes());
        stream.extend_from_slice(b"\nendstream");
        objects.push(stream);
    }
    objects.push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec());
    let mut trailer_extra = String::new();
    if encrypted {
        objects.push(
            format!(
                "<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <{}> /U <{}> >>",
                "ab".repeat(32),
                "cd".repeat(32)
            )
            .into_bytes(),
        );
        trailer_extra = format!(" /Encrypt {} 0 R /ID [<{1}> <{1}>]", objects.len(), "01".repeat(16));
    }

    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (k, obj) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", k + 1).as_bytes());
        out.extend_from_slice(obj);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R{trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
            .as_bytes(),
    );
    out
}

/// A little-endian RGB TIFF, 8 bits per sample, uncompressed, tiled (`tile`×`tile`) with
/// separate planes (PlanarConfiguration 2): a valid TIFF 6.0 layout that scanners write. Each
/// tile is one grey level (`20·k` for tile `k`, planes R, G, B in turn). With partial tiles at
/// the bottom the `tiff` 0.11.3 decoder panics on it.
pub fn tiled_planar_tiff(width: u32, height: u32, tile: u32) -> Vec<u8> {
    let tiles_per_plane = width.div_ceil(tile) * height.div_ceil(tile);
    let tiles = 3 * tiles_per_plane;
    let tile_bytes = tile * tile;
    let short = |tag: u16, value: u32| (tag, 3u16, 1u32, value);
    let entries = 11u32;
    let ifd_end = 8 + 2 + entries * 12 + 4;
    let bits_at = ifd_end;
    let offsets_at = bits_at + 6 + 2; // 3 shorts, padded to a word
    let counts_at = offsets_at + 4 * tiles;
    let data_at = counts_at + 4 * tiles;
    let table: [(u16, u16, u32, u32); 11] = [
        short(256, width),
        short(257, height),
        (258, 3, 3, bits_at), // BitsPerSample 8, 8, 8
        short(259, 1),        // no compression
        short(262, 2),        // RGB
        short(277, 3),        // SamplesPerPixel
        short(284, 2),        // PlanarConfiguration: separate planes
        short(322, tile),     // TileWidth
        short(323, tile),     // TileLength
        (324, 4, tiles, offsets_at),
        (325, 4, tiles, counts_at),
    ];
    let mut out = b"II*\0\x08\0\0\0".to_vec();
    out.extend_from_slice(&(entries as u16).to_le_bytes());
    for (tag, kind, count, value) in table {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&[0; 4]);
    for _ in 0..3 {
        out.extend_from_slice(&8u16.to_le_bytes());
    }
    out.extend_from_slice(&[0; 2]);
    for k in 0..tiles {
        out.extend_from_slice(&(data_at + k * tile_bytes).to_le_bytes());
    }
    for _ in 0..tiles {
        out.extend_from_slice(&tile_bytes.to_le_bytes());
    }
    for k in 0..tiles {
        out.extend(std::iter::repeat_n((k * 20) as u8, tile_bytes as usize));
    }
    out
}
