//! An incremental Server-Sent Events parser (the subset OpenAI and Azure OpenAI use):
//! `data:` lines joined per event, events ended by a blank line, `:` comments (keep-alives)
//! ignored, CRLF or LF line ends, and events split anywhere across network reads.

/// One parsed event: its `event:` name (if any) and its `data` (lines joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Feed bytes as they arrive; take complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

/// Upper bound of one buffered line, so a peer cannot make us buffer without limit.
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an SSE line exceeded {MAX_LINE} bytes")]
    LineTooLong,
    #[error("an SSE line is not UTF-8")]
    NotUtf8,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = std::str::from_utf8(line)
                .map_err(|_| SseError::NotUtf8)?
                .to_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        Ok(events)
    }

    /// Ends the stream: a final event without its blank line still counts.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let line = std::str::from_utf8(&rest).map_err(|_| SseError::NotUtf8)?;
            let line = line.trim_end_matches('\r').to_owned();
            if let Some(event) = self.line(&line) {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(parser: &mut SseParser, input: &[u8], chunk: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            out.extend(parser.push(piece).unwrap());
        }
        out.extend(parser.finish().unwrap());
        out
    }

    #[test]
    fn splits_anywhere_give_the_same_events() {
        let input = b": keep-alive\n\ndata: {\"a\":1}\n\ndata: line1\ndata: line2\r\n\r\nevent: done\ndata: x\n\ndata: [DONE]\n\n";
        let expected = all(&mut SseParser::new(), input, input.len());
        assert_eq!(
            expected,
            vec![
                SseEvent {
                    event: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "line1\nline2".into()
                },
                SseEvent {
                    event: Some("done".into()),
                    data: "x".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        for chunk in 1..input.len() {
            assert_eq!(
                all(&mut SseParser::new(), input, chunk),
                expected,
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn a_last_event_without_a_blank_line_is_kept() {
        assert_eq!(
            all(&mut SseParser::new(), b"data: tail", 3),
            vec![SseEvent {
                event: None,
                data: "tail".into()
            }]
        );
    }

    #[test]
    fn multibyte_characters_split_across_reads() {
        let input = "data: {\"c\":\"día ☕\"}\n\n".as_bytes();
        for chunk in 1..input.len() {
            let events = all(&mut SseParser::new(), input, chunk);
            assert_eq!(events[0].data, "{\"c\":\"día ☕\"}");
        }
    }

    #[test]
    fn oversize_lines_are_refused() {
        let mut p = SseParser::new();
        let big = vec![b'a'; MAX_LINE + 1];
        assert_eq!(p.push(&big), Err(SseError::LineTooLong));
    }
}
