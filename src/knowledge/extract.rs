//! Text out of a company's documents: `.txt`, `.md`/`.markdown`, `.html`/`.htm` (rendered to
//! text with its headings kept as `#` lines, `html2text`) and `.pdf` (`pdf-extract`, pure
//! Rust). A document that cannot be read gives an error for the job's report, never a panic:
//! the PDF parser runs under `catch_unwind` because malformed files can make it panic.

/// A document's text and title.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub title: String,
    /// Plain text; Markdown-style `#` heading lines mark sections.
    pub text: String,
}

/// File types the pipeline reads, by extension.
pub const SUPPORTED: &[&str] = &["txt", "md", "markdown", "html", "htm", "pdf"];

/// The lower-cased extension of a path.
pub fn extension(path: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// The file name without its extension, for a title of last resort.
fn file_stem(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.')
        .map_or(name, |(stem, _)| stem)
        .replace(['_', '-'], " ")
}

/// Extracts a document's text; `Err` says why it cannot be indexed.
pub fn extract(path: &str, bytes: &[u8]) -> Result<Extracted, String> {
    let ext = extension(path).unwrap_or_default();
    let (title, text) = match ext.as_str() {
        "txt" => (None, decode_text(bytes)?),
        "md" | "markdown" => {
            let text = decode_text(bytes)?;
            (markdown_title(&text), text)
        }
        "html" | "htm" => html(bytes)?,
        "pdf" => (None, pdf(bytes)?),
        "" => {
            return Err(format!(
                "no file extension; supported types: .{}",
                SUPPORTED.join(", .")
            ));
        }
        other => {
            return Err(format!(
                "unsupported file type '.{other}'; supported types: .{}",
                SUPPORTED.join(", .")
            ));
        }
    };
    let text = normalise(&text);
    if text.trim().is_empty() {
        return Err("no text found in the document".into());
    }
    Ok(Extracted {
        title: title
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| file_stem(path)),
        text,
    })
}

/// UTF-8 (with or without a BOM), or UTF-16 with a BOM; binary content is refused.
fn decode_text(bytes: &[u8]) -> Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return decode_text(rest);
    }
    if bytes.len() >= 2 && (bytes[..2] == [0xFF, 0xFE] || bytes[..2] == [0xFE, 0xFF]) {
        let little = bytes[0] == 0xFF;
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| {
                if little {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        return String::from_utf16(&units).map_err(|_| "invalid UTF-16 text".to_owned());
    }
    if bytes.contains(&0) {
        return Err("the file is binary, not text".into());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        // Latin-1 is the usual culprit for legacy text files; every byte maps to a char.
        Err(_) => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// The first `# ` heading of a Markdown document.
fn markdown_title(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("# "))
        .map(|t| t.trim().to_owned())
}

fn html(bytes: &[u8]) -> Result<(Option<String>, String), String> {
    let raw = decode_text(bytes)?;
    let title = html_title(&raw);
    let text = html2text::config::plain_no_decorate()
        .string_from_read(raw.as_bytes(), 10_000)
        .map_err(|e| format!("the HTML could not be read: {e}"))?;
    Ok((title, text))
}

/// `<title>…</title>`, entities for the common cases decoded.
fn html_title(raw: &str) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let title = raw[open_end..close]
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

fn pdf(bytes: &[u8]) -> Result<String, String> {
    if !bytes.starts_with(b"%PDF") {
        return Err("not a PDF file (no %PDF header)".into());
    }
    let owned = bytes.to_vec();
    match std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem(&owned)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(format!("the PDF could not be read: {e}")),
        Err(_) => Err("the PDF could not be read (malformed file)".into()),
    }
}

/// Line endings unified, control characters dropped, runs of blank lines collapsed.
fn normalise(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines() {
        let line: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
            out.push('\n');
        } else {
            blank_run = 0;
            out.push_str(line);
            out.push('\n');
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_keeps_headings_and_takes_its_title() {
        let e = extract(
            "docs/leave.md",
            b"# Leave policy\n\nYou get 25 days.\r\n\r\n\r\n## Sick leave\nCall in.",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.title, "Leave policy");
        assert_eq!(
            e.text,
            "# Leave policy\n\nYou get 25 days.\n\n## Sick leave\nCall in."
        );
    }

    #[test]
    fn text_titles_come_from_the_file_name() {
        let e = extract("opening_hours.TXT", "\u{feff}Open 9-5.".as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.title.as_str(), e.text.as_str()),
            ("opening hours", "Open 9-5.")
        );
        let latin1 = extract("a.txt", b"caf\xe9").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(latin1.text, "café");
    }

    #[test]
    fn html_is_rendered_to_text_with_its_title() {
        let page = b"<html><head><title>Parking &amp; access</title><style>p{}</style></head>
            <body><h1>Parking</h1><p>Parking is <b>free</b> on weekends.</p><script>var x=1;</script></body></html>";
        let e = extract("site/parking.html", page).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.title, "Parking & access");
        assert!(
            e.text.contains("Parking is free on weekends."),
            "{}",
            e.text
        );
        assert!(!e.text.contains("var x"), "{}", e.text);
    }

    #[test]
    fn unreadable_documents_say_why() {
        assert!(
            extract("a.docx", b"PK..")
                .unwrap_err()
                .contains("unsupported file type '.docx'")
        );
        assert!(
            extract("README", b"x")
                .unwrap_err()
                .contains("no file extension")
        );
        assert!(extract("a.txt", b"ab\0cd").unwrap_err().contains("binary"));
        assert!(
            extract("a.pdf", b"hello")
                .unwrap_err()
                .contains("not a PDF")
        );
        assert!(
            extract("a.pdf", b"%PDF-1.4 garbage")
                .unwrap_err()
                .contains("PDF could not be read")
        );
        assert!(extract("a.md", b"  \n\n ").unwrap_err().contains("no text"));
    }
}
