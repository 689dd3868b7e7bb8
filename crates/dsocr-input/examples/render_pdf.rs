//! `cargo run -p dsocr-render --example render_pdf -- IN.pdf OUT_DIR [DPI]`: renders every page
//! to `OUT_DIR/page<N>.png` (manual check of the PDF rasteriser).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let input = args.next().ok_or("usage: render_pdf IN.pdf OUT_DIR [DPI]")?;
    let out = std::path::PathBuf::from(args.next().ok_or("usage: render_pdf IN.pdf OUT_DIR [DPI]")?);
    let dpi: f32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(dsocr_input::pdf::DEFAULT_DPI);
    std::fs::create_dir_all(&out)?;
    let doc = dsocr_input::pdf::PdfDocument::open(&input)?;
    for (i, page) in doc.pages(dpi).enumerate() {
        let t = std::time::Instant::now();
        match page {
            Ok(p) => {
                p.image.save(out.join(format!("page{}.png", i + 1)))?;
                println!("page {}: {}x{} {:?} {:?}", i + 1, p.image.width(), p.image.height(), t.elapsed(), p.warnings);
            }
            Err(e) => println!("{e}"),
        }
    }
    Ok(())
}
