//! Post-processing end to end on hand-written model outputs: markdown, JSON, crops, overlays,
//! output names and atomic writes. Expected markdown/boxes/spans were produced by running
//! upstream's own Python code (`re.findall` + `str.replace` + `int(x / 999 * W)`) on the same
//! strings, not by this crate.

use std::path::Path;

use dsocr_render::draw::{draw_overlay, figure_crops, label_color, BOX_WIDTH, FILL_ALPHA, TITLE_WIDTH};
use dsocr_render::json::DocumentJson;
use dsocr_render::{
    parse_grounding, safe_stem, write_atomic, write_document, write_image_result, DocumentKind, DocumentWriter,
    FinishReason, GeneratedPage, PageInput, WriterOptions, EOS, PAGE_SPLIT,
};
use image::{Rgb, RgbImage};

/// Six blocks: a title at the top edge (coordinate 0), text with two boxes, a figure, a table
/// with `<td>` reaching 999, a figure with two boxes, and a block with a malformed box list.
fn sample_raw() -> String {
    [
        "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n# Report\n\n",
        "<|ref|>text<|/ref|><|det|>[[0, 100, 499, 499], [500, 100, 999, 499]]<|/det|>\nTwo columns, $a \\coloneqq b$.\n\n",
        "<|ref|>image<|/ref|><|det|>[[100, 500, 599, 899]]<|/det|>\n\n\n\n",
        "<|ref|>table<|/ref|><|det|>[[0, 900, 999, 999]]<|/det|>\n<table><tr><td>1</td><td>2</td></tr></table>\n\n",
        "<|ref|>image<|/ref|><|det|>[[600, 500, 799, 699], [800, 500, 999, 999]]<|/det|>\n\n",
        "<|ref|>text<|/ref|><|det|>[[1, 2, oops]]<|/det|>\nBroken box list.",
        EOS,
    ]
    .concat()
}

/// Upstream's cleaned markdown for `sample_raw` with figure names `images/doc_<k>.jpg`.
const SAMPLE_MD: &str = "\n# Report\n\n\nTwo columns, $a := b$.\n\n![](images/doc_0.jpg)\n\n\n\n\n\n<table><tr><td>1</td><td>2</td></tr></table>\n\n![](images/doc_1.jpg)\n\n\n\nBroken box list.";

/// A 200×100 image with a distinct colour per pixel (to check crops).
fn sample_image() -> RgbImage {
    RgbImage::from_fn(200, 100, |x, y| Rgb([x as u8, (y * 2) as u8, ((x + y) % 256) as u8]))
}

fn page<'a>(image: &'a RgbImage, raw: &'a str, finish_reason: FinishReason) -> GeneratedPage<'a> {
    GeneratedPage { image, raw, finish_reason, prompt_tokens: 273, generated_tokens: 120 }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn grounding_blocks_boxes_and_spans() {
    let raw = sample_raw();
    let (text, had_eos) = dsocr_render::strip_eos(&raw);
    assert!(had_eos);
    let g = parse_grounding(text);
    let labels: Vec<&str> = g.blocks.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["title", "text", "image", "table", "image", "text"]);
    assert_eq!(g.blocks[1].boxes, vec![[0, 100, 499, 499], [500, 100, 999, 499]]);
    // The malformed list is skipped with a warning; its block (label, text) stays.
    assert!(g.blocks[5].boxes.is_empty());
    assert_eq!(g.blocks[5].text, "Broken box list.");
    assert_eq!(g.warnings.len(), 1, "{:?}", g.warnings);
    assert_eq!(g.warnings[0].order, 5);

    // Pixel boxes on 200×100, from Python's int(v / 999 * W): 0 -> 0 and 999 -> W (exclusive).
    let px: Vec<Vec<[u32; 4]>> = g.blocks.iter().map(|b| b.pixel_boxes(200, 100)).collect();
    assert_eq!(px[0], vec![[0, 0, 200, 9]]);
    assert_eq!(px[1], vec![[0, 10, 99, 49], [100, 10, 200, 49]]);
    assert_eq!(px[2], vec![[20, 50, 119, 89]]);
    assert_eq!(px[3], vec![[0, 90, 200, 100]]);
    assert_eq!(px[4], vec![[120, 50, 159, 69], [160, 50, 200, 100]]);

    // Text spans (byte offsets into the EOS-stripped output), trimmed.
    let spans: Vec<(usize, usize)> = g.blocks.iter().map(|b| (b.text_span.start, b.text_span.end)).collect();
    assert_eq!(spans, [(53, 61), (140, 169), (232, 232), (288, 332), (415, 415), (464, 480)]);
    assert_eq!(g.blocks[3].text, "<table><tr><td>1</td><td>2</td></tr></table>");
    assert_eq!(&text[spans[1].0..spans[1].1], "Two columns, $a \\coloneqq b$.");
    let image_idx: Vec<Option<usize>> = g.blocks.iter().map(|b| b.image_index).collect();
    assert_eq!(image_idx, [None, None, Some(0), None, Some(1), None]);
}

#[test]
fn single_image_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample_image();
    let raw = sample_raw();
    let files = write_image_result(dir.path(), "doc", page(&image, &raw, FinishReason::Stop), WriterOptions::default())
        .unwrap();

    // Markdown and raw output, exactly.
    assert_eq!(std::fs::read_to_string(&files.markdown).unwrap(), SAMPLE_MD);
    assert_eq!(std::fs::read_to_string(&files.raw).unwrap(), raw.strip_suffix(EOS).unwrap());
    assert_eq!(files.markdown, dir.path().join("doc.mmd"));
    assert_eq!(files.raw, dir.path().join("doc_det.mmd"));

    // Figures: one file per image match k (the link target) plus `_<k>_<j>` for extra boxes.
    assert_eq!(list_dir(&dir.path().join("images")), ["doc_0.jpg", "doc_1.jpg", "doc_1_1.jpg"]);
    for (name, size) in [("doc_0.jpg", (99, 39)), ("doc_1.jpg", (39, 19)), ("doc_1_1.jpg", (40, 50))] {
        let img = image::open(dir.path().join("images").join(name)).unwrap();
        assert_eq!((img.width(), img.height()), size, "{name}");
    }
    for link in ["images/doc_0.jpg", "images/doc_1.jpg"] {
        assert!(SAMPLE_MD.contains(link) && dir.path().join(link).exists());
    }
    assert_eq!(list_dir(dir.path()), ["doc.json", "doc.mmd", "doc_boxes.jpg", "doc_det.mmd", "images"]);
    let overlay = image::open(dir.path().join("doc_boxes.jpg")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (200, 100));

    // JSON.
    let json: DocumentJson = serde_json::from_slice(&std::fs::read(&files.json).unwrap()).unwrap();
    assert_eq!(json.name, "doc");
    assert_eq!(json.pages.len(), 1);
    let p = &json.pages[0];
    assert_eq!((p.page, p.width, p.height), (1, 200, 100));
    assert_eq!((p.finish_reason, p.complete), (Some(FinishReason::Stop), true));
    assert_eq!((p.prompt_tokens, p.generated_tokens), (273, 120));
    assert_eq!(p.markdown, SAMPLE_MD);
    assert_eq!(p.blocks.len(), 6);
    assert_eq!(p.blocks[4].pixel_boxes, vec![[120, 50, 159, 69], [160, 50, 200, 100]]);
    assert_eq!(p.blocks[4].figure.as_deref(), Some("images/doc_1.jpg"));
    assert_eq!(p.blocks[0].figure, None);
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("oops"), "{:?}", p.warnings);
}

#[test]
fn json_content_is_exact_for_a_small_example() {
    let dir = tempfile::tempdir().unwrap();
    let image = RgbImage::from_pixel(100, 50, Rgb([255, 255, 255]));
    let raw = "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nHi";
    let mut w = DocumentWriter::new(dir.path(), "small", DocumentKind::Image, WriterOptions::default()).unwrap();
    w.set_source("in/small.png");
    w.add_page(PageInput::Generated(page(&image, raw, FinishReason::Length))).unwrap();
    // A checkpoint says the document is not finished; `finish` says it is.
    w.flush().unwrap();
    let read = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert_eq!(read(&dir.path().join("small.json"))["finished"], false);
    let files = w.finish().unwrap();
    let got = read(&files.json);
    let want = serde_json::json!({
        "name": "small",
        "source": "in/small.png",
        "kind": "image",
        "finished": true,
        "pages": [{
            "page": 1, "width": 100, "height": 50,
            "finish_reason": "length", "complete": false,
            "prompt_tokens": 273, "generated_tokens": 120,
            "markdown": "\nHi",
            "blocks": [{
                "order": 0, "label": "title",
                "boxes": [[0, 0, 999, 999]], "pixel_boxes": [[0, 0, 100, 50]],
                "text": "Hi", "text_span": [54, 56]
            }]
        }]
    });
    assert_eq!(got, want);
    assert_eq!(std::fs::read_to_string(&files.markdown).unwrap(), "\nHi");

    // An interrupted document is completed as such.
    let mut w = DocumentWriter::new(dir.path(), "cut", DocumentKind::Image, WriterOptions::default()).unwrap();
    w.add_page(PageInput::Generated(page(&image, raw, FinishReason::Length))).unwrap();
    let files = w.finish_incomplete().unwrap();
    assert_eq!(read(&files.json)["finished"], false);
    assert_eq!(read(&files.json)["pages"].as_array().map(Vec::len), Some(1));
}

#[test]
fn overlay_pixels() {
    // White 200×100 image; a title box and a text box.
    let white = RgbImage::from_pixel(200, 100, Rgb([255, 255, 255]));
    let raw = "<|ref|>title<|/ref|><|det|>[[100, 300, 499, 799]]<|/det|>\nT\n<|ref|>text<|/ref|><|det|>[[600, 300, 899, 799]]<|/det|>\nx";
    let g = parse_grounding(raw);
    let [tx1, ty1, tx2, ty2] = g.blocks[0].pixel_boxes(200, 100)[0];
    assert_eq!([tx1, ty1, tx2, ty2], [20, 30, 99, 79]);
    let [sx1, sy1, ..] = g.blocks[1].pixel_boxes(200, 100)[0];
    assert_eq!([sx1, sy1], [120, 30]);
    let out = draw_overlay(&white, &g.blocks);
    let (ct, cs) = (label_color("title"), label_color("text"));
    let filled = |c: Rgb<u8>| {
        Rgb(c.0.map(|v| ((255 * (255 - FILL_ALPHA as u32) + v as u32 * FILL_ALPHA as u32 + 127) / 255) as u8))
    };
    let ymid = 60;
    // Title: 4-px outline inside the box, then the translucent fill.
    for dx in 0..TITLE_WIDTH {
        assert_eq!(*out.get_pixel(tx1 + dx, ymid), ct, "title outline x+{dx}");
        assert_eq!(*out.get_pixel(tx2 - dx, ymid), ct, "title outline right -{dx}");
    }
    assert_eq!(*out.get_pixel(tx1 + TITLE_WIDTH, ymid), filled(ct));
    assert_eq!(*out.get_pixel(tx1 - 1, ymid), Rgb([255, 255, 255]));
    // Text: 2-px outline.
    for dx in 0..BOX_WIDTH {
        assert_eq!(*out.get_pixel(sx1 + dx, ymid), cs);
    }
    assert_eq!(*out.get_pixel(sx1 + BOX_WIDTH, ymid), filled(cs));
    // Label: white box with glyphs in the label colour at (x1, y1 - 15).
    let label_area: Vec<Rgb<u8>> =
        (tx1..tx1 + 40).flat_map(|x| (15..23).map(move |y| (x, y))).map(|(x, y)| *out.get_pixel(x, y)).collect();
    assert!(label_area.contains(&ct), "label text drawn");
    assert!(label_area.contains(&Rgb([255, 255, 255])));
    // Outside everything: untouched; deterministic.
    assert_eq!(*out.get_pixel(5, 95), Rgb([255, 255, 255]));
    assert_eq!(out, draw_overlay(&white, &g.blocks));
}

#[test]
fn crops_are_exact_pixels_of_the_original() {
    let image = sample_image();
    let raw = sample_raw();
    let g = parse_grounding(dsocr_render::strip_eos(&raw).0);
    let (crops, warnings) = figure_crops(&image, &g.blocks);
    assert!(warnings.is_empty());
    assert_eq!(crops.len(), 3);
    let c = &crops[2];
    assert_eq!((c.image_index, c.box_index, c.pixel_box), (1, 1, [160, 50, 200, 100]));
    assert_eq!(c.image.dimensions(), (40, 50));
    assert_eq!(c.image.get_pixel(0, 0), image.get_pixel(160, 50));
    assert_eq!(c.image.get_pixel(39, 49), image.get_pixel(199, 99));
    // An empty crop (x1 == x2) is a warning, not an error.
    let g = parse_grounding("<|ref|>image<|/ref|><|det|>[[5, 5, 5, 500]]<|/det|>");
    let (crops, warnings) = figure_crops(&image, &g.blocks);
    assert!(crops.is_empty() && warnings.len() == 1);
}

#[test]
fn pdf_document_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = RgbImage::from_pixel(1224, 1584, Rgb([250, 250, 250]));
    let p3 = RgbImage::from_pixel(1191, 1684, Rgb([240, 240, 240]));
    let raw1 = format!("<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n<|ref|>text<|/ref|><|det|>[[0, 500, 999, 999]]<|/det|>\nA\n\n\n\nB{EOS}");
    // Page 3 ran into the repeat guard: no EOS, kept and flagged.
    let raw3 = "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nla la la la";
    let opts = WriterOptions { plain_text: true, layouts_pdf: true, ..Default::default() };
    let files = write_document(
        dir.path(),
        "My Scan (v2)",
        DocumentKind::Pdf { dpi: 144.0 },
        vec![
            PageInput::Generated(page(&p1, &raw1, FinishReason::Stop)),
            PageInput::Failed { error: "scan.pdf: page 2: the renderer panicked: x".into() },
            PageInput::Generated(page(&p3, raw3, FinishReason::Repetition)),
        ],
        opts,
    )
    .unwrap();

    let stem = "My_Scan__v2_";
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    let want_md = format!("![](images/{stem}_1_0.jpg)\n\nA\n\nB{PAGE_SPLIT}{PAGE_SPLIT}\nla la la la{PAGE_SPLIT}");
    assert_eq!(md, want_md);
    assert_eq!(md.matches("<--- Page Split --->").count(), 3);
    let det = std::fs::read_to_string(&files.raw).unwrap();
    assert_eq!(det, format!("{}{PAGE_SPLIT}{PAGE_SPLIT}{raw3}{PAGE_SPLIT}", raw1.strip_suffix(EOS).unwrap()));
    let txt = std::fs::read_to_string(files.text.as_ref().unwrap()).unwrap();
    assert_eq!(txt, format!("A\n\nB\n{PAGE_SPLIT}{PAGE_SPLIT}la la la la\n{PAGE_SPLIT}"));

    let mut names = list_dir(dir.path());
    names.retain(|n| n != "images");
    assert_eq!(
        names,
        [
            format!("{stem}.json"),
            format!("{stem}.mmd"),
            format!("{stem}.txt"),
            format!("{stem}_det.mmd"),
            format!("{stem}_layouts.pdf"),
            format!("{stem}_page1_boxes.jpg"),
            format!("{stem}_page3_boxes.jpg"),
        ]
    );
    assert_eq!(list_dir(&dir.path().join("images")), [format!("{stem}_1_0.jpg")]);
    let fig = image::open(dir.path().join("images").join(format!("{stem}_1_0.jpg"))).unwrap();
    assert_eq!((fig.width(), fig.height()), (611, 791)); // Python: int(499/999*1224), int(499/999*1584)

    let json: DocumentJson = serde_json::from_slice(&std::fs::read(&files.json).unwrap()).unwrap();
    assert_eq!(json.dpi, Some(144.0));
    let flags: Vec<(usize, bool, Option<FinishReason>, bool)> =
        json.pages.iter().map(|p| (p.page, p.complete, p.finish_reason, p.error.is_some())).collect();
    assert_eq!(
        flags,
        [
            (1, true, Some(FinishReason::Stop), false),
            (2, false, None, true),
            (3, false, Some(FinishReason::Repetition), false)
        ]
    );
    assert_eq!(json.pages[2].blocks[0].pixel_boxes, vec![[0, 0, 1191, 1684]]);

    // The layouts PDF has one page per overlay, at the original page size.
    let layouts = dsocr_input::PdfDocument::open(files.layouts_pdf.as_ref().unwrap()).unwrap();
    assert_eq!(layouts.page_count(), 2);
    assert_eq!(layouts.page_pixel_size(0, 144.0).unwrap(), (1224, 1584));
    assert_eq!(layouts.page_pixel_size(1, 144.0).unwrap(), (1191, 1684));
    let rendered = layouts.render_page(1, 72.0).unwrap().image;
    let c = rendered.get_pixel(300, 400).0;
    assert!(c.iter().all(|v| v.abs_diff(240) < 20), "layout page shows the overlay, got {c:?}");
}

#[test]
fn image_writer_rejects_a_second_page() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample_image();
    let mut w = DocumentWriter::new(dir.path(), "one", DocumentKind::Image, WriterOptions::default()).unwrap();
    w.add_page(PageInput::Generated(page(&img, "x", FinishReason::Stop))).unwrap();
    assert!(w.add_page(PageInput::Generated(page(&img, "y", FinishReason::Stop))).is_err());
}

#[test]
fn safe_stems() {
    assert_eq!(safe_stem("../../etc/passwd"), "passwd");
    assert_eq!(safe_stem("/abs/x.png"), "x");
    assert_eq!(safe_stem("scans/my page 1.png"), "my_page_1");
    assert_eq!(safe_stem("Übersicht 東京.pdf"), "Übersicht_東京");
    assert_eq!(safe_stem("a.tar.gz"), "a.tar");
    assert_eq!(safe_stem(".."), "input");
    assert_eq!(safe_stem("/"), "input");
    assert_eq!(safe_stem(".hidden"), "hidden");
    assert_eq!(safe_stem("x(1)[2]<3>.jpg"), "x_1__2__3_");
    for s in ["../../etc/passwd", "/abs/x.png", "a/../../b c.png", "..\\..\\win.png", "\u{0}nul"] {
        let stem = safe_stem(s);
        assert!(
            !stem.contains('/') && !stem.contains('\\') && !stem.contains("..") && !stem.is_empty(),
            "{s:?} -> {stem:?}"
        );
    }
}

#[test]
fn output_names_never_escape_the_out_dir() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let img = sample_image();
    let raw = "<|ref|>image<|/ref|><|det|>[[0, 0, 500, 500]]<|/det|>";
    write_image_result(&out, "../../escape", page(&img, raw, FinishReason::Stop), WriterOptions::default()).unwrap();
    assert_eq!(list_dir(root.path()), ["out"]);
    assert!(list_dir(&out).iter().all(|n| n.starts_with("_._escape") || n == "images"), "{:?}", list_dir(&out));
}

#[test]
fn atomic_writes_leave_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.txt");
    write_atomic(&p, b"first").unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    assert_eq!(list_dir(dir.path()), ["a.txt"]);

    // A failing write (missing folder) reports the path and leaves nothing behind.
    let bad = dir.path().join("missing").join("b.txt");
    let err = write_atomic(&bad, b"x").unwrap_err();
    assert!(err.to_string().contains("b.txt"), "{err}");
    assert_eq!(list_dir(dir.path()), ["a.txt"]);

    // A full document: no temporary files anywhere.
    let img = sample_image();
    let raw = sample_raw();
    write_image_result(dir.path(), "doc", page(&img, &raw, FinishReason::Stop), WriterOptions::default()).unwrap();
    for d in [dir.path().to_path_buf(), dir.path().join("images")] {
        assert!(list_dir(&d).iter().all(|n| !n.starts_with('.') && !n.ends_with(".tmp")), "{:?}", list_dir(&d));
    }

    // Overwriting keeps the old content until the rename: a reader never sees a partial file.
    let err = dsocr_render::output::write_atomic_with(&p, |w| {
        use std::io::Write;
        w.write_all(b"partial")?;
        Err(std::io::Error::other("simulated failure"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("simulated failure"));
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    assert!(list_dir(dir.path()).iter().all(|n| !n.starts_with('.')));
}
