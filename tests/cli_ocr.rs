//! `dsocr ocr` end to end on the fixture model (random weights: the text is noise, but it is
//! the upstream reference's noise — `cases.json` holds what the PyTorch code generated).

#[path = "cli_util.rs"]
mod cli_util;

use std::path::Path;

use cli_util::*;

const PAGE_SPLIT: &str = "\n\n<--- Page Split --->\n";

fn assert_no_temp_files(dir: &Path) {
    let leftovers: Vec<String> = tree(dir).into_iter().filter(|f| f.ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left in {}: {leftovers:?}", dir.display());
}

fn image_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{} is not a readable image: {e}", path.display()))
}

#[test]
fn image_to_out_dir_matches_the_reference_and_renders_back() {
    let dir = temp_dir("ocr-image");
    let out = dir.join("out");
    let small = image("small.png");
    // Case gundam_small: small.png has both sides <= 640, so gundam mode uses no tiles.
    let r = dsocr_run(
        &dir,
        &[
            "ocr",
            s(&small),
            "--model",
            s(model()),
            "--task",
            "free",
            "--max-new-tokens",
            "8",
            "--no-repeat-guard",
            "--out",
            s(&out),
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(tree(&out), ["small.json", "small.mmd", "small_boxes.jpg", "small_det.mmd"], "{r}");

    let golden = golden_text("gundam_small");
    assert_eq!(read(&out.join("small_det.mmd")), golden);
    assert_eq!(read(&out.join("small.mmd")), golden, "no grounding tags: markdown equals the raw text");
    assert_eq!(image_size(&out.join("small_boxes.jpg")), (600, 400));

    let json = read_json(&out.join("small.json"));
    assert_eq!(json["name"], "small");
    assert_eq!(json["kind"], "image");
    assert_eq!(json["source"], s(&small));
    let pages = json["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 1);
    let p = &pages[0];
    assert_eq!(p["page"], 1);
    assert_eq!((p["width"].as_u64(), p["height"].as_u64()), (Some(600), Some(400)));
    assert_eq!(p["finish_reason"], "length", "random weights never produce EOS within 8 tokens");
    assert_eq!(p["complete"], false);
    assert_eq!(p["prompt_tokens"], 278, "BOS + 273 image tokens + `\\nFree OCR.`");
    assert_eq!(p["generated_tokens"], 8);
    assert_eq!(p["markdown"], golden.as_str());
    assert_eq!(p["blocks"].as_array().map(Vec::len), Some(0));

    assert!(r.stderr.contains("flagged"), "a page without EOS is flagged: {r}");
    assert!(r.stderr.contains("done: 1 file(s), 1 page(s)") && r.stderr.contains("8 tokens"), "summary: {r}");
    assert!(r.stderr.contains("pages/s"), "summary: {r}");
    assert!(r.stdout.is_empty(), "with --out nothing goes to stdout: {r}");
    assert_no_temp_files(&out);

    // `render` rebuilds the same files from the saved raw output; finish reason and token
    // counts come from the JSON next to it.
    let out2 = dir.join("out2");
    let r =
        dsocr_run(&dir, &["render", "--raw", s(&out.join("small_det.mmd")), "--image", s(&small), "--out", s(&out2)]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(tree(&out2), tree(&out));
    for f in ["small.mmd", "small_det.mmd"] {
        assert_eq!(read(&out2.join(f)), read(&out.join(f)), "{f}");
    }
    assert_eq!(read_json(&out2.join("small.json")), json);
}

#[test]
fn stdout_formats_and_mode_flags() {
    let dir = temp_dir("ocr-stdout");
    let page = image("page.png");
    let base = [
        "ocr",
        s(&page),
        "--model",
        s(model()),
        "--task",
        "free",
        "--mode",
        "tiny",
        "--max-new-tokens",
        "8",
        "--no-repeat-guard",
    ];
    let golden = golden_text("tiny_page");

    // Default format: markdown on stdout (not a terminal: printed once at the end).
    let r = dsocr_run(&dir, &base);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, format!("{golden}\n"));

    let r = dsocr_run(&dir, &[&base[..], &["--format", "json"]].concat());
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout.lines().count(), 1, "one JSON line per input: {r}");
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    let p = &json["pages"][0];
    assert_eq!((p["width"].as_u64(), p["height"].as_u64()), (Some(1280), Some(800)));
    assert_eq!(p["prompt_tokens"], 78, "tiny: 73 image tokens");
    assert_eq!(p["generated_tokens"], 8);
    assert_eq!(p["finish_reason"], "length");
    assert_eq!(p["markdown"], golden.as_str());

    let r = dsocr_run(&dir, &[&base[..], &["--format", "txt", "--quiet"]].concat());
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, format!("{}\n", golden.trim()));
    assert!(!r.stderr.contains("done:"), "--quiet has no summary: {r}");

    // A raw prompt is the same request as the task it spells out.
    let r = dsocr_run(
        &dir,
        &[
            "ocr",
            s(&page),
            "--model",
            s(model()),
            "--prompt",
            "<image>\\nFree OCR.",
            "--mode",
            "small",
            "--max-new-tokens",
            "8",
            "--no-repeat-guard",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, format!("{}\n", golden_text("small_page")));

    // A q8 decoder (its ids equal the reference's on every fixture case, tests/parity.rs), and
    // bf16 weights on the CPU: the same page, said in the loading line.
    for extra in [&["--quant", "q8"][..], &["--precision", "bf16", "--copy-weights"][..]] {
        let r = dsocr_run(&dir, &[&base[..], extra].concat());
        assert_eq!(r.code, 0, "{extra:?}: {r}");
        if extra[0] == "--quant" {
            assert_eq!(r.stdout, format!("{golden}\n"), "{extra:?}: {r}");
            assert!(r.stderr.contains("(f32, q8 decoder)"), "{r}");
        } else {
            assert!(r.stderr.contains("(bf16)"), "{r}");
        }
    }
}

#[test]
fn a_quantized_folder_from_dsocr_quantize_runs_like_quant_at_load() {
    // `dsocr quantize` writes a folder that `--model` loads as q8 without `--quant`: the page
    // comes out as with `--quant q8` (the reference's text: tests/parity.rs), the loading line
    // says so, and a folder already quantized or a conflicting `--quant` is refused clearly.
    let dir = temp_dir("ocr-quantize");
    let page = image("page.png");
    let saved = dir.join("q8");
    let r = dsocr_run(&dir, &["quantize", "--model", s(model()), "--quant", "q8", "--out", s(&saved), "--quiet"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("matrices in q8"), "{r}");
    let base = ["ocr", s(&page), "--model", s(&saved), "--mode", "tiny", "--max-new-tokens", "8", "--no-repeat-guard"];
    let r = dsocr_run(&dir, &base);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, format!("{}\n", golden_text("tiny_page")));
    assert!(r.stderr.contains("q8 decoder"), "{r}");

    let r = dsocr_run(&dir, &[&base[..], &["--quant", "q4"]].concat());
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("holds q8 weights"), "{r}");
    let q4 = dir.join("q4");
    let again = ["quantize", "--model", s(&saved), "--quant", "q4", "--out", s(&q4), "--quiet"];
    let r = dsocr_run(&dir, &again);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("already a q8 checkpoint"), "{r}");
}

#[test]
fn repeat_guard_flags_and_gundam_tiles() {
    let dir = temp_dir("ocr-guard");
    let page = image("page.png");
    // Case gundam_page_window: 3x2 tiles, the windowed rule with n=3, window 8 and the <td>,
    // </td> whitelist (looked up by string in the tokenizer).
    let r = dsocr_run(
        &dir,
        &[
            "ocr",
            s(&page),
            "--model",
            s(model()),
            "--task",
            "free",
            "--ngram-size",
            "3",
            "--ngram-window",
            "8",
            "--max-new-tokens",
            "24",
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    let p = &json["pages"][0];
    assert_eq!(p["markdown"], golden_text("gundam_page_window").as_str());
    assert_eq!(p["prompt_tokens"], 898, "893 image tokens of a 3x2 grid");
    assert_eq!(p["generated_tokens"], 24);
    assert_eq!(p["finish_reason"], "repetition", "the guard was banning repeats when the limit hit");
    assert!(r.stderr.contains("repetition loop"), "{r}");

    // The default guard (n=30, window 90) in base mode also ends in a loop within 40 tokens;
    // without the guard the same page ends by the length limit.
    let base = [
        "ocr",
        s(&page),
        "--model",
        s(model()),
        "--task",
        "free",
        "--mode",
        "base",
        "--max-new-tokens",
        "40",
        "--format",
        "json",
    ];
    let r = dsocr_run(&dir, &base);
    assert_eq!(r.code, 0, "{r}");
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(json["pages"][0]["finish_reason"], "repetition", "{r}");
    let r = dsocr_run(&dir, &[&base[..], &["--no-repeat-guard"]].concat());
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(json["pages"][0]["finish_reason"], "length", "{r}");
}

#[test]
fn retry_loops_reruns_a_page_in_base_mode() {
    let dir = temp_dir("ocr-retry");
    let r = dsocr_run(
        &dir,
        &[
            "ocr",
            s(&image("page.png")),
            "--model",
            s(model()),
            "--task",
            "free",
            "--mode",
            "tiny",
            "--max-new-tokens",
            "8",
            "--no-repeat-guard",
            "--retry-loops",
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("retrying in base mode"), "{r}");
    // Neither run reaches EOS: the first (tiny) result is kept, both runs' tokens are counted.
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(json["pages"][0]["markdown"], golden_text("tiny_page").as_str());
    assert!(r.stderr.contains("16 tokens"), "{r}");
}

#[test]
fn pdf_pages_go_through_one_after_another() {
    let dir = temp_dir("ocr-pdf");
    let pdf = dir.join("report.pdf");
    std::fs::write(&pdf, make_pdf(&["First page", "Second page", "Third page"], 300, 200)).unwrap();
    let out = dir.join("out");
    let r = dsocr_run(
        &dir,
        &["ocr", s(&pdf), "--model", s(model()), "--mode", "tiny", "--max-new-tokens", "4", "--out", s(&out)],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        tree(&out),
        [
            "report.json",
            "report.mmd",
            "report_det.mmd",
            "report_layouts.pdf",
            "report_page1_boxes.jpg",
            "report_page2_boxes.jpg",
            "report_page3_boxes.jpg"
        ],
        "{r}"
    );
    for f in ["report.mmd", "report_det.mmd"] {
        let text = read(&out.join(f));
        assert_eq!(text.matches(PAGE_SPLIT).count(), 3, "{f}: {text:?}");
        assert!(text.ends_with(PAGE_SPLIT), "{f}: every page is followed by the separator");
    }
    for k in 1..=3 {
        // 300x200 pt at 144 DPI.
        assert_eq!(image_size(&out.join(format!("report_page{k}_boxes.jpg"))), (600, 400));
    }
    assert!(std::fs::read(out.join("report_layouts.pdf")).unwrap().starts_with(b"%PDF-"));

    let json = read_json(&out.join("report.json"));
    assert_eq!(json["kind"], "pdf");
    assert_eq!(json["dpi"], 144.0);
    let pages = json["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 3);
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p["page"], i + 1);
        assert_eq!((p["width"].as_u64(), p["height"].as_u64()), (Some(600), Some(400)));
        assert_eq!(p["generated_tokens"], 4);
        assert_eq!(p["prompt_tokens"], pages[0]["prompt_tokens"]);
        assert!(matches!(p["finish_reason"].as_str(), Some("length" | "repetition")), "{p}");
        assert!(p.get("error").is_none(), "{p}");
    }
    assert!(r.stderr.contains("3/3 pages") && r.stderr.contains("12 tokens"), "{r}");
    assert_no_temp_files(&out);

    // --pages: only pages 2 and 3, numbered as in the document; a page past the end fails the file.
    let some = dir.join("some");
    let args = ["ocr", s(&pdf), "--model", s(model()), "--mode", "tiny", "--max-new-tokens", "2", "--pages", "2-"];
    let r = dsocr_run(&dir, &[&args[..], &["--out", s(&some)]].concat());
    assert_eq!(r.code, 0, "{r}");
    let files = tree(&some);
    assert!(
        files.contains(&"report_page2_boxes.jpg".to_string()) && !files.contains(&"report_page1_boxes.jpg".to_string()),
        "{files:?}"
    );
    let json = read_json(&some.join("report.json"));
    let numbers: Vec<u64> = json["pages"].as_array().unwrap().iter().map(|p| p["page"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 3]);
    assert_eq!(read(&some.join("report.mmd")).matches(PAGE_SPLIT).count(), 2);
    let r = dsocr_run(&dir, &["ocr", s(&pdf), "--model", s(model()), "--pages", "7", "--max-new-tokens", "2"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("report.pdf: page 7 does not exist (the document has 3 pages)"), "{r}");
    let r = dsocr_run(&dir, &["ocr", s(&pdf), "--model", s(model()), "--pages", "3-1"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("the range ends before it starts"), "{r}");

    // --dpi changes the rendering size; stdout JSON for a PDF.
    let r = dsocr_run(
        &dir,
        &[
            "ocr",
            s(&pdf),
            "--model",
            s(model()),
            "--mode",
            "tiny",
            "--max-new-tokens",
            "2",
            "--dpi",
            "72",
            "--format",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(json["dpi"], 72.0);
    assert_eq!(json["pages"].as_array().map(Vec::len), Some(3));
    assert_eq!((json["pages"][0]["width"].as_u64(), json["pages"][0]["height"].as_u64()), (Some(300), Some(200)));
}

#[test]
fn folder_with_broken_files_reports_each_and_goes_on() {
    let dir = temp_dir("ocr-folder");
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::copy(image("small.png"), input.join("a.png")).unwrap();
    // Page 2 of doc.pdf does not render; locked.pdf needs a password.
    std::fs::write(input.join("sub/doc.pdf"), make_pdf_ext(&[Some("One"), None, Some("Three")], 300, 200, false))
        .unwrap();
    std::fs::write(input.join("locked.pdf"), make_pdf_ext(&[Some("Secret")], 300, 200, true)).unwrap();
    std::fs::write(input.join("broken.png"), b"\x89PNG\r\n\x1a\n this is not really a png").unwrap();
    std::fs::write(input.join("bad.pdf"), b"%PDF-1.4\nnothing else").unwrap();
    std::fs::write(input.join("empty.jpg"), b"").unwrap();
    std::fs::write(input.join("notes.txt"), b"not an input").unwrap();
    let out = dir.join("out");
    let r = dsocr_run(
        &dir,
        &["ocr", s(&input), "--model", s(model()), "--mode", "tiny", "--max-new-tokens", "3", "--out", s(&out)],
    );
    assert_eq!(r.code, 2, "some inputs failed: {r}");
    for (file, reason) in [
        ("broken.png", "corrupt"),
        ("bad.pdf", "not a readable PDF"),
        ("empty.jpg", "empty"),
        ("locked.pdf", "encrypted"),
        ("doc.pdf", "page 2"),
    ] {
        let line = r.stderr.lines().find(|l| l.starts_with("error:") && l.contains(file));
        let line = line.unwrap_or_else(|| panic!("no error line for {file}: {r}"));
        assert!(line.contains(reason), "{file}: {line}");
    }
    assert!(!r.stderr.contains("notes.txt"), "other files in folders are ignored: {r}");
    let files = tree(&out);
    for f in
        ["a.mmd", "a_det.mmd", "a.json", "a_boxes.jpg", "doc.mmd", "doc_det.mmd", "doc.json", "doc_page1_boxes.jpg"]
    {
        assert!(files.contains(&f.to_string()), "{f} missing: {files:?}");
    }
    assert!(!files.iter().any(|f| ["broken", "bad", "empty", "locked"].iter().any(|b| f.starts_with(b))), "{files:?}");
    // The page that failed is kept, empty, with its error; the pages around it are there.
    let doc = read_json(&out.join("doc.json"));
    let pages = doc["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 3);
    assert!(pages[1]["error"].as_str().is_some_and(|e| e.contains("page 2")), "{doc}");
    assert_eq!(pages[1]["complete"], false);
    assert!(pages[0].get("error").is_none() && pages[2].get("error").is_none(), "{doc}");
    assert_eq!(pages[2]["generated_tokens"], 3);
    assert_eq!(read(&out.join("doc.mmd")).matches(PAGE_SPLIT).count(), 3);
    assert!(
        files.contains(&"doc_page3_boxes.jpg".to_string()) && !files.contains(&"doc_page2_boxes.jpg".to_string()),
        "{files:?}"
    );
    assert!(
        r.stderr.contains("(4 failed)") && r.stderr.contains("(1 failed)"),
        "summary counts failed files and pages: {r}"
    );
    assert_no_temp_files(&out);
}

#[test]
fn a_failing_rerun_leaves_earlier_outputs_intact() {
    let dir = temp_dir("ocr-intact");
    let img = dir.join("scan.png");
    std::fs::copy(image("small.png"), &img).unwrap();
    let out = dir.join("out");
    let args = ["ocr", s(&img), "--model", s(model()), "--mode", "tiny", "--max-new-tokens", "2", "--out", s(&out)];
    let r = dsocr_run(&dir, &args);
    assert_eq!(r.code, 0, "{r}");
    let before: Vec<(String, Vec<u8>)> =
        tree(&out).into_iter().map(|f| (f.clone(), std::fs::read(out.join(&f)).unwrap())).collect();

    std::fs::write(&img, b"GIF89a truncated").unwrap();
    let r = dsocr_run(&dir, &args);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("scan.png"), "{r}");
    let after: Vec<(String, Vec<u8>)> =
        tree(&out).into_iter().map(|f| (f.clone(), std::fs::read(out.join(&f)).unwrap())).collect();
    assert_eq!(before, after, "the failed input's earlier outputs are untouched");
}

#[test]
fn output_names_stay_inside_out() {
    let dir = temp_dir("ocr-names");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["..png", "a b;c.png", "x.png"] {
        std::fs::copy(image("small.png"), input.join(name)).unwrap();
    }
    // Same stem from two inputs: the second gets a suffix.
    std::fs::copy(image("small.png"), input.join("x.PNG.png")).unwrap();
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::copy(image("small.png"), input.join("sub/x.png")).unwrap();
    let out = dir.join("out");
    // `..png` is hidden inside a folder walk, so it is named explicitly (its stem is `.`).
    let dots = input.join("..png");
    let r = dsocr_run(
        &dir,
        &[
            "ocr",
            s(&input),
            s(&dots),
            "--model",
            s(model()),
            "--mode",
            "tiny",
            "--max-new-tokens",
            "1",
            "--out",
            s(&out),
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{r}");
    let mmd: Vec<String> = tree(&out).into_iter().filter(|f| f.ends_with(".mmd") && !f.ends_with("_det.mmd")).collect();
    assert_eq!(mmd, ["a_b_c.mmd", "input.mmd", "x-2.mmd", "x.PNG.mmd", "x.mmd"]);
    let mut siblings: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    siblings.sort();
    assert_eq!(siblings, ["hf-home", "in", "out"], "nothing written next to --out");
}

#[test]
fn usage_errors_are_explained() {
    let dir = temp_dir("ocr-usage");
    let small = image("small.png");
    let m = model();
    let cases: [(&[&str], i32, &str); 7] = [
        (&["ocr", s(&small), "--model", "/nonexistent/dsocr-model"], 1, "no such folder"),
        (&["ocr", s(&small), "--model", s(&small)], 1, "this is a file"),
        (&["ocr", s(&small), "--model", s(m), "--prompt", "Free OCR."], 1, "`<image>` exactly once"),
        (&["ocr", s(&small), "--model", s(m), "--device", "quantum"], 1, "unknown backend"),
        (&["ocr", s(&small), "--model", s(m), "--max-crops", "12"], 2, "12"),
        (&["ocr", s(&small), "--model", s(m), "--task", "summarize"], 2, "unknown task"),
        (&["ocr", s(&small), "--model", s(m), "--quant", "q3"], 2, "use q8 or q4"),
    ];
    for (args, code, needle) in cases {
        let r = dsocr_run(&dir, args);
        assert_eq!(r.code, code, "{args:?}: {r}");
        assert!(r.stderr.contains(needle), "{args:?}: expected {needle:?} in: {r}");
    }
    // Missing inputs: reported, exit 2, no model needed.
    let r = dsocr_run(&dir, &["ocr", "/nonexistent/a.png", "--model", s(m)]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("/nonexistent/a.png: no such file or folder"), "{r}");
}

#[test]
fn repeat_guard_defaults_are_the_official_image_and_pdf_rules() {
    let dir = temp_dir("ocr-guard-defaults");
    let pdf = dir.join("one.pdf");
    std::fs::write(&pdf, make_pdf(&["Page two: World"], 300, 200)).unwrap();
    let small = image("small.png");
    // (input, mode, the explicit rule the default must equal, the other rule)
    let cases = [(&small, "small", ["30", "90"], ["20", "50"]), (&pdf, "tiny", ["20", "50"], ["30", "90"])];
    for (input, mode, same, other) in cases {
        let markdown = |guard: &[&str]| {
            let args = [
                &[
                    "ocr",
                    s(input),
                    "--model",
                    s(model()),
                    "--mode",
                    mode,
                    "--max-new-tokens",
                    "100",
                    "--format",
                    "json",
                ],
                guard,
            ]
            .concat();
            let r = dsocr_run(&dir, &args);
            assert_eq!(r.code, 0, "{r}");
            let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
            (json["pages"][0]["markdown"].as_str().unwrap().to_string(), json["pages"][0]["finish_reason"].clone())
        };
        let default = markdown(&[]);
        assert_eq!(default, markdown(&["--ngram-size", same[0], "--ngram-window", same[1]]), "{input:?}");
        assert_ne!(
            default,
            markdown(&["--ngram-size", other[0], "--ngram-window", other[1]]),
            "{input:?}: the rules must differ here"
        );
    }
}

#[test]
fn a_file_that_crashes_its_decoder_fails_alone() {
    // A tiled planar TIFF with partial tiles makes the `tiff` decoder panic: before the panic
    // was caught, the process died (exit 101) and the files after it were never processed.
    let dir = temp_dir("ocr-panic");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a_scan.tif"), dsocr_testkit::fixtures::tiled_planar_tiff(40, 40, 16)).unwrap();
    std::fs::copy(image("small.png"), input.join("b_good.png")).unwrap();
    let out = dir.join("out");
    let r = dsocr_run(
        &dir,
        &["ocr", s(&input), "--model", s(model()), "--mode", "tiny", "--max-new-tokens", "2", "--out", s(&out)],
    );
    assert_eq!(r.code, 2, "one input failed, the run went on: {r}");
    let line = r.stderr.lines().find(|l| l.starts_with("error:") && l.contains("a_scan.tif"));
    assert!(line.is_some_and(|l| l.contains("crashed")), "{r}");
    let files = tree(&out);
    assert!(files.contains(&"b_good.mmd".to_string()) && files.contains(&"b_good.json".to_string()), "{files:?}");
    assert!(!files.iter().any(|f| f.starts_with("a_scan")), "{files:?}");
    assert!(r.stderr.contains("done: 2 file(s) (1 failed)"), "{r}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_keeps_whole_pages_and_consistent_files() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = temp_dir("ocr-interrupt");
    let pdf = dir.join("long.pdf");
    let pages: Vec<String> = (1..=12).map(|k| format!("Page {k}")).collect();
    std::fs::write(&pdf, make_pdf(&pages.iter().map(String::as_str).collect::<Vec<_>>(), 300, 200)).unwrap();
    let out = dir.join("out");
    let hf = dir.join("hf-home");
    std::fs::create_dir_all(&hf).unwrap();
    let mut child = dsocr(&hf)
        .args(["ocr", s(&pdf), "--model", s(model()), "--mode", "tiny", "--no-repeat-guard"])
        .args(["--max-new-tokens", "1500", "--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsocr");
    // Interrupt once the first page is checkpointed (its JSON exists), in the middle of a later one.
    let json = out.join("long.json");
    let start = Instant::now();
    while !json.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no page was written in 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "dsocr ended before the interrupt");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: ") && stderr.contains("page(s) done and kept"), "{stderr}");

    // The files describe the same whole pages, nothing temporary is left, the layouts PDF exists.
    assert_no_temp_files(&out);
    let doc = read_json(&json);
    let kept = doc["pages"].as_array().expect("pages").len();
    assert!((1..12).contains(&kept), "{kept} pages kept: {stderr}");
    for f in ["long.mmd", "long_det.mmd"] {
        assert_eq!(read(&out.join(f)).matches(PAGE_SPLIT).count(), kept, "{f}");
    }
    assert!(out.join("long_layouts.pdf").is_file(), "{:?}", tree(&out));
    assert_eq!(tree(&out).iter().filter(|f| f.ends_with("_boxes.jpg")).count(), kept);
}

/// A folder with two images and a PDF (one of its pages does not render).
fn mixed_folder(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(image("small.png"), input.join("a.png")).unwrap();
    std::fs::copy(image("page.png"), input.join("b.png")).unwrap();
    std::fs::write(
        input.join("doc.pdf"),
        make_pdf_ext(&[Some("One"), None, Some("Three"), Some("Four")], 300, 200, false),
    )
    .unwrap();
    input
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir).into_iter().map(|f| (f.clone(), std::fs::read(dir.join(&f)).unwrap())).collect()
}

#[test]
fn batch_runs_a_folder_and_its_pdf_pages_together_with_the_same_outputs() {
    let dir = temp_dir("ocr-batch");
    let input = mixed_folder(&dir);
    let common = ["--model", s(model()), "--mode", "tiny", "--max-new-tokens", "6", "--no-repeat-guard"];
    let run_with = |batch: &str, out: Option<&Path>| {
        let mut args = vec!["ocr", s(&input), "--batch", batch];
        args.extend(common);
        if let Some(out) = out {
            args.extend(["--out", s(out)]);
        }
        dsocr_run(&dir, &args)
    };
    let (one, four) = (dir.join("one"), dir.join("four"));
    let r1 = run_with("1", Some(&one));
    assert_eq!(r1.code, 2, "the PDF's page 2 fails: {r1}");
    let r4 = run_with("4", Some(&four));
    assert_eq!(r4.code, 2, "{r4}");
    assert!(r4.stderr.contains("up to 4 pages at once"), "{r4}");
    assert!(!r1.stderr.contains("pages at once"), "{r1}");
    // Same files, byte for byte: text, JSON, overlays, the layouts PDF.
    assert_eq!(tree(&four), tree(&one));
    for ((name, a), (_, b)) in contents(&one).iter().zip(contents(&four)) {
        assert!(*a == b, "{name} differs between --batch 1 and --batch 4");
    }
    let json = read_json(&four.join("doc.json"));
    assert_eq!(json["finished"], true);
    assert_eq!(json["pages"].as_array().map(Vec::len), Some(4));
    for line in ["ok    ", "error: "] {
        assert!(r4.stderr.contains(line), "{line}: {r4}");
    }
    let ok = r4.stderr.lines().find(|l| l.starts_with("ok ")).expect("an ok line");
    assert!(ok.contains("pages/s") && ok.contains("tokens/s so far"), "{ok}");
    let done = r4.stderr.lines().find(|l| l.starts_with("done: ")).expect("the summary");
    assert!(done.contains("pages/s") && done.contains("tokens/s") && done.contains("(1 failed)"), "{done}");

    // Without --out the documents reach stdout in input order, as one by one.
    let (s1, s4) = (run_with("1", None), run_with("4", None));
    assert_eq!(s4.code, 2, "{s4}");
    assert!(!s1.stdout.is_empty());
    assert_eq!(s4.stdout, s1.stdout);
}

#[test]
fn skip_existing_resumes_only_what_is_not_complete() {
    let dir = temp_dir("ocr-skip");
    let input = mixed_folder(&dir);
    let out = dir.join("out");
    let args = [
        "ocr",
        s(&input),
        "--model",
        s(model()),
        "--mode",
        "tiny",
        "--max-new-tokens",
        "4",
        "--batch",
        "3",
        "--out",
        s(&out),
    ];
    let r = dsocr_run(&dir, &args);
    assert_eq!(r.code, 2, "{r}");
    let before = contents(&out);

    // Everything complete (the PDF with its failed page too): nothing runs, nothing changes.
    let again = [&args[..], &["--skip-existing"]].concat();
    let r = dsocr_run(&dir, &again);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stderr.lines().filter(|l| l.starts_with("skip ")).count(), 3, "{r}");
    assert!(!r.stderr.contains("loading"), "no model is loaded when nothing is left: {r}");
    assert_eq!(contents(&out), before);

    // A document whose JSON is a checkpoint (as after an interrupt) runs again, alone; so does
    // one whose outputs came from another input of the same name.
    let doc_json = out.join("doc.json");
    let mut doc = read_json(&doc_json);
    doc["finished"] = serde_json::Value::Bool(false);
    std::fs::write(&doc_json, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let a_json = out.join("a.json");
    let mut a = read_json(&a_json);
    a["source"] = serde_json::Value::String("elsewhere/a.png".into());
    std::fs::write(&a_json, serde_json::to_vec_pretty(&a).unwrap()).unwrap();
    let r = dsocr_run(&dir, &again);
    assert_eq!(r.code, 2, "the PDF's page 2 still fails: {r}");
    let skipped: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("skip ")).collect();
    assert_eq!(skipped.len(), 1, "{r}");
    assert!(skipped[0].contains("b.png"), "{r}");
    assert!(r.stderr.contains("(1 skipped, complete)"), "{r}");
    assert_eq!(contents(&out), before, "the re-run gives the same files back");

    let r = dsocr_run(&dir, &["ocr", s(&input), "--model", s(model()), "--skip-existing"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--out"), "{r}");
}

#[test]
fn ctrl_c_in_a_batch_keeps_whole_pages_and_the_rerun_completes_them() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = temp_dir("ocr-batch-interrupt");
    let pdf = dir.join("long.pdf");
    let pages: Vec<String> = (1..=10).map(|k| format!("Page {k}")).collect();
    std::fs::write(&pdf, make_pdf(&pages.iter().map(String::as_str).collect::<Vec<_>>(), 300, 200)).unwrap();
    let out = dir.join("out");
    let hf = dir.join("hf-home");
    std::fs::create_dir_all(&hf).unwrap();
    let args = ["ocr", s(&pdf), "--model", s(model()), "--mode", "tiny", "--no-repeat-guard", "--batch", "3"];
    let mut child = dsocr(&hf)
        .args(args)
        .args(["--max-new-tokens", "1200", "--out", s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsocr");
    let json = out.join("long.json");
    let start = Instant::now();
    while !json.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no page was written in 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "dsocr ended before the interrupt");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("page(s) done and kept"), "{stderr}");
    assert_no_temp_files(&out);
    let doc = read_json(&json);
    assert_eq!(doc["finished"], false, "an interrupted document is not complete");
    let kept = doc["pages"].as_array().expect("pages").len();
    assert!((1..10).contains(&kept), "{kept} pages kept: {stderr}");
    for f in ["long.mmd", "long_det.mmd"] {
        assert_eq!(read(&out.join(f)).matches(PAGE_SPLIT).count(), kept, "{f}");
    }

    // --skip-existing runs it again (its JSON is a checkpoint) and completes it.
    let r = dsocr_run(&dir, &[&args[..], &["--max-new-tokens", "3", "--out", s(&out), "--skip-existing"]].concat());
    assert_eq!(r.code, 0, "{r}");
    let doc = read_json(&json);
    assert_eq!(doc["finished"], true);
    assert_eq!(doc["pages"].as_array().map(Vec::len), Some(10));
}
