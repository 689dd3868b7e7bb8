//! A tiny hand-written PDF builder for the tests (uncompressed objects, exact xref offsets).
#![allow(dead_code)]

pub struct PdfBuilder {
    /// Object bodies; object number = index + 1. `None` = reserved, filled later.
    objects: Vec<Option<Vec<u8>>>,
    trailer_extra: String,
}

pub struct PageSpec {
    /// Extra page dictionary entries, e.g. `/MediaBox [0 0 612 792] /Rotate 90`.
    pub dict: String,
    /// Content stream (uncompressed) or `None` for no /Contents.
    pub content: Option<Vec<u8>>,
    /// Raw stream dictionary entries for the content stream (e.g. a bogus `/Filter`).
    pub content_dict: String,
    /// Resources dictionary text (may reference objects added before).
    pub resources: String,
}

impl PageSpec {
    pub fn new(media_box: &str, content: &str) -> Self {
        Self {
            dict: format!("/MediaBox [{media_box}]"),
            content: Some(content.as_bytes().to_vec()),
            content_dict: String::new(),
            resources: String::new(),
        }
    }
}

impl PdfBuilder {
    pub fn new() -> Self {
        Self { objects: Vec::new(), trailer_extra: String::new() }
    }

    pub fn reserve(&mut self) -> usize {
        self.objects.push(None);
        self.objects.len()
    }

    pub fn set(&mut self, id: usize, body: Vec<u8>) {
        self.objects[id - 1] = Some(body);
    }

    pub fn add(&mut self, body: Vec<u8>) -> usize {
        self.objects.push(Some(body));
        self.objects.len()
    }

    pub fn add_stream(&mut self, dict: &str, data: &[u8]) -> usize {
        let mut body = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\nendstream");
        self.add(body)
    }

    /// An uncompressed RGB image XObject.
    pub fn add_rgb_image(&mut self, width: u32, height: u32, rgb: &[u8]) -> usize {
        self.add_stream(
            &format!("/Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceRGB /BitsPerComponent 8"),
            rgb,
        )
    }

    pub fn trailer_extra(&mut self, s: &str) {
        self.trailer_extra = s.to_string();
    }

    /// Adds pages, the page tree and the catalog, and serialises. The page tree and the
    /// catalog are written at the END of the file (as many writers do).
    pub fn finish(mut self, pages: Vec<PageSpec>) -> Vec<u8> {
        let pages_id = self.reserve();
        let mut page_ids = Vec::new();
        for p in &pages {
            let content = p.content.as_ref().map(|c| self.add_stream(&p.content_dict, c));
            let contents = content.map(|c| format!("/Contents {c} 0 R")).unwrap_or_default();
            let id = self.add(
                format!(
                    "<< /Type /Page /Parent {pages_id} 0 R {} /Resources << {} >> {contents} >>",
                    p.dict, p.resources
                )
                .into_bytes(),
            );
            page_ids.push(id);
        }
        let kids: Vec<String> = page_ids.iter().map(|i| format!("{i} 0 R")).collect();
        self.set(
            pages_id,
            format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), page_ids.len()).into_bytes(),
        );
        let catalog = self.add(format!("<< /Type /Catalog /Pages {pages_id} 0 R >>").into_bytes());
        let tail = [pages_id, catalog];
        let order: Vec<usize> =
            (1..=self.objects.len()).filter(|i| !tail.contains(i)).chain(tail.iter().copied()).collect();

        let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
        let mut offsets = vec![0; self.objects.len()];
        for id in order {
            offsets[id - 1] = out.len();
            out.extend_from_slice(format!("{id} 0 obj\n").as_bytes());
            out.extend_from_slice(self.objects[id - 1].as_deref().unwrap_or(b"null"));
            out.extend_from_slice(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1).as_bytes());
        for off in offsets {
            out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root {catalog} 0 R {} >>\nstartxref\n{xref}\n%%EOF\n",
                self.objects.len() + 1,
                self.trailer_extra
            )
            .as_bytes(),
        );
        out
    }
}
