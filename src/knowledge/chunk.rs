//! Chunking: a document's text cut into passages of at most [`MAX_CHARS`] characters along
//! its structure — sections at `#` headings, then paragraphs, then sentences, then words —
//! with the tail of the previous passage of the same section repeated at the start of the
//! next ([`OVERLAP_CHARS`]) so that an answer spanning a cut is still found. Each passage is
//! titled with the document title and its section heading.

/// Longest passage, in characters.
pub const MAX_CHARS: usize = 1_200;
/// Characters of the previous passage repeated at the start of the next.
pub const OVERLAP_CHARS: usize = 200;

/// One passage before it gets an id and a vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub title: String,
    pub text: String,
}

/// Cuts `text` into passages.
pub fn chunk(title: &str, text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for (heading, body) in sections(text) {
        let section_title = match heading {
            Some(h) if h != title => format!("{title} › {h}"),
            _ => title.to_owned(),
        };
        let mut current = String::new();
        for unit in units(&body) {
            if !current.is_empty() && chars(&current) + 2 + chars(&unit) > MAX_CHARS {
                let tail = overlap(&current);
                pieces.push(Piece {
                    title: section_title.clone(),
                    text: std::mem::take(&mut current),
                });
                current = tail;
            }
            if !current.is_empty() {
                current.push_str(if unit.starts_with('\n') { "\n" } else { "\n\n" });
            }
            current.push_str(unit.trim_start_matches('\n'));
        }
        if !current.trim().is_empty() {
            pieces.push(Piece {
                title: section_title,
                text: current,
            });
        }
    }
    pieces
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// (heading, body) pairs; the heading line stays at the top of its body so that keyword
/// search finds it.
fn sections(text: &str) -> Vec<(Option<String>, String)> {
    let mut out: Vec<(Option<String>, String)> = Vec::new();
    let mut heading: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let level = trimmed.bytes().take_while(|&b| b == b'#').count();
        let is_heading = (1..=6).contains(&level) && trimmed[level..].starts_with(' ');
        if is_heading {
            if !body.trim().is_empty() {
                out.push((heading.take(), std::mem::take(&mut body)));
            }
            body.clear();
            heading = Some(trimmed[level..].trim().to_owned());
        }
        body.push_str(line);
        body.push('\n');
    }
    if !body.trim().is_empty() {
        out.push((heading, body));
    }
    out
}

/// Paragraphs no longer than `MAX_CHARS - OVERLAP_CHARS - 2`; longer ones are cut at sentence
/// ends, and sentences longer than that at spaces (or anywhere, as a last resort).
fn units(body: &str) -> Vec<String> {
    // Room for the overlap and its separator: a unit always fits after a carried-over tail.
    let limit = MAX_CHARS - OVERLAP_CHARS - 2;
    let mut out = Vec::new();
    for paragraph in body.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if chars(paragraph) <= limit {
            out.push(paragraph.to_owned());
            continue;
        }
        let mut current = String::new();
        for sentence in sentences(paragraph) {
            for piece in hard_split(sentence, limit) {
                if !current.is_empty() && chars(&current) + 1 + chars(&piece) > limit {
                    out.push(std::mem::take(&mut current));
                }
                if !current.is_empty() {
                    current.push(' ');
                }
                current.push_str(&piece);
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// Sentences: cut after `.`, `!`, `?` followed by whitespace.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if matches!(c, '.' | '!' | '?') && iter.peek().is_some_and(|(_, next)| next.is_whitespace())
        {
            let end = i + c.len_utf8();
            out.push(text[start..end].trim());
            start = end;
        }
    }
    if start < text.len() && !text[start..].trim().is_empty() {
        out.push(text[start..].trim());
    }
    out
}

/// A sentence cut into pieces of at most `limit` characters, at spaces where possible.
fn hard_split(sentence: &str, limit: usize) -> Vec<String> {
    if chars(sentence) <= limit {
        return vec![sentence.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for word in sentence.split_whitespace() {
        let mut word = word;
        // A "word" longer than the limit (a URL, a table row without spaces) is cut anywhere.
        while chars(word) > limit {
            let cut = word
                .char_indices()
                .nth(limit)
                .map_or(word.len(), |(i, _)| i);
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            out.push(word[..cut].to_owned());
            word = &word[cut..];
        }
        if !current.is_empty() && chars(&current) + 1 + chars(word) > limit {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The last ~`OVERLAP_CHARS` characters of a passage, starting at a word boundary.
fn overlap(text: &str) -> String {
    let total = chars(text);
    if total <= OVERLAP_CHARS {
        return text.to_owned();
    }
    let start = text
        .char_indices()
        .nth(total - OVERLAP_CHARS)
        .map_or(0, |(i, _)| i);
    let tail = &text[start..];
    match tail.find(char::is_whitespace) {
        Some(space) if space < tail.len() / 2 => tail[space..].trim_start().to_owned(),
        _ => tail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_documents_are_one_passage_per_section() {
        let pieces = chunk(
            "Handbook",
            "Intro line.\n\n# Leave\nYou get 25 days.\n\n## Sick leave\nCall your manager.",
        );
        let shape: Vec<(&str, &str)> = pieces
            .iter()
            .map(|p| (p.title.as_str(), p.text.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                ("Handbook", "Intro line."),
                ("Handbook › Leave", "# Leave\nYou get 25 days."),
                ("Handbook › Sick leave", "## Sick leave\nCall your manager."),
            ]
        );
    }

    #[test]
    fn long_sections_are_cut_with_overlap_and_nothing_is_lost() {
        let paragraphs: Vec<String> = (0..40)
            .map(|i| format!("Paragraph {i} says something useful about topic {i}. It has a second sentence too."))
            .collect();
        let text = paragraphs.join("\n\n");
        let pieces = chunk("Doc", &text);
        assert!(pieces.len() > 2, "{}", pieces.len());
        for p in &pieces {
            assert!(chars(&p.text) <= MAX_CHARS, "{}", chars(&p.text));
        }
        for para in &paragraphs {
            assert!(
                pieces.iter().any(|p| p.text.contains(para.as_str())),
                "lost: {para}"
            );
        }
        // Each passage after the first starts with the end of the one before.
        for pair in pieces.windows(2) {
            let head: String = pair[1].text.chars().take(40).collect();
            assert!(pair[0].text.contains(&head), "no overlap: {head:?}");
        }
    }

    #[test]
    fn giant_paragraphs_and_words_are_split() {
        let sentence = "word ".repeat(400);
        let pieces = chunk("Doc", &format!("{sentence}\n\n{}", "x".repeat(5_000)));
        assert!(pieces.iter().all(|p| chars(&p.text) <= MAX_CHARS));
        let xs: usize = pieces
            .iter()
            .map(|p| p.text.chars().filter(|&c| c == 'x').count())
            .sum();
        assert!(xs >= 5_000, "every character kept ({xs})");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let text = "ñandú ".repeat(1_000);
        let pieces = chunk("Doc", &text);
        assert!(pieces.len() > 3);
        assert!(pieces.iter().all(|p| chars(&p.text) <= MAX_CHARS));
    }

    #[test]
    fn headings_need_a_space_and_empty_input_gives_nothing() {
        assert!(chunk("Doc", "").is_empty());
        let pieces = chunk("Doc", "#hashtag is not a heading\nstill intro");
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].title, "Doc");
    }
}
