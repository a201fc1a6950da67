//! Server-sent events decoded without I/O: bytes in, each event's data out. The node streams
//! chat replies and history changes this way.

/// The longest line kept while waiting for its end; a stream that sends more is broken.
const MAX_LINE: usize = 4 << 20;

/// Decodes `text/event-stream` bytes as they arrive.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Vec<String>,
}

/// A line longer than [`MAX_LINE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong;

impl SseDecoder {
    /// Feeds `bytes`; returns the data of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, LineTooLong> {
        let mut events = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() >= MAX_LINE {
                    return Err(LineTooLong);
                }
                self.line.push(b);
                continue;
            }
            let raw = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&raw);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                self.data
                    .push(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
            }
            // Comments (keep-alives) and other fields carry nothing the client uses.
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream =
            b": keep-alive\n\ndata: {\"a\":1}\n\ndata: one\r\ndata: two\r\n\r\ndata:[DONE]\n\n";
        for cut in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..cut]).unwrap();
            got.extend(d.push(&stream[cut..]).unwrap());
            assert_eq!(got, ["{\"a\":1}", "one\ntwo", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn an_unfinished_event_waits_and_a_huge_line_is_refused() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: half").unwrap().is_empty());
        assert_eq!(d.push(b"\n\n").unwrap(), ["half"]);
        let huge = vec![b'x'; MAX_LINE + 1];
        assert_eq!(d.push(&huge), Err(LineTooLong));
    }
}
