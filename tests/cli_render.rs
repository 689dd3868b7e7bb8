//! `dsocr render` on hand-written raw model outputs (no model involved).

#[path = "cli_util.rs"]
mod cli_util;

use std::path::Path;

use cli_util::*;
use image::{Rgb, RgbImage};

const EOS: &str = "<｜end▁of▁sentence｜>";
const PAGE_SPLIT: &str = "\n\n<--- Page Split --->\n";

/// A 1000x500 page: white, with a blue "figure" area.
fn write_page(path: &Path) {
    let img = RgbImage::from_fn(1000, 500, |x, y| {
        if (100..400).contains(&x) && y >= 160 {
            Rgb([40, 90, 200])
        } else {
            Rgb([255; 3])
        }
    });
    img.save(path).unwrap();
}

/// Several blocks: a title spanning the full width (coordinates 0 and 999), one block with two
/// boxes, a figure, its caption, a table with `<td>`, and a malformed box list.
const RAW: &str = "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 100]]<|/det|>\n# Quarterly Report\n\n\
<|ref|>text<|/ref|><|det|>[[50, 120, 480, 300], [520, 120, 950, 300]]<|/det|>\nTwo columns of text.\n\n\
<|ref|>image<|/ref|><|det|>[[100, 320, 400, 999]]<|/det|>\n\n\
<|ref|>image_caption<|/ref|><|det|>[[100, 900, 400, 950]]<|/det|>\nFigure 1: sales.\n\n\
<|ref|>table<|/ref|><|det|>[[500, 320, 999, 999]]<|/det|>\n<table><tr><td>Q1</td><td>10</td></tr></table>\n\n\
<|ref|>text<|/ref|><|det|>[[1, 2, 3]]<|/det|>\nMalformed boxes.";

/// Upstream's cleaning of RAW: the image match becomes a link, every other match is deleted.
const CLEANED: &str = "\n# Quarterly Report\n\n\nTwo columns of text.\n\n![](images/report_0.jpg)\n\n\n\nFigure 1: sales.\n\n\n<table><tr><td>Q1</td><td>10</td></tr></table>\n\n\nMalformed boxes.";

#[test]
fn render_rebuilds_image_outputs_from_raw_text() {
    let dir = temp_dir("render-image");
    let img = dir.join("report.png");
    write_page(&img);
    let raw = dir.join("saved.txt");
    std::fs::write(&raw, format!("{RAW}{EOS}")).unwrap();
    let out = dir.join("out");
    let r = dsocr_run(&dir, &["render", "--raw", s(&raw), "--image", s(&img), "--out", s(&out)]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(tree(&out), ["images/report_0.jpg", "report.json", "report.mmd", "report_boxes.jpg", "report_det.mmd"]);
    assert_eq!(read(&out.join("report_det.mmd")), RAW, "raw kept with its tags, EOS removed");
    assert_eq!(read(&out.join("report.mmd")), CLEANED);
    assert_eq!(image::image_dimensions(out.join("report_boxes.jpg")).unwrap(), (1000, 500));
    // Figure box [100, 320, 400, 999] -> pixels trunc(v / 999 * size): [100, 160, 400, 500).
    let figure = image::open(out.join("images/report_0.jpg")).unwrap().to_rgb8();
    assert_eq!(figure.dimensions(), (300, 340));
    let centre = figure.get_pixel(150, 170).0;
    assert!(centre[2] > 150 && centre[0] < 100, "the crop shows the blue figure area: {centre:?}");

    let json = read_json(&out.join("report.json"));
    assert_eq!(json["kind"], "image");
    let page = &json["pages"][0];
    assert_eq!(page["finish_reason"], "stop", "no earlier JSON: counted as finished");
    assert_eq!((page["width"].as_u64(), page["height"].as_u64()), (Some(1000), Some(500)));
    assert_eq!(page["markdown"], CLEANED);
    let blocks = page["blocks"].as_array().expect("blocks");
    let labels: Vec<&str> = blocks.iter().map(|b| b["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["title", "text", "image", "image_caption", "table", "text"]);
    assert_eq!(blocks[0]["boxes"], serde_json::json!([[0, 0, 999, 100]]));
    assert_eq!(blocks[0]["pixel_boxes"], serde_json::json!([[0, 0, 1000, 50]]), "0 -> 0 and 999 -> the full width");
    assert_eq!(blocks[0]["text"], "# Quarterly Report");
    assert_eq!(blocks[1]["boxes"].as_array().map(Vec::len), Some(2), "two boxes in one block");
    assert_eq!(blocks[2]["figure"], "images/report_0.jpg");
    assert_eq!(blocks[2]["pixel_boxes"], serde_json::json!([[100, 160, 400, 500]]));
    assert!(blocks[4]["text"].as_str().unwrap().contains("<td>Q1</td>"));
    assert_eq!(blocks[5]["boxes"], serde_json::json!([]), "malformed box list skipped");
    assert_eq!(blocks[5]["text"], "Malformed boxes.");
    let warnings = page["warnings"].as_array().expect("a warning for the malformed box list");
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("block 5")), "{warnings:?}");
    // Each block's text_span points into the raw output.
    for b in blocks {
        let [start, end] = [b["text_span"][0].as_u64().unwrap() as usize, b["text_span"][1].as_u64().unwrap() as usize];
        assert_eq!(&RAW[start..end], b["text"].as_str().unwrap());
    }
}

#[test]
fn render_uses_the_earlier_json_and_the_pdf_pages() {
    let dir = temp_dir("render-pdf");
    let pdf = dir.join("scan.pdf");
    std::fs::write(&pdf, make_pdf(&["Alpha", "Beta"], 300, 200)).unwrap();
    let page1 = "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 200]]<|/det|>\n# Alpha";
    let page2 = "<|ref|>image<|/ref|><|det|>[[66, 100, 400, 400]]<|/det|>\n\n<|ref|>text<|/ref|><|det|>[[0, 900, 999, 999]]<|/det|>\nBeta \\coloneqq 1";
    let raw = dir.join("scan_det.mmd");
    std::fs::write(&raw, format!("{page1}{PAGE_SPLIT}{page2}{PAGE_SPLIT}")).unwrap();
    // The JSON an earlier `dsocr ocr` run wrote next to the raw file.
    let prior = serde_json::json!({
        "name": "scan", "kind": "pdf", "dpi": 144.0,
        "pages": [
            { "page": 1, "width": 600, "height": 400, "finish_reason": "stop", "complete": true,
              "prompt_tokens": 278, "generated_tokens": 17, "markdown": "", "blocks": [] },
            { "page": 2, "width": 600, "height": 400, "finish_reason": "repetition", "complete": false,
              "prompt_tokens": 278, "generated_tokens": 8192, "markdown": "", "blocks": [] }
        ]
    });
    std::fs::write(dir.join("scan.json"), serde_json::to_vec(&prior).unwrap()).unwrap();
    let out = dir.join("out");
    let r = dsocr_run(&dir, &["render", "--raw", s(&raw), "--image", s(&pdf), "--out", s(&out)]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        tree(&out),
        [
            "images/scan_2_0.jpg",
            "scan.json",
            "scan.mmd",
            "scan_det.mmd",
            "scan_layouts.pdf",
            "scan_page1_boxes.jpg",
            "scan_page2_boxes.jpg"
        ]
    );
    assert_eq!(read(&out.join("scan_det.mmd")), format!("{page1}{PAGE_SPLIT}{page2}{PAGE_SPLIT}"));
    assert_eq!(
        read(&out.join("scan.mmd")),
        format!("\n# Alpha{PAGE_SPLIT}![](images/scan_2_0.jpg)\n\nBeta := 1{PAGE_SPLIT}"),
        "figure link, tags deleted, \\coloneqq rewritten, blank lines collapsed (PDF)"
    );
    let json = read_json(&out.join("scan.json"));
    let pages = json["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 2);
    assert_eq!((pages[0]["finish_reason"].as_str(), pages[0]["generated_tokens"].as_u64()), (Some("stop"), Some(17)));
    assert_eq!(
        (pages[1]["finish_reason"].as_str(), pages[1]["generated_tokens"].as_u64()),
        (Some("repetition"), Some(8192))
    );
    assert_eq!(pages[1]["complete"], false);
    assert_eq!((pages[1]["width"].as_u64(), pages[1]["height"].as_u64()), (Some(600), Some(400)));
    // [66, 100, 400, 400] on 600x400 -> [39, 40, 240, 160).
    assert_eq!(image::image_dimensions(out.join("images/scan_2_0.jpg")).unwrap(), (201, 120));

    // More pages in the raw file than in the PDF: refused with both counts.
    std::fs::write(&raw, format!("a{PAGE_SPLIT}b{PAGE_SPLIT}c{PAGE_SPLIT}")).unwrap();
    let r = dsocr_run(&dir, &["render", "--raw", s(&raw), "--image", s(&pdf), "--out", s(&dir.join("out3"))]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("has 3 pages") && r.stderr.contains("has only 2"), "{r}");
}
