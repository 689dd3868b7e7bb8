//! PDF rasterisation: page sizes like MuPDF at 144 DPI, real content (text, vector, image),
//! and typed errors for broken files.

mod common;

use common::{PageSpec, PdfBuilder};
use dsocr_input::pdf::{pixel_size, PageError, PdfDocument, PdfError, DEFAULT_DPI};
use dsocr_input::{page_count, render_pdf};
use image::RgbImage;

/// A 7-page document: Letter with text + a red rectangle, A4 with a 2×2 image, 595×842,
/// Letter rotated 90°, a small odd size, a crop box, a media box with a non-zero origin.
fn sample_pdf() -> Vec<u8> {
    let mut b = PdfBuilder::new();
    let font = b.add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec());
    // Rows top to bottom: red, green / blue, white.
    let img = b.add_rgb_image(2, 2, &[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
    let mut letter =
        PageSpec::new("0 0 612 792", "BT /F1 48 Tf 72 700 Td (Hello PDF) Tj ET\n1 0 0 rg 100 100 200 100 re f");
    letter.resources = format!("/Font << /F1 {font} 0 R >>");
    let mut a4 = PageSpec::new("0 0 595.276 841.89", "q 200 0 0 200 100 400 cm /Im0 Do Q");
    a4.resources = format!("/XObject << /Im0 {img} 0 R >>");
    let mut rotated = PageSpec::new("0 0 612 792", "0 0 1 rg 0 0 612 100 re f");
    rotated.dict.push_str(" /Rotate 90");
    let mut cropped = PageSpec::new("0 0 612 792", "");
    cropped.dict.push_str(" /CropBox [50 50 350 250]");
    b.finish(vec![
        letter,
        a4,
        PageSpec::new("0 0 595 842", ""),
        rotated,
        PageSpec::new("0 0 100.3 50.2", ""),
        cropped,
        PageSpec::new("100 100 400 300", ""),
    ])
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn px(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
    img.get_pixel(x, y).0
}

fn near(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

#[test]
fn mupdf_page_sizes() {
    // Spec §3.1 (checked with PyMuPDF): Letter 1224×1584, A4 1191×1684, 595×842 pt 1190×1684.
    assert_eq!(pixel_size(612.0, 792.0, 144.0), (1224, 1584));
    assert_eq!(pixel_size(595.276, 841.89, 144.0), (1191, 1684));
    assert_eq!(pixel_size(595.0, 842.0, 144.0), (1190, 1684));
    assert_eq!(pixel_size(612.0, 792.0, 72.0), (612, 792));
    assert_eq!(pixel_size(612.0, 792.0, 200.0), (1700, 2200));
}

#[test]
fn renders_pages_with_the_right_sizes_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tmp(&dir, "sample.pdf", &sample_pdf());
    assert_eq!(page_count(&path).unwrap(), 7);

    let pages = render_pdf(&path, DEFAULT_DPI).unwrap();
    let sizes: Vec<(u32, u32)> = pages.iter().map(|p| p.as_ref().unwrap().dimensions()).collect();
    assert_eq!(sizes, vec![(1224, 1584), (1191, 1684), (1190, 1684), (1584, 1224), (201, 101), (600, 400), (600, 400)]);

    // Page 1: text is drawn (dark pixels where "Hello PDF" is: x from 144 px, baseline at
    // (792 − 700)·2 = 184 px, cap height ≈ 69 px), the red rectangle (100..300 × 100..200 pt →
    // x 200..600, y 1184..1384 px) is red, the rest is white.
    let p1 = pages[0].as_ref().unwrap();
    let dark = (144..600).flat_map(|x| (110..190).map(move |y| (x, y))).filter(|&(x, y)| px(p1, x, y)[0] < 100).count();
    assert!(dark > 1500, "only {dark} dark pixels where the text should be");
    assert_eq!(px(p1, 400, 1284), [255, 0, 0]);
    assert_eq!(px(p1, 199, 1284), [255, 255, 255]);
    assert_eq!(px(p1, 1000, 800), [255, 255, 255]);
    let non_white = p1.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(non_white < 1224 * 1584 / 10, "page 1 mostly white, got {non_white} non-white pixels");

    // Page 2: the 2×2 image on 100..300 × 400..600 pt → x 200..600, y 483.78..883.78 px.
    let p2 = pages[1].as_ref().unwrap();
    for (x, y, want) in
        [(300, 584, [255, 0, 0]), (500, 584, [0, 255, 0]), (300, 784, [0, 0, 255]), (500, 784, [255, 255, 255])]
    {
        assert!(near(px(p2, x, y), want, 8), "({x}, {y}): {:?}, want {want:?}", px(p2, x, y));
    }
    assert_eq!(px(p2, 100, 100), [255, 255, 255]);

    // Page 4 (/Rotate 90): the blue band along the page's bottom edge (y 0..100 pt) ends up on
    // the left after a clockwise rotation.
    let p4 = pages[3].as_ref().unwrap();
    assert_eq!(px(p4, 50, 600), [0, 0, 255]);
    assert_eq!(px(p4, 1500, 600), [255, 255, 255]);
}

#[test]
fn page_iterator_and_single_pages() {
    let doc = PdfDocument::from_bytes(sample_pdf(), "mem.pdf").unwrap();
    assert_eq!(doc.page_count(), 7);
    assert_eq!(doc.page_size_points(1).unwrap(), (595.276, 841.89));
    assert_eq!(doc.page_pixel_size(3, 144.0).unwrap(), (1584, 1224));
    let iter = doc.pages(72.0);
    assert_eq!(iter.size_hint(), (7, Some(7)));
    let sizes: Vec<_> = iter.map(|p| p.unwrap().image.dimensions()).collect();
    assert_eq!(sizes[0], (612, 792));
    let p = doc.render_page(4, 144.0).unwrap();
    assert_eq!((p.index, p.image.dimensions()), (4, (201, 101)));
    match doc.render_page(7, 144.0) {
        Err(e @ PageError::OutOfRange { page: 8, count: 7, .. }) => assert!(e.to_string().contains("mem.pdf")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(doc.render_page(0, 0.0), Err(PageError::InvalidDpi { .. })));
    assert!(matches!(doc.render_page(0, f32::NAN), Err(PageError::InvalidDpi { .. })));
}

#[test]
fn not_a_pdf_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tmp(&dir, "garbage.pdf", b"this is not a PDF at all\n\x00\x01\x02");
    let err = render_pdf(&path, 144.0).unwrap_err();
    assert!(matches!(err, PdfError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.pdf"), "{err}");

    let missing = dir.path().join("missing.pdf");
    let err = page_count(&missing).unwrap_err();
    assert!(matches!(err, PdfError::Io { .. }) && err.to_string().contains("missing.pdf"), "{err}");

    let err = PdfDocument::from_bytes(Vec::new(), "empty.pdf").unwrap_err();
    assert!(matches!(err, PdfError::Corrupt { .. }) && err.to_string().contains("empty.pdf"), "{err}");
}

#[test]
fn truncated_pdf_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_pdf();
    // The page tree and catalog are at the end: cutting the file in half loses them (and the
    // xref table). No repair can recover the document.
    for cut in [bytes.len() / 2, 40, 9] {
        let path = write_tmp(&dir, "cut.pdf", &bytes[..cut]);
        let err = render_pdf(&path, 144.0).unwrap_err();
        assert!(matches!(err, PdfError::Corrupt { .. } | PdfError::NoPages { .. }), "cut {cut}: {err:?}");
        assert!(err.to_string().contains("cut.pdf"), "{err}");
    }
}

#[test]
fn encrypted_pdf_is_a_typed_error_naming_the_file() {
    // Standard security handler R2 with a user password: the empty password does not match
    // /U, so the file cannot be opened.
    let mut b = PdfBuilder::new();
    let enc = b.add(
        format!(
            "<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <{}> /U <{}> >>",
            "ab".repeat(32),
            "cd".repeat(32)
        )
        .into_bytes(),
    );
    b.trailer_extra(&format!("/Encrypt {enc} 0 R /ID [<{0}> <{0}>]", "01".repeat(16)));
    let bytes = b.finish(vec![PageSpec::new("0 0 612 792", "")]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_tmp(&dir, "secret.pdf", &bytes);
    let err = render_pdf(&path, 144.0).unwrap_err();
    assert!(matches!(err, PdfError::Encrypted { .. }), "{err:?}");
    assert!(err.to_string().contains("secret.pdf"), "{err}");
}

#[test]
fn a_page_that_cannot_be_rendered_is_a_page_error_and_the_others_render() {
    // A content stream whose filter fails (hayro's Flate decoder is lenient like pdf.js, so use
    // ASCIIHex with non-hex data).
    let mut bad = PageSpec::new("0 0 612 792", "ZZ-not-hex");
    bad.content_dict = "/Filter /ASCIIHexDecode".into();
    let bytes = PdfBuilder::new().finish(vec![PageSpec::new("0 0 612 792", ""), bad, PageSpec::new("0 0 595 842", "")]);
    let dir = tempfile::tempdir().unwrap();
    let path = write_tmp(&dir, "partly broken.pdf", &bytes);
    let pages = render_pdf(&path, 144.0).unwrap();
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].as_ref().unwrap().dimensions(), (1224, 1584));
    let err = pages[1].as_ref().unwrap_err();
    assert!(matches!(err, PageError::UnreadableContent { page: 2, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("partly broken.pdf") && msg.contains("page 2"), "{msg}");
    assert_eq!(pages[2].as_ref().unwrap().dimensions(), (1190, 1684));
}

#[test]
fn huge_page_is_a_page_error() {
    // 20000 pt wide at 144 DPI = 40000 px: fine for u16 but 40000 × 40000 px is over the limit.
    let bytes = PdfBuilder::new().finish(vec![PageSpec::new("0 0 20000 20000", "")]);
    let doc = PdfDocument::from_bytes(bytes, "huge.pdf").unwrap();
    let err = doc.render_page(0, 144.0).unwrap_err();
    assert!(matches!(err, PageError::TooLarge { page: 1, width: 40000, height: 40000, .. }), "{err:?}");
    // At 1 DPI it is small enough.
    assert_eq!(doc.render_page(0, 1.0).unwrap().image.dimensions(), (278, 278));
}

#[test]
fn documents_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<PdfDocument>();
    let doc = PdfDocument::from_bytes(sample_pdf(), "mem.pdf").unwrap();
    let size = std::thread::spawn(move || doc.render_page(0, 72.0).unwrap().image.dimensions()).join().unwrap();
    assert_eq!(size, (612, 792));
}
